#include "cache/radix_cache.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve::cache {
namespace {

using Tokens = std::vector<int32_t>;

Tokens iota_tokens(int n, int start = 0) {
  Tokens t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), start);
  return t;
}

class RadixTest : public ::testing::Test {
 protected:
  static constexpr int32_t kPage = 4;
  PageAllocator alloc{64};
  RadixCache tree{alloc, kPage, true};

  std::vector<int32_t> pages_for(const Tokens& t) {
    return *alloc.allocate(static_cast<int64_t>((t.size() + kPage - 1) / kPage));
  }
  // Inserts t with fresh pages; frees what the caller still owns (duplicates, partial tail).
  std::vector<int32_t> insert_fresh(const Tokens& t) {
    auto pages = pages_for(t);
    InsertResult r = tree.insert(t, pages);
    alloc.free(r.duplicates);
    const size_t full = t.size() / kPage;
    alloc.free(std::span<const int32_t>(pages).subspan(full));
    pages.resize(full);
    return pages;
  }
  void expect_ok() {
    Status s = tree.check_invariants();
    EXPECT_TRUE(s.has_value()) << s.error().message();
  }
};

TEST_F(RadixTest, EmptyTreeMatchesNothing) {
  MatchResult m = tree.match_prefix(iota_tokens(12));
  EXPECT_TRUE(m.pages.empty());
  EXPECT_EQ(m.matched_tokens, 0);
  EXPECT_EQ(m.node, tree.root());
}

TEST_F(RadixTest, InsertThenMatchFullAndPartialPrefixes) {
  const Tokens a = iota_tokens(12);
  const auto pages = insert_fresh(a);
  EXPECT_EQ(tree.total_pages(), 3);
  EXPECT_EQ(tree.evictable_pages(), 3);

  MatchResult m = tree.match_prefix(a);
  EXPECT_EQ(m.pages, pages);
  EXPECT_EQ(m.matched_tokens, 12);

  // 10 tokens: only 2 full pages can match; the node is split so the handle ends at 8 tokens.
  m = tree.match_prefix(iota_tokens(10));
  EXPECT_EQ(m.matched_tokens, 8);
  EXPECT_EQ(m.pages, (std::vector<int32_t>{pages[0], pages[1]}));
  EXPECT_EQ(tree.path_pages(m.node), m.pages);
  EXPECT_EQ(tree.num_nodes(), 2);
  expect_ok();

  // Diverging inside page 1: only page 0 matches (page granularity, never a partial page).
  Tokens b = a;
  b[6] = 99;
  m = tree.match_prefix(b);
  EXPECT_EQ(m.matched_tokens, 4);
  EXPECT_EQ(m.pages, std::vector<int32_t>{pages[0]});
  // Diverging inside the first page: nothing.
  b = a;
  b[3] = 99;
  EXPECT_EQ(tree.match_prefix(b).matched_tokens, 0);
  expect_ok();
}

TEST_F(RadixTest, PartialLastPageIsNeverCached) {
  const Tokens a = iota_tokens(10);
  auto pages = pages_for(a);  // 3 pages, the last one holds 2 tokens
  InsertResult r = tree.insert(a, pages);
  EXPECT_EQ(r.inserted_pages, 2);
  EXPECT_TRUE(r.duplicates.empty());
  EXPECT_TRUE(tree.is_cached(pages[0]));
  EXPECT_TRUE(tree.is_cached(pages[1]));
  EXPECT_FALSE(tree.is_cached(pages[2]));
  EXPECT_TRUE(alloc.is_allocated(pages[2]));  // still the caller's
  EXPECT_EQ(tree.total_pages(), 2);
  EXPECT_EQ(tree.match_prefix(a).matched_tokens, 8);
  // Fewer than one page: nothing at all.
  auto small = *alloc.allocate(1);
  r = tree.insert(Tokens{50, 51, 52}, small);
  EXPECT_EQ(r.inserted_pages, 0);
  EXPECT_FALSE(tree.is_cached(small[0]));
  expect_ok();
}

