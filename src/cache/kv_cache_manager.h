// The scheduler's one entry point to KV memory: page allocator + radix prefix cache + request slot
// table, combined into request-level operations that keep the ownership rules in one place.
//
// PAGE OWNERSHIP (exactly one owner per page, which makes KvAccounting exact)
//   free        : in the PageAllocator.
//   cached      : in the RadixCache (locked or not). A request's matched prefix stays tree-owned;
//                 the request only borrows it, protected by a lock on the prefix's last node.
//   in_requests : pages a running request owns alone: its page-table entries after the borrowed
//                 prefix, i.e. page_table(slot)[cached_pages(slot)..].
// Each operation below moves pages between these owners and nothing else touches them, so
// free + in_requests + cached == total after every call (check() verifies it in O(1), audit()
// proves it page by page in O(num_pages)).
//
// A request's life (SGLang's flow):
//   auto a = kv.admit(tokens);              // slot + locked cached prefix (a->cached_tokens)
//   kv.extend(a->slot, n)                   // pages for the next n tokens (prefill chunk / decode)
//   model forward with SequenceInput{new tokens, prefix_len, page_table(slot)}
//   kv.cache_prefix(slot, computed_tokens)  // optional, after a (chunked) prefill: share it now
//   kv.finish(slot, tokens_with_kv, true)   // done: full pages into the tree, rest freed
//   kv.retract(slot)                        // or: out of memory / abort -> free all, recompute later
// If extend() returns nullopt right after admit(), call retract(): it unlocks the prefix and frees
// nothing else, and the request can wait in the queue.
//
// Errors: shortage of slots/pages is a value (std::nullopt); a call that breaks a documented
// precondition (unknown slot, more tokens than the slot can hold, tokens longer than the KV that
// was reserved) is a scheduler bug and throws std::logic_error. flush() returns a Status.
//
// Not thread safe: one manager per scheduler thread (attention-DP rank).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "cache/page_allocator.h"
#include "cache/radix_cache.h"
#include "cache/request_slot_table.h"
#include "model/kv_pool.h"

namespace pdserve::cache {

struct KvCacheConfig {
  int32_t num_pages = 0;              // pages of the LatentKvPool (ids [0, num_pages))
  int32_t page_size = 1;              // tokens per page (must equal the pool's)
  int32_t max_requests = 0;           // request slots (max running requests of this rank)
  int32_t max_pages_per_request = 0;  // row length: ceil(context_len / page_size)
  bool enable_radix_cache = true;     // false: --disable-radix-cache / PD decode side
  int32_t num_reserved_pages = 0;     // never handed out (see PageAllocator)
};

// A config over `pool`'s page ids and page size (so the two can never disagree), with one slot row
// long enough for context_len tokens.
KvCacheConfig make_kv_cache_config(const model::LatentKvPool& pool, int32_t max_requests, int64_t context_len,
                                   bool enable_radix_cache);

// Page counts. Invariant: free + in_requests + cached == total.
struct KvAccounting {
  int64_t total = 0;        // pages managed (excludes reserved pages)
  int64_t free = 0;         // in the allocator
  int64_t in_requests = 0;  // owned exclusively by running requests (not in the tree)
  int64_t cached = 0;       // in the radix tree, locked or not
  int64_t evictable = 0;    // the unlocked part of `cached` (informational; <= cached)
};
// kInternal error naming the numbers when the invariant (or a sign/range) does not hold.
Status check_accounting(const KvAccounting& a);
std::string to_string(const KvAccounting& a);  // "total=.. free=.. in_requests=.. cached=.. evictable=.."

struct Admission {
  int32_t slot = -1;
  int64_t cached_tokens = 0;  // prefix reused from the tree (multiple of page_size); KV is there
  int64_t prefix_pages = 0;   // = cached_tokens / page_size, the first entries of page_table(slot)
};

class KvCacheManager {
 public:
  // Throws std::invalid_argument for non-positive sizes or a reserved count >= num_pages.
  explicit KvCacheManager(const KvCacheConfig& cfg);
  KvCacheManager(const KvCacheManager&) = delete;
  KvCacheManager& operator=(const KvCacheManager&) = delete;

  const KvCacheConfig& config() const { return cfg_; }
  int32_t page_size() const { return cfg_.page_size; }
  int64_t max_tokens_per_request() const {
    return static_cast<int64_t>(cfg_.max_pages_per_request) * cfg_.page_size;
  }

