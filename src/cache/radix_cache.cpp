#include "cache/radix_cache.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pdserve::cache {
namespace {

// splitmix64's finalizer: cheap and good enough to spread token ids over hash buckets.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

[[noreturn]] void bug(const std::string& msg) { throw std::logic_error("RadixCache: " + msg); }

}  // namespace

RadixCache::RadixCache(PageAllocator& allocator, int32_t page_size, bool enabled)
    : allocator_(allocator), page_size_(page_size), enabled_(enabled) {
  if (page_size <= 0) throw std::invalid_argument("RadixCache: page_size must be positive");
  nodes_.emplace_back();
  nodes_[0].live = true;  // the root: no key, no pages, never evicted or locked
  in_tree_.assign(static_cast<size_t>(allocator.num_pages()), 0);
}

const RadixCache::Node& RadixCache::resolve(NodeHandle h, const char* what) const {
  if (h.id < 0 || static_cast<size_t>(h.id) >= nodes_.size() || !nodes_[static_cast<size_t>(h.id)].live ||
      nodes_[static_cast<size_t>(h.id)].generation != h.generation)
    bug(std::string(what) + ": stale or invalid node handle " + std::to_string(h.id) + "@" +
        std::to_string(h.generation) + " (evicted or flushed?)");
  return nodes_[static_cast<size_t>(h.id)];
}

RadixCache::Node& RadixCache::resolve(NodeHandle h, const char* what) {
  return const_cast<Node&>(static_cast<const RadixCache*>(this)->resolve(h, what));
}

int32_t RadixCache::new_node() {
  int32_t id;
  if (!free_nodes_.empty()) {
    id = free_nodes_.back();
    free_nodes_.pop_back();
  } else {
    id = static_cast<int32_t>(nodes_.size());
    nodes_.emplace_back();
  }
  nodes_[static_cast<size_t>(id)].live = true;
  ++live_nodes_;
  return id;
}

void RadixCache::delete_node(int32_t id) {
  Node& n = nodes_[static_cast<size_t>(id)];
  const uint32_t gen = n.generation + 1;  // invalidates every handle to this node
  n = Node{};                             // also releases the key/page buffers
  n.generation = gen;
  free_nodes_.push_back(id);
  --live_nodes_;
}

uint64_t RadixCache::child_hash(int32_t parent, const int32_t* first_page) const {
  uint64_t h = mix64(static_cast<uint64_t>(parent));
  for (int32_t i = 0; i < page_size_; ++i) h = mix64(h ^ static_cast<uint32_t>(first_page[i]));
  return h;
}

int32_t RadixCache::find_child(int32_t parent, const int32_t* first_page) const {
  auto [it, end] = children_.equal_range(child_hash(parent, first_page));
  for (; it != end; ++it) {
    const Node& c = nodes_[static_cast<size_t>(it->second)];
    if (c.parent == parent && std::equal(first_page, first_page + page_size_, c.key.begin())) return it->second;
  }
  return -1;
}

void RadixCache::add_child(int32_t parent, int32_t child) {
  children_.emplace(child_hash(parent, nodes_[static_cast<size_t>(child)].key.data()), child);
  ++nodes_[static_cast<size_t>(parent)].num_children;
  update_lru(parent);  // no longer a leaf
}

void RadixCache::remove_child(int32_t parent, int32_t child) {
  auto [it, end] = children_.equal_range(child_hash(parent, nodes_[static_cast<size_t>(child)].key.data()));
  for (; it != end; ++it) {
    if (it->second == child) {
      children_.erase(it);
      --nodes_[static_cast<size_t>(parent)].num_children;
      update_lru(parent);  // may have become an evictable leaf: this is the eviction cascade
      return;
    }
  }
  bug("child index lost node " + std::to_string(child));
}