TEST_F(RadixTest, SplitHappensAtPageBoundaries) {
  const Tokens a = iota_tokens(12);
  const auto pa = insert_fresh(a);
  Tokens b = a;
  b[5] = 77;  // same first page, diverges in the middle of page 1
  auto pb = pages_for(b);
  InsertResult r = tree.insert(b, pb);
  EXPECT_EQ(r.prefix_pages, 1);
  EXPECT_EQ(r.inserted_pages, 2);
  ASSERT_EQ(r.duplicates, std::vector<int32_t>{pb[0]});  // page 0 was already cached by a
  alloc.free(r.duplicates);
  EXPECT_EQ(tree.num_nodes(), 3);  // [page0] -> {a's pages 1-2, b's pages 1-2}
  EXPECT_EQ(tree.total_pages(), 5);
  EXPECT_EQ(tree.match_prefix(b).pages, (std::vector<int32_t>{pa[0], pb[1], pb[2]}));
  EXPECT_EQ(tree.match_prefix(a).pages, pa);
  expect_ok();
}

TEST_F(RadixTest, DuplicatesAreReturnedBorrowedPagesAreNot) {
  const Tokens a = iota_tokens(12);
  const auto pa = insert_fresh(a);
  // Same tokens computed again into other pages: all three come back for the caller to free.
  auto q = pages_for(a);
  InsertResult r = tree.insert(a, q);
  EXPECT_EQ(r.prefix_pages, 3);
  EXPECT_EQ(r.inserted_pages, 0);
  EXPECT_EQ(r.duplicates, q);
  for (int32_t p : q) EXPECT_FALSE(tree.is_cached(p));
  alloc.free(r.duplicates);
  // A request that borrowed page 0 and computed the rest: only its own pages are duplicates.
  auto own = *alloc.allocate(3);
  const std::vector<int32_t> mixed{pa[0], own[0], own[1], own[2]};
  Tokens longer = iota_tokens(16);
  r = tree.insert(longer, mixed);
  EXPECT_EQ(r.prefix_pages, 3);
  EXPECT_EQ(r.duplicates, (std::vector<int32_t>{own[0], own[1]}));
  EXPECT_EQ(r.inserted_pages, 1);  // page 3 is new
  EXPECT_TRUE(tree.is_cached(own[2]));
  alloc.free(r.duplicates);
  EXPECT_EQ(tree.total_pages(), 4);
  expect_ok();
}

TEST_F(RadixTest, InsertRejectsPagesWithAnotherOwner) {
  const Tokens a = iota_tokens(8);
  const auto pa = insert_fresh(a);
  // A cached page handed in for a different key: two owners would follow.
  const Tokens other = iota_tokens(8, 100);
  auto fresh = *alloc.allocate(1);
  EXPECT_THROW((void)tree.insert(other, std::vector<int32_t>{fresh[0], pa[1]}), std::logic_error);
  // A page that was never allocated.
  EXPECT_THROW((void)tree.insert(other, std::vector<int32_t>{fresh[0], 60}), std::logic_error);
  // The same page twice.
  EXPECT_THROW((void)tree.insert(other, std::vector<int32_t>{fresh[0], fresh[0]}), std::logic_error);
  // Fewer pages than full pages of tokens.
  EXPECT_THROW((void)tree.insert(other, std::vector<int32_t>{fresh[0]}), std::logic_error);
  EXPECT_FALSE(tree.is_cached(fresh[0]));
  EXPECT_EQ(tree.total_pages(), 2);
  expect_ok();
}

