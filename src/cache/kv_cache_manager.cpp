#include "cache/kv_cache_manager.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace pdserve::cache {
namespace {

[[noreturn]] void bug(const std::string& msg) { throw std::logic_error("KvCacheManager: " + msg); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Status check_accounting(const KvAccounting& a) {
  if (a.total < 0 || a.free < 0 || a.in_requests < 0 || a.cached < 0 || a.evictable < 0 || a.evictable > a.cached ||
      a.free + a.in_requests + a.cached != a.total)
    return make_error(ErrorCode::kInternal, "KV page accounting broken (free + in_requests + cached must equal total): {}",
                      to_string(a));
  return ok_status();
}

std::string to_string(const KvAccounting& a) {
  return fmt::format("total={} free={} in_requests={} cached={} evictable={}", a.total, a.free, a.in_requests, a.cached,
                     a.evictable);
}

KvCacheManager::KvCacheManager(const KvCacheConfig& cfg)
    : cfg_(cfg),
      allocator_(cfg.num_pages, cfg.num_reserved_pages),
      radix_(allocator_, cfg.page_size, cfg.enable_radix_cache),
      slots_(cfg.max_requests, cfg.max_pages_per_request),
      states_(static_cast<size_t>(cfg.max_requests)) {}

KvCacheManager::SlotState& KvCacheManager::state(int32_t slot, const char* what) {
  return const_cast<SlotState&>(static_cast<const KvCacheManager*>(this)->state(slot, what));
}

const KvCacheManager::SlotState& KvCacheManager::state(int32_t slot, const char* what) const {
  if (!slots_.in_use(slot)) bug(std::string(what) + ": slot " + std::to_string(slot) + " is not admitted");
  return states_[static_cast<size_t>(slot)];
}

KvCacheConfig make_kv_cache_config(const model::LatentKvPool& pool, int32_t max_requests, int64_t context_len,
                                   bool enable_radix_cache) {
  if (context_len <= 0) throw std::invalid_argument("make_kv_cache_config: context_len must be positive");
  KvCacheConfig c;
  c.num_pages = static_cast<int32_t>(pool.num_pages());
  c.page_size = static_cast<int32_t>(pool.page_size());
  c.max_requests = max_requests;
  c.max_pages_per_request = static_cast<int32_t>(ceil_div(context_len, pool.page_size()));
  c.enable_radix_cache = enable_radix_cache;
  return c;
}

std::optional<Admission> KvCacheManager::admit(std::span<const int32_t> tokens, int64_t max_cached_tokens) {
  if (tokens.empty()) bug("admit: empty token sequence");
  if (static_cast<int64_t>(tokens.size()) > max_tokens_per_request())
    bug(fmt::format("admit: {} tokens exceed the slot capacity of {}", tokens.size(), max_tokens_per_request()));
  const std::optional<int32_t> slot = slots_.acquire();
  if (!slot) return std::nullopt;
  // Leave the last token out of the match: its logits are what the forward must produce.
  const int64_t limit = std::clamp<int64_t>(max_cached_tokens, 0, static_cast<int64_t>(tokens.size()) - 1);
  MatchResult m = radix_.match_prefix(tokens.first(static_cast<size_t>(limit)));
  radix_.inc_lock(m.node);  // before anything else can evict what we just matched
  slots_.append(*slot, m.pages);
  SlotState& s = states_[static_cast<size_t>(*slot)];
  s.num_tokens = m.matched_tokens;
  s.prefix_pages = static_cast<int64_t>(m.pages.size());
  s.lock = m.node;
  return Admission{*slot, m.matched_tokens, s.prefix_pages};
}

int64_t KvCacheManager::pages_needed(int32_t slot, int64_t num_new_tokens) const {
  const SlotState& s = state(slot, "pages_needed");
  const int64_t need = ceil_div(s.num_tokens + num_new_tokens, cfg_.page_size) - slots_.num_pages(slot);
  return need > 0 ? need : 0;
}

std::optional<std::span<const int32_t>> KvCacheManager::extend(int32_t slot, int64_t num_new_tokens) {
  SlotState& s = state(slot, "extend");
  if (num_new_tokens < 0) bug("extend: negative token count");
  if (s.num_tokens + num_new_tokens > max_tokens_per_request())
    bug(fmt::format("extend: slot {} would hold {} tokens, capacity {}", slot, s.num_tokens + num_new_tokens,
                    max_tokens_per_request()));
  const int64_t need = pages_needed(slot, num_new_tokens);
  // Decide before evicting: a request that cannot fit anyway must not flush other prefixes.
  if (need > available_pages()) return std::nullopt;
  if (need > allocator_.free_count()) radix_.evict(need - allocator_.free_count());
  std::vector<int32_t> fresh;
  if (!allocator_.allocate_append(need, fresh)) bug("extend: eviction freed fewer pages than it reported evictable");
  slots_.append(slot, fresh);
  in_request_pages_ += need;
  s.num_tokens += num_new_tokens;
  return slots_.pages(slot).last(static_cast<size_t>(need));
}

int64_t KvCacheManager::cache_prefix(int32_t slot, std::span<const int32_t> tokens) {
  SlotState& s = state(slot, "cache_prefix");
  if (static_cast<int64_t>(tokens.size()) > s.num_tokens)
    bug(fmt::format("cache_prefix: {} tokens given, KV reserved for only {}", tokens.size(), s.num_tokens));
  const int64_t n_full = static_cast<int64_t>(tokens.size()) / cfg_.page_size;
  if (!radix_.enabled() || n_full <= s.prefix_pages) return s.prefix_pages * cfg_.page_size;
  const auto full_tokens = tokens.first(static_cast<size_t>(n_full * cfg_.page_size));
  InsertResult ins = radix_.insert(full_tokens, slots_.pages(slot).first(static_cast<size_t>(n_full)));
  // Re-match to get the canonical pages and a node ending exactly at n_full pages to lock.
  MatchResult m = radix_.match_prefix(full_tokens);
  if (static_cast<int64_t>(m.pages.size()) != n_full) bug("cache_prefix: the prefix just inserted does not match");
  radix_.inc_lock(m.node);  // new lock first: the shared path never goes unprotected
  radix_.dec_lock(s.lock);
  size_t swapped = 0;
  for (int64_t i = s.prefix_pages; i < n_full; ++i) {
    const int32_t mine = slots_.pages(slot)[static_cast<size_t>(i)];
    const int32_t tree = m.pages[static_cast<size_t>(i)];
    if (mine != tree) {
      slots_.set(slot, static_cast<int32_t>(i), tree);  // same tokens at the same positions: same KV
      ++swapped;
    }
  }
  if (swapped != ins.duplicates.size()) bug("cache_prefix: duplicate count does not match the page-table swap");
  allocator_.free(ins.duplicates);
  in_request_pages_ -= n_full - s.prefix_pages;
  s.prefix_pages = n_full;
  s.lock = m.node;
  return n_full * cfg_.page_size;
}

void KvCacheManager::free_own_pages(int32_t slot, int64_t from_index) {
  const auto own = slots_.pages(slot).subspan(static_cast<size_t>(from_index));
  allocator_.free(own);
  in_request_pages_ -= static_cast<int64_t>(own.size());
  slots_.truncate(slot, static_cast<int32_t>(from_index));
}

void KvCacheManager::release_slot(int32_t slot) {
  SlotState& s = states_[static_cast<size_t>(slot)];
  radix_.dec_lock(s.lock);
  s = SlotState{};
  slots_.release(slot);  // borrowed entries are only forgotten: they belong to the tree
}

void KvCacheManager::finish(int32_t slot, std::span<const int32_t> tokens, bool cache_it) {
  SlotState& s = state(slot, "finish");
  if (static_cast<int64_t>(tokens.size()) > s.num_tokens)
    bug(fmt::format("finish: {} tokens given, KV reserved for only {}", tokens.size(), s.num_tokens));
  int64_t own_from = s.prefix_pages;
  const int64_t n_full = static_cast<int64_t>(tokens.size()) / cfg_.page_size;
  if (cache_it && radix_.enabled() && n_full > s.prefix_pages) {
    InsertResult ins = radix_.insert(tokens.first(static_cast<size_t>(n_full * cfg_.page_size)),
                                     slots_.pages(slot).first(static_cast<size_t>(n_full)));
    // Pages [prefix, n_full) now belong to the tree, except the duplicates, which we free.
    allocator_.free(ins.duplicates);
    in_request_pages_ -= n_full - s.prefix_pages;
    own_from = n_full;
  }
  free_own_pages(slot, own_from);  // the partial last page and anything not cached
  release_slot(slot);
}

int64_t KvCacheManager::retract(int32_t slot) {
  const SlotState& s = state(slot, "retract");
  const int64_t own = slots_.num_pages(slot) - s.prefix_pages;
  free_own_pages(slot, s.prefix_pages);
  release_slot(slot);
  return own;
}

Status KvCacheManager::flush() { return radix_.reset(); }

int64_t KvCacheManager::prefix_tokens(std::span<const int32_t> tokens) {
  if (tokens.empty()) return 0;
  return radix_.match_prefix(tokens.first(tokens.size() - 1)).matched_tokens;
}

KvAccounting KvCacheManager::accounting() const {
  return KvAccounting{allocator_.capacity(), allocator_.free_count(), in_request_pages_, radix_.total_pages(),
                      radix_.evictable_pages()};
}

std::span<const int32_t> KvCacheManager::page_table(int32_t slot) const {
  state(slot, "page_table");
  return slots_.pages(slot);
}
int64_t KvCacheManager::num_tokens(int32_t slot) const { return state(slot, "num_tokens").num_tokens; }
int64_t KvCacheManager::cached_pages(int32_t slot) const { return state(slot, "cached_pages").prefix_pages; }
int64_t KvCacheManager::cached_tokens(int32_t slot) const { return cached_pages(slot) * cfg_.page_size; }

Status KvCacheManager::audit() const {
  PDSERVE_RETURN_IF_ERROR(check());
  PDSERVE_RETURN_IF_ERROR(radix_.check_invariants());
  const int32_t num_pages = allocator_.num_pages();
  std::vector<uint8_t> owners(static_cast<size_t>(num_pages), 0);
  for (int32_t p = allocator_.num_reserved(); p < num_pages; ++p)
    if (allocator_.is_free(p)) ++owners[static_cast<size_t>(p)];
  radix_.for_each_page([&](int32_t p) { ++owners[static_cast<size_t>(p)]; });
  std::vector<NodeHandle> locks;
  int64_t own_total = 0;
  for (int32_t slot = 0; slot < slots_.max_requests(); ++slot) {
    if (!slots_.in_use(slot)) continue;
    const SlotState& s = states_[static_cast<size_t>(slot)];
    const auto table = slots_.pages(slot);
    if (static_cast<int64_t>(table.size()) != ceil_div(s.num_tokens, cfg_.page_size) ||
        s.prefix_pages > static_cast<int64_t>(table.size()))
      return make_error(ErrorCode::kInternal, "slot {}: {} pages for {} tokens (prefix {} pages)", slot, table.size(),
                        s.num_tokens, s.prefix_pages);
    // The borrowed prefix must be exactly the locked path, so eviction cannot free it underneath.
    std::vector<int32_t> path = radix_.path_pages(s.lock);
    if (!std::equal(path.begin(), path.end(), table.begin(), table.begin() + s.prefix_pages) ||
        static_cast<int64_t>(path.size()) != s.prefix_pages)
      return make_error(ErrorCode::kInternal, "slot {}: borrowed prefix differs from its locked tree path", slot);
    locks.push_back(s.lock);
    for (size_t i = static_cast<size_t>(s.prefix_pages); i < table.size(); ++i) {
      const int32_t p = table[i];
      if (!allocator_.is_allocated(p)) return make_error(ErrorCode::kInternal, "slot {}: page {} is not allocated", slot, p);
      ++owners[static_cast<size_t>(p)];
      ++own_total;
    }
  }
  PDSERVE_RETURN_IF_ERROR(radix_.check_locks(locks));
  if (own_total != in_request_pages_)
    return make_error(ErrorCode::kInternal, "requests own {} pages, counter says {}", own_total, in_request_pages_);
  for (int32_t p = allocator_.num_reserved(); p < num_pages; ++p)
    if (owners[static_cast<size_t>(p)] != 1)
      return make_error(ErrorCode::kInternal, "page {} has {} owners (free / cached / one request each count once)", p,
                        owners[static_cast<size_t>(p)]);
  return ok_status();
}

}  // namespace pdserve::cache