int32_t RadixCache::split(int32_t id, size_t at_pages) {
  const int32_t up = new_node();  // before taking references: the deque keeps them valid anyway
  Node& n = nodes_[static_cast<size_t>(id)];
  Node& u = nodes_[static_cast<size_t>(up)];
  const auto at_tokens = static_cast<std::ptrdiff_t>(at_pages * static_cast<size_t>(page_size_));
  u.key.assign(n.key.begin(), n.key.begin() + at_tokens);
  u.pages.assign(n.pages.begin(), n.pages.begin() + static_cast<std::ptrdiff_t>(at_pages));
  n.key.erase(n.key.begin(), n.key.begin() + at_tokens);
  n.pages.erase(n.pages.begin(), n.pages.begin() + static_cast<std::ptrdiff_t>(at_pages));
  u.parent = n.parent;
  u.num_children = 1;
  // Same locks as the lower half: every lock on `n` also covers the upper half of its old key.
  u.lock_ref = n.lock_ref;
  u.last_access = n.last_access;
  // The upper half starts with n's old first page under the same parent: same index entry, so
  // the entry is re-pointed instead of erased and re-added.
  auto [it, end] = children_.equal_range(child_hash(u.parent, u.key.data()));
  for (; it != end && it->second != id; ++it) {
  }
  if (it == end) bug("child index lost node " + std::to_string(id) + " during split");
  it->second = up;
  n.parent = up;
  children_.emplace(child_hash(up, n.key.data()), id);
  // n keeps its children, lock and stamp, so its LRU entry stays right; u has a child: not a leaf.
  return up;
}

void RadixCache::touch_path(int32_t id) {
  ++clock_;
  for (; id != 0; id = nodes_[static_cast<size_t>(id)].parent) {
    nodes_[static_cast<size_t>(id)].last_access = clock_;
    update_lru(id);
  }
}

void RadixCache::update_lru(int32_t id) {
  Node& n = nodes_[static_cast<size_t>(id)];
  const bool want = id != 0 && n.live && n.num_children == 0 && n.lock_ref == 0 && !n.pages.empty();
  if (n.in_lru && (!want || n.lru_key != n.last_access)) {
    lru_.erase({n.lru_key, id});
    n.in_lru = false;
  }
  if (want && !n.in_lru) {
    lru_.insert({n.last_access, id});
    n.lru_key = n.last_access;
    n.in_lru = true;
  }
}

int64_t RadixCache::count_common_pages(const Node& n, const int32_t* tokens, int64_t max_pages) const {
  const int64_t limit = std::min<int64_t>(static_cast<int64_t>(n.pages.size()), max_pages);
  int64_t k = 0;
  for (; k < limit; ++k) {
    const int32_t* a = n.key.data() + k * page_size_;
    if (!std::equal(a, a + page_size_, tokens + k * page_size_)) break;
  }
  return k;
}

MatchResult RadixCache::match_prefix(std::span<const int32_t> tokens) {
  MatchResult r;
  r.node = root();
  if (!enabled_) return r;
  const int64_t n_pages = static_cast<int64_t>(tokens.size()) / page_size_;
  int32_t cur = 0;
  int64_t pos = 0;
  while (pos < n_pages) {
    const int32_t* tp = tokens.data() + pos * page_size_;
    int32_t c = find_child(cur, tp);
    if (c < 0) break;
    const int64_t k = count_common_pages(nodes_[static_cast<size_t>(c)], tp, n_pages - pos);  // >= 1
    const bool partial = k < static_cast<int64_t>(nodes_[static_cast<size_t>(c)].pages.size());
    // Split so the returned node ends exactly at the match: locking it must not protect (and the
    // caller must not be handed) pages beyond what matched.
    if (partial) c = split(c, static_cast<size_t>(k));
    const Node& cn = nodes_[static_cast<size_t>(c)];
    r.pages.insert(r.pages.end(), cn.pages.begin(), cn.pages.end());
    pos += k;
    cur = c;
    if (partial) break;
  }
  touch_path(cur);
  r.matched_tokens = pos * page_size_;
  r.node = NodeHandle{cur, nodes_[static_cast<size_t>(cur)].generation};
  return r;
}