TEST_F(RadixTest, EvictsLeastRecentlyUsedFirst) {
  const Tokens a = iota_tokens(8, 0), b = iota_tokens(8, 100), c = iota_tokens(8, 200);
  const auto pa = insert_fresh(a), pb = insert_fresh(b), pc = insert_fresh(c);
  (void)tree.match_prefix(a);  // a is now the most recent; b the oldest
  EXPECT_EQ(tree.evict(2), 2);
  EXPECT_FALSE(tree.is_cached(pb[0]));
  EXPECT_FALSE(tree.is_cached(pb[1]));
  EXPECT_TRUE(alloc.is_free(pb[0]));
  EXPECT_TRUE(tree.is_cached(pc[0]));
  EXPECT_EQ(tree.evict(2), 2);
  EXPECT_FALSE(tree.is_cached(pc[0]));
  EXPECT_TRUE(tree.is_cached(pa[0]));
  expect_ok();
}

TEST_F(RadixTest, EvictionTrimsTheTailOfALeafPageByPage) {
  const Tokens a = iota_tokens(16);
  const auto pa = insert_fresh(a);
  EXPECT_EQ(tree.evict(1), 1);
  EXPECT_FALSE(tree.is_cached(pa[3]));
  EXPECT_EQ(tree.match_prefix(a).pages, (std::vector<int32_t>{pa[0], pa[1], pa[2]}));
  EXPECT_EQ(tree.total_pages(), 3);
  EXPECT_EQ(tree.evict(100), 3);  // returns what it could free
  EXPECT_EQ(tree.total_pages(), 0);
  EXPECT_EQ(tree.num_nodes(), 0);
  EXPECT_EQ(alloc.free_count(), alloc.capacity());
  expect_ok();
}

TEST_F(RadixTest, LockedPathsAreNeverEvicted) {
  const Tokens a = iota_tokens(8, 0), b = iota_tokens(8, 100);
  const auto pa = insert_fresh(a), pb = insert_fresh(b);
  MatchResult m = tree.match_prefix(b);  // b is the most recent, a the LRU victim...
  tree.inc_lock(m.node);
  (void)tree.match_prefix(a);  // ...until a is touched: now b is the LRU leaf, but locked
  EXPECT_EQ(tree.protected_pages(), 2);
  EXPECT_EQ(tree.evictable_pages(), 2);
  EXPECT_EQ(tree.evict(10), 2);  // only a's pages
  EXPECT_FALSE(tree.is_cached(pa[0]));
  EXPECT_TRUE(tree.is_cached(pb[0]));
  EXPECT_TRUE(tree.is_cached(pb[1]));
  EXPECT_EQ(tree.evict(10), 0);
  tree.dec_lock(m.node);
  EXPECT_EQ(tree.evictable_pages(), 2);
  EXPECT_EQ(tree.evict(10), 2);
  EXPECT_THROW(tree.inc_lock(m.node), std::logic_error);  // the node is gone: stale handle
  expect_ok();
}

TEST_F(RadixTest, LockOnALeafProtectsItsAncestors) {
  const Tokens a = iota_tokens(16);
  Tokens b = a;
  b[9] = 500;  // shares pages 0-1 with a
  const auto pa = insert_fresh(a);
  const auto pb = insert_fresh(b);
  MatchResult mb = tree.match_prefix(b);
  tree.inc_lock(mb.node);
  EXPECT_EQ(tree.evict(100), 2);  // a's own tail only
  EXPECT_TRUE(tree.is_cached(pa[0]));
  EXPECT_TRUE(tree.is_cached(pa[1]));
  EXPECT_FALSE(tree.is_cached(pa[2]));
  EXPECT_EQ(tree.match_prefix(b).pages, mb.pages);
  EXPECT_EQ(mb.pages, (std::vector<int32_t>{pa[0], pa[1], pb[2], pb[3]}));
  tree.dec_lock(mb.node);
  expect_ok();
}

TEST_F(RadixTest, EvictionCascadesToParentsThatBecomeLeaves) {
  const Tokens a = iota_tokens(12);
  Tokens b = a;
  b[8] = 400;  // tree: [p0 p1] -> {a: p2}, {b: p2'}
  insert_fresh(a);
  insert_fresh(b);
  EXPECT_EQ(tree.num_nodes(), 3);
  EXPECT_EQ(tree.evict(3), 3);  // both leaves, then one page of the parent that became a leaf
  EXPECT_EQ(tree.num_nodes(), 1);
  EXPECT_EQ(tree.match_prefix(a).matched_tokens, 4);
  EXPECT_EQ(tree.evict(1), 1);
  EXPECT_EQ(tree.num_nodes(), 0);
  EXPECT_EQ(alloc.free_count(), alloc.capacity());
  expect_ok();
}

