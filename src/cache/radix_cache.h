// Radix prefix cache over token ids at PAGE granularity (SGLang's RadixCache with page_size > 1).
//
// Keys are token-id sequences, values are KV page ids. Only full pages are ever cached: a node's
// key holds k * page_size tokens and k page ids, children of a node are told apart by their first
// page (all page_size tokens), and nodes are split only at page boundaries. The partial last page
// of a sequence is never cached because its KV slots would be overwritten by whoever extends it.
//
// OWNERSHIP (who frees what)
//   * Every page in the tree is owned by the tree. Only evict() and reset() free tree pages.
//   * match_prefix() returns tree-owned pages. The caller may read them (put them in a page table)
//     but never frees them; it must inc_lock() the returned node before anything can evict, and
//     dec_lock() when it stops using them.
//   * insert(tokens, pages) looks at the first floor(tokens.size() / page_size) = F pages only.
//     For each position i < F:
//       - the key is new in the tree         -> pages[i] becomes tree-owned (caller must forget it);
//       - the key is cached with pages[i]    -> nothing happens (the caller had borrowed it);
//       - the key is cached with another id  -> pages[i] is a duplicate: returned in
//                                               InsertResult::duplicates, STILL OWNED BY THE CALLER,
//                                               who must free it (or keep it until it stops reading it).
//     pages[F..] are never looked at and stay the caller's.
//   * Disabled cache: match_prefix() matches nothing and insert() keeps nothing: all F pages come
//     back as duplicates. So the caller's rule is the same in both modes ("free the duplicates and
//     the tail") and no mode-dependent branch can double free. KvCacheManager::finish() then frees
//     every page of the request, which is what "insert frees all pages given" means here.
//
// LRU: every match_prefix()/insert() stamps the nodes on its path with a logical clock (not wall
// time: eviction order is deterministic and testable). evict() takes the unlocked leaf with the
// oldest stamp and frees pages from its END (the tail is the least shareable part), removing the
// leaf when empty; its parent may then become an evictable leaf (cascade). So evict(n) frees
// exactly min(n, evictable_pages()) pages, never a locked one.
//
// LOCKS: inc_lock(node) increments a counter on every node from `node` up to the root, so an
// unlocked node has only unlocked descendants and evictable_pages() (pages of unlocked nodes) can all
// be freed by evict(). A split copies the counter to the new upper node, so a handle locked before a
// split still unlocks exactly the same path.
//
// HANDLES: NodeHandle carries a generation; using a handle whose node was evicted or reset throws
// std::logic_error instead of touching a recycled node. Handles to locked nodes stay valid across
// splits (the node keeps its identity as the lower half).
//
// Misuse (a page given to insert() that is not allocated or already in the tree at another
// position, dec_lock() below zero, stale handle) throws std::logic_error. Not thread safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <set>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/status.h"
#include "cache/page_allocator.h"

namespace pdserve::cache {

struct NodeHandle {
  int32_t id = 0;           // 0 is the root
  uint32_t generation = 0;
  bool operator==(const NodeHandle&) const = default;
};

struct MatchResult {
  std::vector<int32_t> pages;  // tree-owned page ids of the matched prefix, in order
  int64_t matched_tokens = 0;  // pages.size() * page_size
  NodeHandle node;             // last node of the matched path (the root when nothing matched)
};

struct InsertResult {
  int64_t prefix_pages = 0;          // leading pages whose key was already cached before this call
  int64_t inserted_pages = 0;        // pages the tree took ownership of
  std::vector<int32_t> duplicates;   // caller-owned pages the tree did not take (see header)
};

class RadixCache {
 public:
  // `allocator` must outlive the cache; it is used to free evicted pages and to check that pages
  // handed to insert() are allocated. Throws std::invalid_argument for page_size <= 0.
  RadixCache(PageAllocator& allocator, int32_t page_size, bool enabled);
  // Does not free the pages still in the tree (the allocator may already be gone); call reset()
  // first if they must go back.
  ~RadixCache() = default;
  RadixCache(const RadixCache&) = delete;
  RadixCache& operator=(const RadixCache&) = delete;

  bool enabled() const { return enabled_; }
  int32_t page_size() const { return page_size_; }
  NodeHandle root() const { return NodeHandle{0, nodes_[0].generation}; }