InsertResult RadixCache::insert(std::span<const int32_t> tokens, std::span<const int32_t> pages) {
  InsertResult r;
  const int64_t n_pages = static_cast<int64_t>(tokens.size()) / page_size_;
  if (static_cast<int64_t>(pages.size()) < n_pages)
    bug("insert: " + std::to_string(pages.size()) + " pages for " + std::to_string(n_pages) + " full pages of tokens");
  if (!enabled_) {
    for (int64_t i = 0; i < n_pages; ++i)
      if (!allocator_.is_allocated(pages[static_cast<size_t>(i)]))
        bug("insert: page " + std::to_string(pages[static_cast<size_t>(i)]) + " is not allocated");
    r.duplicates.assign(pages.begin(), pages.begin() + n_pages);
    return r;
  }

  // Walk the cached part; splits on the way are harmless if we throw later (same content).
  int32_t cur = 0;
  int64_t pos = 0;
  while (pos < n_pages) {
    const int32_t* tp = tokens.data() + pos * page_size_;
    int32_t c = find_child(cur, tp);
    if (c < 0) break;
    const Node& cn = nodes_[static_cast<size_t>(c)];
    const int64_t k = count_common_pages(cn, tp, n_pages - pos);
    for (int64_t i = 0; i < k; ++i) {
      const int32_t given = pages[static_cast<size_t>(pos + i)];
      if (given != cn.pages[static_cast<size_t>(i)]) r.duplicates.push_back(given);
    }
    if (k < static_cast<int64_t>(cn.pages.size())) c = split(c, static_cast<size_t>(k));
    pos += k;
    cur = c;
  }
  r.prefix_pages = pos;
  const auto new_pages = pages.subspan(static_cast<size_t>(pos), static_cast<size_t>(n_pages - pos));

  // Every page that is not the tree's own (duplicates and new ones) must be an allocated page that
  // is not in the tree and appears once; otherwise two owners would free or write it.
  auto check_and_mark = [&](int32_t p) {
    if (!allocator_.is_allocated(p)) bug("insert: page " + std::to_string(p) + " is not allocated");
    if (in_tree_[static_cast<size_t>(p)]) bug("insert: page " + std::to_string(p) + " is already cached or given twice");
    in_tree_[static_cast<size_t>(p)] = 2;  // temporary mark, cleared below
  };
  auto clear_marks = [&] {
    for (int32_t p : r.duplicates)
      if (p >= 0 && static_cast<size_t>(p) < in_tree_.size() && in_tree_[static_cast<size_t>(p)] == 2) in_tree_[static_cast<size_t>(p)] = 0;
    for (int32_t p : new_pages)
      if (p >= 0 && static_cast<size_t>(p) < in_tree_.size() && in_tree_[static_cast<size_t>(p)] == 2) in_tree_[static_cast<size_t>(p)] = 0;
  };
  try {
    for (int32_t p : r.duplicates) check_and_mark(p);
    for (int32_t p : new_pages) check_and_mark(p);
  } catch (...) {
    clear_marks();
    throw;
  }
  clear_marks();

  if (!new_pages.empty()) {
    const int32_t leaf = new_node();
    Node& l = nodes_[static_cast<size_t>(leaf)];
    l.key.assign(tokens.begin() + pos * page_size_, tokens.begin() + n_pages * page_size_);
    l.pages.assign(new_pages.begin(), new_pages.end());
    l.parent = cur;
    for (int32_t p : new_pages) in_tree_[static_cast<size_t>(p)] = 1;
    total_pages_ += static_cast<int64_t>(new_pages.size());
    evictable_pages_ += static_cast<int64_t>(new_pages.size());
    r.inserted_pages = static_cast<int64_t>(new_pages.size());
    add_child(cur, leaf);
    cur = leaf;
  }
  touch_path(cur);
  return r;
}

void RadixCache::inc_lock(NodeHandle h) {
  resolve(h, "inc_lock");
  for (int32_t id = h.id; id != 0; id = nodes_[static_cast<size_t>(id)].parent) {
    Node& n = nodes_[static_cast<size_t>(id)];
    if (n.lock_ref++ == 0) evictable_pages_ -= static_cast<int64_t>(n.pages.size());
    update_lru(id);
  }
}

