#include "cache/kv_cache_manager.h"

#include <numeric>
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
std::vector<int32_t> vec(std::span<const int32_t> s) { return {s.begin(), s.end()}; }

KvCacheConfig small_config(bool radix = true) {
  KvCacheConfig c;
  c.num_pages = 16;
  c.page_size = 4;
  c.max_requests = 4;
  c.max_pages_per_request = 8;
  c.enable_radix_cache = radix;
  return c;
}

#define EXPECT_STATUS_OK(expr)                                   \
  do {                                                           \
    Status _s = (expr);                                          \
    EXPECT_TRUE(_s.has_value()) << _s.error().message();         \
  } while (0)

// Admits `t`, reserves KV for all of it (as a prefill would) and returns the slot.
int32_t run_prefill(KvCacheManager& kv, const Tokens& t) {
  auto a = kv.admit(t);
  EXPECT_TRUE(a.has_value());
  auto pages = kv.extend(a->slot, static_cast<int64_t>(t.size()) - a->cached_tokens);
  EXPECT_TRUE(pages.has_value());
  return a->slot;
}

TEST(KvCacheManager, FinishCachesFullPagesAndTheNextRequestReusesThem) {
  KvCacheManager kv(small_config());
  const Tokens t = iota_tokens(10);
  auto a = kv.admit(t);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->cached_tokens, 0);
  auto added = kv.extend(a->slot, 10);
  ASSERT_TRUE(added.has_value());
  EXPECT_EQ(added->size(), 3u);
  const auto table = vec(kv.page_table(a->slot));
  EXPECT_EQ(vec(*added), table);
  EXPECT_EQ(kv.accounting().in_requests, 3);
  EXPECT_STATUS_OK(kv.audit());

  kv.finish(a->slot, t);
  KvAccounting acc = kv.accounting();
  EXPECT_EQ(acc.cached, 2);  // the partial third page was freed
  EXPECT_EQ(acc.in_requests, 0);
  EXPECT_EQ(acc.free, 14);
  EXPECT_STATUS_OK(kv.audit());

  Tokens longer = iota_tokens(14);
  auto b = kv.admit(longer);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->cached_tokens, 8);
  EXPECT_EQ(b->prefix_pages, 2);
  EXPECT_EQ(vec(kv.page_table(b->slot)), (std::vector<int32_t>{table[0], table[1]}));
  EXPECT_EQ(kv.num_tokens(b->slot), 8);
  EXPECT_EQ(kv.pages_needed(b->slot, 6), 2);
  ASSERT_TRUE(kv.extend(b->slot, 6).has_value());
  EXPECT_EQ(kv.accounting().evictable, 0);  // b's prefix is locked
  EXPECT_STATUS_OK(kv.audit());
  kv.finish(b->slot, longer);
  EXPECT_EQ(kv.accounting().cached, 3);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, NeverMatchesTheLastToken) {
  KvCacheManager kv(small_config());
  const Tokens t = iota_tokens(8);
  kv.finish(run_prefill(kv, t), t);
  EXPECT_EQ(kv.prefix_tokens(t), 4);  // 7 tokens may match: one page
  auto a = kv.admit(t);
  EXPECT_EQ(a->cached_tokens, 4);
  kv.retract(a->slot);
  // A caller cap (input logprobs from token 3 on) limits reuse to whole pages below it.
  const Tokens longer = iota_tokens(12);
  EXPECT_EQ(kv.admit(longer)->cached_tokens, 8);
  EXPECT_EQ(kv.admit(longer, /*max_cached_tokens=*/7)->cached_tokens, 4);
  EXPECT_EQ(kv.admit(longer, 3)->cached_tokens, 0);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, ConfigFollowsThePool) {
  model::LatentKvPool pool(/*num_layers=*/1, /*num_pages=*/10, /*page_size=*/4, /*latent_dim=*/2);
  const KvCacheConfig c = make_kv_cache_config(pool, 3, /*context_len=*/18, false);
  EXPECT_EQ(c.num_pages, 10);
  EXPECT_EQ(c.page_size, 4);
  EXPECT_EQ(c.max_pages_per_request, 5);
  KvCacheManager kv(c);
  EXPECT_EQ(kv.max_tokens_per_request(), 20);
  EXPECT_FALSE(kv.radix().enabled());
}