TEST_F(RadixTest, LockSurvivesASplitOfTheLockedNode) {
  const Tokens a = iota_tokens(12);
  insert_fresh(a);
  MatchResult m = tree.match_prefix(a);
  tree.inc_lock(m.node);
  Tokens c = a;
  c[4] = 300;  // diverges at page 1: splits the locked node
  insert_fresh(c);
  EXPECT_EQ(tree.num_nodes(), 3);
  const std::vector<NodeHandle> held{m.node};
  Status s = tree.check_locks(held);
  EXPECT_TRUE(s.has_value()) << s.error().message();
  EXPECT_EQ(tree.protected_pages(), 3);
  EXPECT_EQ(tree.path_pages(m.node), m.pages);
  tree.dec_lock(m.node);
  EXPECT_EQ(tree.protected_pages(), 0);
  EXPECT_TRUE(tree.check_locks({}).has_value());
  EXPECT_THROW(tree.dec_lock(m.node), std::logic_error);  // not locked any more
  expect_ok();
}

TEST_F(RadixTest, ResetIsRefusedWhileLocked) {
  const Tokens a = iota_tokens(8);
  insert_fresh(a);
  insert_fresh(iota_tokens(8, 100));
  MatchResult m = tree.match_prefix(a);
  tree.inc_lock(m.node);
  Status s = tree.reset();
  EXPECT_FALSE(s.has_value());
  EXPECT_EQ(tree.total_pages(), 4);  // nothing freed
  tree.dec_lock(m.node);
  ASSERT_TRUE(tree.reset().has_value());
  EXPECT_EQ(tree.total_pages(), 0);
  EXPECT_EQ(alloc.free_count(), alloc.capacity());
  EXPECT_THROW(tree.inc_lock(m.node), std::logic_error);
  tree.inc_lock(tree.root());  // the root handle survives a reset (and needs no lock)
  tree.dec_lock(tree.root());
  expect_ok();
}

TEST(RadixDisabled, MatchesNothingAndKeepsNothing) {
  PageAllocator alloc(16);
  RadixCache tree(alloc, 2, false);
  auto pages = *alloc.allocate(3);
  const Tokens t{1, 2, 3, 4, 5};
  InsertResult r = tree.insert(t, pages);
  EXPECT_EQ(r.duplicates, (std::vector<int32_t>{pages[0], pages[1]}));  // all full pages back
  EXPECT_EQ(r.inserted_pages, 0);
  EXPECT_EQ(tree.total_pages(), 0);
  EXPECT_EQ(tree.match_prefix(t).matched_tokens, 0);
  alloc.free(pages);  // duplicates + tail: everything is still the caller's
  EXPECT_EQ(alloc.free_count(), 16);
  EXPECT_TRUE(tree.reset().has_value());
}

// Differential test against a brute-force model: a map from every cached page-aligned prefix to
// its page. Random inserts, matches, locks and evictions over a small vocabulary (many shared
// prefixes, frequent splits).
class RadixRandomTest : public ::testing::TestWithParam<int> {};