void RadixCache::dec_lock(NodeHandle h) {
  const Node& start = resolve(h, "dec_lock");
  if (h.id != 0 && start.lock_ref <= 0) bug("dec_lock: node " + std::to_string(h.id) + " is not locked");
  for (int32_t id = h.id; id != 0; id = nodes_[static_cast<size_t>(id)].parent) {
    Node& n = nodes_[static_cast<size_t>(id)];
    if (n.lock_ref <= 0) bug("dec_lock: lock count below zero on node " + std::to_string(id));
    if (--n.lock_ref == 0) evictable_pages_ += static_cast<int64_t>(n.pages.size());
    update_lru(id);
  }
}

int64_t RadixCache::evict(int64_t num_pages) {
  int64_t freed = 0;
  while (freed < num_pages && !lru_.empty()) {
    const int32_t id = lru_.begin()->second;
    Node& n = nodes_[static_cast<size_t>(id)];
    const auto size = static_cast<int64_t>(n.pages.size());
    const int64_t k = std::min(num_pages - freed, size);
    const std::span<const int32_t> tail(n.pages.data() + (size - k), static_cast<size_t>(k));
    allocator_.free(tail);
    for (int32_t p : tail) in_tree_[static_cast<size_t>(p)] = 0;
    total_pages_ -= k;
    evictable_pages_ -= k;
    freed += k;
    if (k == size) {
      lru_.erase({n.lru_key, id});
      n.in_lru = false;
      remove_child(n.parent, id);  // needs the key intact; may put the parent into lru_
      delete_node(id);
    } else {
      // Keep the head of the leaf: it is the part other sequences are most likely to share.
      n.pages.resize(static_cast<size_t>(size - k));
      n.key.resize(n.pages.size() * static_cast<size_t>(page_size_));
    }
  }
  return freed;
}

Status RadixCache::reset() {
  if (protected_pages() > 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "cannot flush the prefix cache: {} cached pages are in use by running requests", protected_pages());
  std::vector<int32_t> all;
  all.reserve(static_cast<size_t>(total_pages_));
  for (size_t id = 1; id < nodes_.size(); ++id) {
    if (!nodes_[id].live) continue;
    all.insert(all.end(), nodes_[id].pages.begin(), nodes_[id].pages.end());
    delete_node(static_cast<int32_t>(id));
  }
  allocator_.free(all);
  for (int32_t p : all) in_tree_[static_cast<size_t>(p)] = 0;
  children_.clear();
  lru_.clear();
  nodes_[0].num_children = 0;
  total_pages_ = evictable_pages_ = 0;
  return ok_status();
}

bool RadixCache::is_cached(int32_t page) const {
  return page >= 0 && static_cast<size_t>(page) < in_tree_.size() && in_tree_[static_cast<size_t>(page)] == 1;
}

void RadixCache::for_each_page(const std::function<void(int32_t)>& fn) const {
  for (size_t id = 1; id < nodes_.size(); ++id)
    if (nodes_[id].live)
      for (int32_t p : nodes_[id].pages) fn(p);
}

std::vector<int32_t> RadixCache::path_pages(NodeHandle h) const {
  resolve(h, "path_pages");
  std::vector<const Node*> path;
  for (int32_t id = h.id; id != 0; id = nodes_[static_cast<size_t>(id)].parent) path.push_back(&nodes_[static_cast<size_t>(id)]);
  std::vector<int32_t> out;
  for (auto it = path.rbegin(); it != path.rend(); ++it) out.insert(out.end(), (*it)->pages.begin(), (*it)->pages.end());
  return out;
}