TEST(KvCacheManager, ConcurrentDuplicatePrefillsAreFreedOnFinish) {
  KvCacheManager kv(small_config());
  const Tokens t = iota_tokens(9);
  const int32_t s1 = run_prefill(kv, t), s2 = run_prefill(kv, t);  // neither finds a cached prefix
  EXPECT_EQ(kv.accounting().in_requests, 6);
  kv.finish(s1, t);
  kv.finish(s2, t);  // its two full pages are duplicates of s1's
  KvAccounting acc = kv.accounting();
  EXPECT_EQ(acc.cached, 2);
  EXPECT_EQ(acc.in_requests, 0);
  EXPECT_EQ(acc.free, 14);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, CachePrefixSharesARunningPrefillAndSwapsDuplicates) {
  KvCacheManager kv(small_config());
  const Tokens t = iota_tokens(11);
  const int32_t s1 = run_prefill(kv, t), s2 = run_prefill(kv, t);
  const auto t1 = vec(kv.page_table(s1));
  EXPECT_EQ(kv.cache_prefix(s1, t), 8);
  EXPECT_EQ(kv.cached_tokens(s1), 8);
  EXPECT_EQ(vec(kv.page_table(s1)), t1);  // s1's own pages went into the tree unchanged
  EXPECT_EQ(kv.cache_prefix(s2, t), 8);
  const auto t2 = vec(kv.page_table(s2));
  EXPECT_EQ(t2[0], t1[0]);  // s2 now reads s1's copy; its own two pages were freed
  EXPECT_EQ(t2[1], t1[1]);
  KvAccounting acc = kv.accounting();
  EXPECT_EQ(acc.cached, 2);
  EXPECT_EQ(acc.in_requests, 2);  // each request's partial third page
  EXPECT_EQ(acc.evictable, 0);
  EXPECT_STATUS_OK(kv.audit());
  // A third request shares the prefix while both run.
  auto a3 = kv.admit(iota_tokens(12));
  EXPECT_EQ(a3->cached_tokens, 8);
  kv.retract(a3->slot);
  kv.finish(s1, t);
  kv.finish(s2, t);
  EXPECT_EQ(kv.accounting().cached, 2);
  EXPECT_EQ(kv.accounting().free, 14);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, ExtendEvictsUnlockedCacheWhenShort) {
  KvCacheManager kv(small_config());
  for (int r = 0; r < 3; ++r) {  // 3 x 4 cached pages
    const Tokens t = iota_tokens(16, 100 * r);
    kv.finish(run_prefill(kv, t), t);
  }
  EXPECT_EQ(kv.accounting().cached, 12);
  EXPECT_EQ(kv.free_pages(), 4);
  EXPECT_EQ(kv.available_pages(), 16);
  auto a = kv.admit(iota_tokens(24, 1000));
  auto pages = kv.extend(a->slot, 24);  // 6 pages: 2 must come from eviction
  ASSERT_TRUE(pages.has_value());
  EXPECT_EQ(pages->size(), 6u);
  EXPECT_EQ(kv.accounting().cached, 10);
  EXPECT_EQ(kv.prefix_tokens(iota_tokens(17, 0)), 8);  // the oldest entry lost its tail
  EXPECT_STATUS_OK(kv.audit());
  kv.retract(a->slot);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, ExtendFailsWithoutSideEffectsAndSparesLockedPrefixes) {
  KvCacheManager kv(small_config());
  const Tokens shared = iota_tokens(17);
  kv.finish(run_prefill(kv, shared), shared);  // 4 cached pages
  auto a = kv.admit(shared);                    // locks all 4
  EXPECT_EQ(a->cached_tokens, 16);
  auto b = kv.admit(iota_tokens(2, 500));
  EXPECT_EQ(kv.available_pages(), 12);
  EXPECT_EQ(kv.pages_needed(b->slot, 13 * 4), 13);
  EXPECT_THROW((void)kv.extend(b->slot, 40), std::logic_error);  // past the 8-page slot row
  ASSERT_TRUE(kv.extend(b->slot, 32).has_value());                // 8 pages
  auto c = kv.admit(iota_tokens(30, 900));
  const KvAccounting before = kv.accounting();
  EXPECT_FALSE(kv.extend(c->slot, 30).has_value());  // 8 needed, 4 free, the rest locked
  const KvAccounting after = kv.accounting();
  EXPECT_EQ(after.cached, before.cached);
  EXPECT_EQ(after.free, before.free);
  EXPECT_EQ(kv.num_tokens(c->slot), 0);
  EXPECT_TRUE(kv.extend(c->slot, 16).has_value());
  EXPECT_EQ(kv.accounting().cached, 4);  // the locked prefix survived
  EXPECT_EQ(kv.free_pages(), 0);
  EXPECT_STATUS_OK(kv.audit());
  EXPECT_EQ(kv.retract(c->slot), 4);
  EXPECT_EQ(kv.retract(b->slot), 8);
  EXPECT_EQ(kv.retract(a->slot), 0);  // a only borrowed: retract frees nothing of the tree
  EXPECT_EQ(kv.accounting().cached, 4);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, FlushIsRefusedWhileARequestUsesTheCache) {
  KvCacheManager kv(small_config());
  const Tokens t = iota_tokens(12);
  kv.finish(run_prefill(kv, t), t);
  auto a = kv.admit(t);
  EXPECT_FALSE(kv.flush().has_value());
  EXPECT_EQ(kv.accounting().cached, 3);
  kv.finish(a->slot, Tokens(t.begin(), t.begin() + 8));
  EXPECT_STATUS_OK(kv.flush());
  EXPECT_EQ(kv.accounting().cached, 0);
  EXPECT_EQ(kv.free_pages(), 16);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, FinishWithoutCachingAndShorterTokenLists) {
  KvCacheManager kv(small_config());
  const Tokens t = iota_tokens(12);
  int32_t s = run_prefill(kv, t);
  kv.finish(s, t, /*cache_it=*/false);
  EXPECT_EQ(kv.accounting().cached, 0);
  EXPECT_EQ(kv.free_pages(), 16);
  // KV reserved for 12 tokens but only 5 written: one page cached, the other two freed.
  s = run_prefill(kv, t);
  kv.finish(s, Tokens(t.begin(), t.begin() + 5));
  EXPECT_EQ(kv.accounting().cached, 1);
  EXPECT_EQ(kv.free_pages(), 15);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, DisabledRadixCachesNothing) {
  KvCacheManager kv(small_config(/*radix=*/false));
  const Tokens t = iota_tokens(12);
  kv.finish(run_prefill(kv, t), t);
  EXPECT_EQ(kv.accounting().cached, 0);
  EXPECT_EQ(kv.free_pages(), 16);
  auto a = kv.admit(t);
  EXPECT_EQ(a->cached_tokens, 0);
  ASSERT_TRUE(kv.extend(a->slot, 12).has_value());
  EXPECT_EQ(kv.cache_prefix(a->slot, t), 0);
  EXPECT_EQ(kv.accounting().in_requests, 3);
  EXPECT_STATUS_OK(kv.flush());
  kv.finish(a->slot, t);
  EXPECT_EQ(kv.free_pages(), 16);
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, SlotsRunOutAndCallerBugsThrow) {
  KvCacheManager kv(small_config());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(kv.admit(iota_tokens(3, 10 * i)).has_value());
  EXPECT_FALSE(kv.admit(iota_tokens(3)).has_value());
  EXPECT_EQ(kv.free_slots(), 0);
  EXPECT_THROW((void)kv.admit(Tokens{}), std::logic_error);
  kv.retract(2);
  EXPECT_THROW(kv.retract(2), std::logic_error);
  EXPECT_THROW(kv.finish(2, Tokens{1}), std::logic_error);
  EXPECT_THROW((void)kv.page_table(2), std::logic_error);
  EXPECT_THROW((void)kv.admit(iota_tokens(33)), std::logic_error);  // > 8 pages x 4 tokens
  EXPECT_THROW(kv.finish(0, iota_tokens(3)), std::logic_error);     // no KV reserved yet
  EXPECT_STATUS_OK(kv.audit());
}