  // Takes a slot and reuses the longest cached prefix of `tokens`, which is locked until
  // finish()/retract(). At least the last token is never matched, so the forward always has a new
  // token to produce logits from. `max_cached_tokens` caps the reuse further (e.g. a request that
  // wants input logprobs from some position on must recompute from there). nullopt: no free slot
  // (nothing changed). Preconditions (logic_error): 1 <= tokens.size() <= max_tokens_per_request().
  std::optional<Admission> admit(std::span<const int32_t> tokens,
                                 int64_t max_cached_tokens = std::numeric_limits<int64_t>::max());

  // Reserves KV for `num_new_tokens` more tokens of the slot's sequence. Allocates the missing pages,
  // evicting unlocked cached pages first when the free list is short. Returns the pages added to
  // page_table(slot) (maybe none when the last page has room; the span is valid until the next call
  // on this manager), or nullopt if even free + evictable is too small: then nothing was evicted or
  // allocated. Precondition (logic_error): num_tokens(slot) + num_new_tokens <= max_tokens_per_request().
  std::optional<std::span<const int32_t>> extend(int32_t slot, int64_t num_new_tokens);

  // SGLang's cache_unfinished_req: after KV for `tokens` (the first tokens.size() tokens of the
  // sequence) is written, puts its full pages into the tree so concurrent requests can share them,
  // and moves this request's lock to the new, longer prefix. Where another request cached the same
  // prefix first, this slot's page is freed and page_table(slot) switches to the tree's page (same
  // tokens, same KV). Returns the new cached_tokens(slot). Precondition: tokens.size() <= num_tokens(slot).
  int64_t cache_prefix(int32_t slot, std::span<const int32_t> tokens);

  // Ends a request. `tokens` = the tokens whose KV was written (usually input + output minus the
  // last sampled token); precondition tokens.size() <= num_tokens(slot). With cache_it (and the
  // radix cache enabled) their full pages go into the tree; every other page the request owns is
  // freed; the prefix lock is dropped; the slot is released.
  void finish(int32_t slot, std::span<const int32_t> tokens, bool cache_it = true);

  // Drops a request without caching anything: frees its own pages, unlocks its prefix, releases
  // the slot. Returns the number of pages freed. Its KV must be recomputed when it is re-admitted.
  int64_t retract(int32_t slot);

  // Frees every cached page. Error (nothing freed) while a running request holds a cached prefix.
  Status flush();

  // How many tokens of `tokens` admit() would reuse now (for admission policies); refreshes LRU.
  int64_t prefix_tokens(std::span<const int32_t> tokens);
  // Pages extend(slot, n) would need from free + evictable.
  int64_t pages_needed(int32_t slot, int64_t num_new_tokens) const;

  KvAccounting accounting() const;
  Status check() const { return check_accounting(accounting()); }  // O(1): after every step
  // O(num_pages + tree): every page has exactly one owner, tree pages borrowed by requests are
  // locked, radix invariants hold. For tests and a debug flag.
  Status audit() const;

  int64_t available_pages() const { return allocator_.free_count() + radix_.evictable_pages(); }
  int64_t free_pages() const { return allocator_.free_count(); }
  int32_t free_slots() const { return slots_.free_slots(); }
  int32_t running_requests() const { return slots_.used_slots(); }

  std::span<const int32_t> page_table(int32_t slot) const;  // covers num_tokens(slot) tokens
  int64_t num_tokens(int32_t slot) const;     // tokens with KV reserved
  int64_t cached_tokens(int32_t slot) const;  // prefix borrowed from the tree
  int64_t cached_pages(int32_t slot) const;

  const RequestSlotTable& slot_table() const { return slots_; }  // for the device mirror
  const RadixCache& radix() const { return radix_; }
  const PageAllocator& allocator() const { return allocator_; }

 private:
  struct SlotState {
    int64_t num_tokens = 0;    // KV reserved for this many tokens
    int64_t prefix_pages = 0;  // page_table[0, prefix_pages) is borrowed from the tree
    NodeHandle lock;           // end of the borrowed prefix (root when none)
  };
  SlotState& state(int32_t slot, const char* what);
  const SlotState& state(int32_t slot, const char* what) const;
  void free_own_pages(int32_t slot, int64_t from_index);
  void release_slot(int32_t slot);

  KvCacheConfig cfg_;
  PageAllocator allocator_;  // declared before radix_: the tree holds a reference to it
  RadixCache radix_;
  RequestSlotTable slots_;
  std::vector<SlotState> states_;
  int64_t in_request_pages_ = 0;
};

}  // namespace pdserve::cache