Status RadixCache::check_invariants() const {
  auto fail = [](const std::string& m) { return Status(make_error(ErrorCode::kInternal, "radix invariant: {}", m)); };
  const Node& root = nodes_[0];
  if (!root.live || root.parent != -1 || !root.pages.empty() || root.lock_ref != 0 || root.in_lru)
    return fail("root corrupted");
  std::vector<int32_t> children(nodes_.size(), 0);
  std::vector<int64_t> child_locks(nodes_.size(), 0);
  std::vector<uint8_t> seen(in_tree_.size(), 0);
  int64_t total = 0, evictable = 0, live = 0, in_lru = 0;
  for (size_t i = 1; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    const auto id = static_cast<int32_t>(i);
    if (!n.live) continue;
    ++live;
    const std::string at = "node " + std::to_string(id) + ": ";
    if (n.pages.empty()) return fail(at + "no pages");
    if (n.key.size() != n.pages.size() * static_cast<size_t>(page_size_)) return fail(at + "key is not pages * page_size");
    if (n.parent < 0 || static_cast<size_t>(n.parent) >= nodes_.size() || !nodes_[static_cast<size_t>(n.parent)].live)
      return fail(at + "dead parent");
    if (n.lock_ref < 0) return fail(at + "negative lock count");
    if (n.last_access > nodes_[static_cast<size_t>(n.parent)].last_access && n.parent != 0)
      return fail(at + "newer than its parent (LRU cascade would be wrong)");
    if (find_child(n.parent, n.key.data()) != id) return fail(at + "not reachable through the child index");
    ++children[static_cast<size_t>(n.parent)];
    child_locks[static_cast<size_t>(n.parent)] += n.lock_ref;
    for (int32_t p : n.pages) {
      if (p < 0 || static_cast<size_t>(p) >= seen.size()) return fail(at + "page id out of range");
      if (seen[static_cast<size_t>(p)]++) return fail(at + "page " + std::to_string(p) + " cached twice");
      if (in_tree_[static_cast<size_t>(p)] != 1) return fail(at + "page " + std::to_string(p) + " not marked cached");
      if (!allocator_.is_allocated(p)) return fail(at + "page " + std::to_string(p) + " is free in the allocator");
    }
    total += static_cast<int64_t>(n.pages.size());
    if (n.lock_ref == 0) evictable += static_cast<int64_t>(n.pages.size());
  }
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (!n.live) continue;
    if (n.num_children != children[i]) return fail("node " + std::to_string(i) + ": child count wrong");
    if (i != 0 && n.lock_ref < child_locks[i]) return fail("node " + std::to_string(i) + ": fewer locks than its children");
    const bool want = i != 0 && n.num_children == 0 && n.lock_ref == 0;
    if (want != n.in_lru || (n.in_lru && (n.lru_key != n.last_access || !lru_.count({n.lru_key, static_cast<int32_t>(i)}))))
      return fail("node " + std::to_string(i) + ": LRU membership wrong");
    in_lru += n.in_lru;
  }
  for (size_t p = 0; p < in_tree_.size(); ++p)
    if ((in_tree_[p] != 0) != (seen[p] != 0)) return fail("page " + std::to_string(p) + ": cached mark without a node");
  if (total != total_pages_ || evictable != evictable_pages_ || live != live_nodes_)
    return fail("size counters: total " + std::to_string(total_pages_) + " vs " + std::to_string(total) + ", evictable " +
                std::to_string(evictable_pages_) + " vs " + std::to_string(evictable));
  if (static_cast<int64_t>(lru_.size()) != in_lru) return fail("LRU set has stale entries");
  if (static_cast<int64_t>(children_.size()) != live) return fail("child index has stale entries");
  return ok_status();
}

Status RadixCache::check_locks(std::span<const NodeHandle> held) const {
  std::vector<int64_t> expect(nodes_.size(), 0);
  for (const NodeHandle& h : held) {
    if (h.id == 0) continue;
    if (h.id < 0 || static_cast<size_t>(h.id) >= nodes_.size() || !nodes_[static_cast<size_t>(h.id)].live ||
        nodes_[static_cast<size_t>(h.id)].generation != h.generation)
      return make_error(ErrorCode::kInternal, "radix lock check: held handle {}@{} is stale", h.id, h.generation);
    for (int32_t id = h.id; id != 0; id = nodes_[static_cast<size_t>(id)].parent) ++expect[static_cast<size_t>(id)];
  }
  for (size_t i = 1; i < nodes_.size(); ++i)
    if (nodes_[i].live && nodes_[i].lock_ref != expect[i])
      return make_error(ErrorCode::kInternal, "radix lock check: node {} has {} locks, holders account for {}", i,
                        nodes_[i].lock_ref, expect[i]);
  return ok_status();
}

}  // namespace pdserve::cache