TEST_P(RadixRandomTest, AgreesWithBruteForceModel) {
  const int32_t page = GetParam();
  std::mt19937 rng(1234 + static_cast<unsigned>(page));
  PageAllocator alloc(96);
  RadixCache tree(alloc, page, true);
  std::map<Tokens, int32_t> ref;  // prefix of (i+1)*page tokens -> page id
  std::vector<MatchResult> held;
  auto rand_tokens = [&] {
    std::uniform_int_distribution<int> len(1, 6 * page), tok(0, 2);
    Tokens t(static_cast<size_t>(len(rng)));
    for (auto& x : t) x = tok(rng);
    return t;
  };
  auto expected_match = [&](const Tokens& t) {
    std::vector<int32_t> pages;
    for (size_t i = 1; i * page <= t.size(); ++i) {
      auto it = ref.find(Tokens(t.begin(), t.begin() + static_cast<long>(i * page)));
      if (it == ref.end()) break;
      pages.push_back(it->second);
    }
    return pages;
  };
  for (int step = 0; step < 3000; ++step) {
    const int op = std::uniform_int_distribution<int>(0, 9)(rng);
    if (op < 4) {  // insert
      const Tokens t = rand_tokens();
      const int64_t n = static_cast<int64_t>((t.size() + page - 1) / page);
      if (alloc.free_count() < n) tree.evict(n - alloc.free_count());
      auto pages = alloc.allocate(n);
      if (!pages) continue;  // everything locked
      std::vector<int32_t> want_dup;
      for (size_t i = 1; i * page <= t.size(); ++i) {
        Tokens key(t.begin(), t.begin() + static_cast<long>(i * page));
        auto [it, fresh] = ref.emplace(key, (*pages)[i - 1]);
        if (!fresh) want_dup.push_back((*pages)[i - 1]);
      }
      InsertResult r = tree.insert(t, *pages);
      ASSERT_EQ(r.duplicates, want_dup) << "step " << step;
      alloc.free(r.duplicates);
      alloc.free(std::span<const int32_t>(*pages).subspan(t.size() / page));
    } else if (op < 7) {  // match (and sometimes lock)
      const Tokens t = rand_tokens();
      MatchResult m = tree.match_prefix(t);
      ASSERT_EQ(m.pages, expected_match(t)) << "step " << step;
      ASSERT_EQ(m.matched_tokens, static_cast<int64_t>(m.pages.size()) * page);
      if (op == 6 && held.size() < 4) {
        tree.inc_lock(m.node);
        held.push_back(m);
      }
    } else if (op == 7 && !held.empty()) {  // unlock
      const size_t i = std::uniform_int_distribution<size_t>(0, held.size() - 1)(rng);
      tree.dec_lock(held[i].node);
      held.erase(held.begin() + static_cast<long>(i));
    } else {  // evict
      const int64_t want = std::uniform_int_distribution<int64_t>(1, 12)(rng);
      const int64_t evictable = tree.evictable_pages();
      ASSERT_EQ(tree.evict(want), std::min(want, evictable));
      for (auto it = ref.begin(); it != ref.end();) it = tree.is_cached(it->second) ? std::next(it) : ref.erase(it);
      // Only tails go: what is left must still be prefix-closed.
      for (const auto& [key, p] : ref) {
        if (key.size() > static_cast<size_t>(page)) {
          ASSERT_TRUE(ref.count(Tokens(key.begin(), key.end() - page))) << "step " << step;
        }
      }
    }
    for (const MatchResult& m : held) ASSERT_EQ(tree.path_pages(m.node), m.pages) << "locked path changed";
    ASSERT_EQ(tree.total_pages(), static_cast<int64_t>(ref.size()));
    ASSERT_EQ(alloc.used_count(), tree.total_pages());
    Status s = tree.check_invariants();
    ASSERT_TRUE(s.has_value()) << "step " << step << ": " << s.error().message();
    std::vector<NodeHandle> handles;
    for (const MatchResult& m : held) handles.push_back(m.node);
    s = tree.check_locks(handles);
    ASSERT_TRUE(s.has_value()) << "step " << step << ": " << s.error().message();
  }
  for (const MatchResult& m : held) tree.dec_lock(m.node);
  ASSERT_TRUE(tree.reset().has_value());
  EXPECT_EQ(alloc.free_count(), alloc.capacity());
}

INSTANTIATE_TEST_SUITE_P(PageSizes, RadixRandomTest, ::testing::Values(1, 2, 3));

}  // namespace
}  // namespace pdserve::cache