TEST(KvCacheManager, AccountingCheckDetectsABrokenBalance) {
  EXPECT_STATUS_OK(check_accounting(KvAccounting{10, 4, 3, 3, 1}));
  EXPECT_FALSE(check_accounting(KvAccounting{10, 4, 3, 2, 1}).has_value());
  EXPECT_FALSE(check_accounting(KvAccounting{10, 4, 3, 3, 4}).has_value());  // evictable > cached
  EXPECT_FALSE(check_accounting(KvAccounting{10, 12, -2, 0, 0}).has_value());
  EXPECT_EQ(to_string(KvAccounting{10, 4, 3, 3, 1}), "total=10 free=4 in_requests=3 cached=3 evictable=1");
}

TEST(KvCacheManager, ReservedPagesAreOutsideTheAccounting) {
  KvCacheConfig c = small_config();
  c.num_reserved_pages = 1;
  c.max_pages_per_request = 16;
  KvCacheManager kv(c);
  EXPECT_EQ(kv.accounting().total, 15);
  auto a = kv.admit(iota_tokens(60));
  ASSERT_FALSE(kv.extend(a->slot, 64).has_value());  // 16 pages needed, 15 exist
  auto pages = kv.extend(a->slot, 60);
  ASSERT_TRUE(pages.has_value());
  for (int32_t p : *pages) EXPECT_NE(p, 0);
  EXPECT_STATUS_OK(kv.audit());
}

}  // namespace
}  // namespace pdserve::cache