  // Longest cached prefix of `tokens` made of full pages. Refreshes the LRU stamp of the path and
  // splits a node when the match ends inside it, so that `node` ends exactly at the match.
  MatchResult match_prefix(std::span<const int32_t> tokens);

  // Caches the full-page part of `tokens`; `pages[i]` holds tokens [i*page_size, (i+1)*page_size).
  // Requires pages.size() >= tokens.size() / page_size. Ownership as in the header comment.
  InsertResult insert(std::span<const int32_t> tokens, std::span<const int32_t> pages);

  // Protect / release the path root..node. The root itself needs no lock (inc/dec on it are no-ops).
  void inc_lock(NodeHandle node);
  void dec_lock(NodeHandle node);

  // Frees up to num_pages least-recently-used unlocked pages to the allocator; returns how many
  // were freed (= min(num_pages, evictable_pages())).
  int64_t evict(int64_t num_pages);

  // Flush: frees every cached page and invalidates every handle except root(). Refused (error,
  // nothing changed) while any node is locked, since a running request reads those pages.
  Status reset();

  int64_t total_pages() const { return total_pages_; }
  int64_t evictable_pages() const { return evictable_pages_; }  // unlocked (freeable by evict)
  int64_t protected_pages() const { return total_pages_ - evictable_pages_; }  // locked
  int64_t num_nodes() const { return live_nodes_; }  // excluding the root
  bool is_cached(int32_t page) const;

  // Audits (O(tree)); for tests and a debug flag, not the hot path.
  // Calls fn(page) for every page in the tree.
  void for_each_page(const std::function<void(int32_t)>& fn) const;
  // The pages on the path root..node, in order (what match_prefix returned for it).
  std::vector<int32_t> path_pages(NodeHandle node) const;
  // Checks every internal invariant: key/page lengths, page ownership bitmap against the
  // allocator, size counters, LRU set, child index, LRU stamps monotone towards the root, and
  // lock counts consistent (a node's count >= its children's).
  Status check_invariants() const;
  // Stronger lock check: every node's count equals the number of `held` handles (one per lock the
  // caller holds; root handles ignored) at or below it, so no lock leaked or was lost.
  Status check_locks(std::span<const NodeHandle> held) const;

 private:
  struct Node {
    std::vector<int32_t> key;    // pages.size() * page_size tokens
    std::vector<int32_t> pages;
    int32_t parent = -1;
    int32_t num_children = 0;
    int32_t lock_ref = 0;        // locks on this node or below
    uint32_t generation = 0;
    uint64_t last_access = 0;
    uint64_t lru_key = 0;        // last_access when inserted into lru_ (valid if in_lru)
    bool live = false;
    bool in_lru = false;
  };

  Node& resolve(NodeHandle h, const char* what);
  const Node& resolve(NodeHandle h, const char* what) const;
  int32_t new_node();
  void delete_node(int32_t id);
  uint64_t child_hash(int32_t parent, const int32_t* first_page) const;
  int32_t find_child(int32_t parent, const int32_t* first_page) const;
  void add_child(int32_t parent, int32_t child);
  void remove_child(int32_t parent, int32_t child);
  int32_t split(int32_t id, size_t at_pages);  // returns the new upper node
  void touch_path(int32_t id);
  void update_lru(int32_t id);                  // re-files a node in lru_ after any change
  int64_t count_common_pages(const Node& n, const int32_t* tokens, int64_t max_pages) const;

  PageAllocator& allocator_;
  int32_t page_size_;
  bool enabled_;
  std::deque<Node> nodes_;            // deque: references stay valid when nodes are added
  std::vector<int32_t> free_nodes_;
  // (parent, first page) -> child. Multimap on a 64-bit hash; equality is checked on lookup, so a
  // hash collision costs a compare, never a wrong match.
  std::unordered_multimap<uint64_t, int32_t> children_;
  std::set<std::pair<uint64_t, int32_t>> lru_;  // unlocked leaves by (last_access, id)
  std::vector<uint8_t> in_tree_;      // per page id
  uint64_t clock_ = 0;
  int64_t total_pages_ = 0, evictable_pages_ = 0, live_nodes_ = 0;
};

}  // namespace pdserve::cache
