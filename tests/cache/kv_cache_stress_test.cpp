// Randomized scheduler-like workload against KvCacheManager with a shadow model.
//
// The shadow keeps (a) the KV "content" of every page: the token prefix whose last tokens were
// written into it, as a forward would write latents, and (b) every page-aligned prefix that should
// be in the radix tree with its page. After every operation it checks the O(1) accounting, the full
// page-by-page audit, that the tree holds exactly the shadow's prefixes, that each cached page
// really holds the tokens of its prefix, and that every running request's page table holds its own
// tokens. A page freed while still referenced, a wrong match, a lost lock or a leaked page each
// makes one of these fail.
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <span>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "cache/kv_cache_manager.h"

namespace pdserve::cache {
namespace {

using Tokens = std::vector<int32_t>;

struct StressParams {
  int32_t page_size;
  bool radix;
  int32_t reserved;
  uint32_t seed;
};

struct Req {
  int32_t slot;
  Tokens tokens;         // prompt + generated so far
  int64_t computed = 0;  // tokens whose KV is written (== num_tokens(slot) in this workload)
};

class KvStress : public ::testing::TestWithParam<StressParams> {
 protected:
  void SetUp() override {
    const StressParams& p = GetParam();
    ps_ = p.page_size;
    rng_.seed(p.seed);
    cfg_.num_pages = 24;
    cfg_.page_size = ps_;
    cfg_.max_requests = 6;
    cfg_.max_pages_per_request = 12;
    cfg_.enable_radix_cache = p.radix;
    cfg_.num_reserved_pages = p.reserved;
    kv_ = std::make_unique<KvCacheManager>(cfg_);
    content_.assign(static_cast<size_t>(cfg_.num_pages), Tokens{});
    for (int i = 0; i < 5; ++i) system_prompts_.push_back(random_tokens(rand_int(0, 5 * ps_)));
  }

  int64_t rand_int(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng_); }
  Tokens random_tokens(int64_t n) {
    Tokens t(static_cast<size_t>(n));
    for (auto& x : t) x = static_cast<int32_t>(rand_int(0, 3));  // tiny vocabulary: accidental sharing
    return t;
  }
  Tokens new_prompt() {
    Tokens t;
    if (!history_.empty() && chance(0.25)) {
      t = history_[static_cast<size_t>(rand_int(0, static_cast<int64_t>(history_.size()) - 1))];
      if (chance(0.5)) {
        Tokens more = random_tokens(rand_int(1, 2 * ps_));
        t.insert(t.end(), more.begin(), more.end());
      }
    } else {
      t = system_prompts_[static_cast<size_t>(rand_int(0, 4))];
      Tokens suffix = random_tokens(rand_int(1, 3 * ps_));
      t.insert(t.end(), suffix.begin(), suffix.end());
    }
    if (static_cast<int64_t>(t.size()) > kv_->max_tokens_per_request() - 4)
      t.resize(static_cast<size_t>(kv_->max_tokens_per_request() - 4));
    history_.push_back(t);
    return t;
  }

  // Longest page-aligned cached prefix of tokens[0, len - 1), per the shadow.
  std::vector<int32_t> expected_prefix(const Tokens& t) const {
    std::vector<int32_t> pages;
    for (size_t i = 1; i * static_cast<size_t>(ps_) + 1 <= t.size(); ++i) {
      auto it = shadow_.find(Tokens(t.begin(), t.begin() + static_cast<long>(i * static_cast<size_t>(ps_))));
      if (it == shadow_.end()) break;
      pages.push_back(it->second);
    }
    return pages;
  }
  // What the tree must hold after the request's first n tokens are inserted (first writer wins).
  void shadow_insert(const Req& r, int64_t n) {
    if (!cfg_.enable_radix_cache) return;
    const auto table = kv_->page_table(r.slot);
    for (int64_t j = 0; (j + 1) * ps_ <= n; ++j)
      shadow_.emplace(Tokens(r.tokens.begin(), r.tokens.begin() + (j + 1) * ps_), table[static_cast<size_t>(j)]);
  }
  void prune_evicted() {
    for (auto it = shadow_.begin(); it != shadow_.end();)
      it = kv_->radix().is_cached(it->second) ? std::next(it) : shadow_.erase(it);
  }
  // The forward pass: writes KV of tokens [from, to) into the request's pages.
  void write_kv(const Req& r, int64_t from, int64_t to) {
    const auto table = kv_->page_table(r.slot);
    for (int64_t j = from / ps_; j * ps_ < to; ++j) {
      const int32_t p = table[static_cast<size_t>(j)];
      ASSERT_FALSE(kv_->radix().is_cached(p)) << "a forward would overwrite cached page " << p;
      content_[static_cast<size_t>(p)] = Tokens(r.tokens.begin(), r.tokens.begin() + std::min((j + 1) * ps_, to));
    }
  }

  void check_all(int step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const KvAccounting acc = kv_->accounting();
    Status s = kv_->check();
    ASSERT_TRUE(s.has_value()) << s.error().message();
    s = kv_->audit();
    ASSERT_TRUE(s.has_value()) << s.error().message();
    ASSERT_EQ(acc.total, cfg_.num_pages - cfg_.num_reserved_pages);
    ASSERT_EQ(acc.cached, static_cast<int64_t>(shadow_.size()));  // tree == shadow, both ways:
    for (const auto& [key, page] : shadow_) {
      ASSERT_TRUE(kv_->radix().is_cached(page));
      ASSERT_EQ(content_[static_cast<size_t>(page)], key) << "cached page " << page << " holds other tokens";
    }
    int64_t own = 0;
    for (const Req& r : reqs_) {
      ASSERT_EQ(kv_->num_tokens(r.slot), r.computed);
      const auto table = kv_->page_table(r.slot);
      own += static_cast<int64_t>(table.size()) - kv_->cached_pages(r.slot);
      for (int64_t j = 0; j * ps_ < r.computed; ++j) {
        const Tokens want(r.tokens.begin(), r.tokens.begin() + std::min((j + 1) * ps_, r.computed));
        ASSERT_EQ(content_[static_cast<size_t>(table[static_cast<size_t>(j)])], want)
            << "slot " << r.slot << " page " << j << " does not hold its tokens";
      }
    }
    ASSERT_EQ(acc.in_requests, own);
  }

  size_t pick(bool (*pred)(const Req&, int64_t), int64_t cap) {
    std::vector<size_t> ok;
    for (size_t i = 0; i < reqs_.size(); ++i)
      if (pred(reqs_[i], cap)) ok.push_back(i);
    if (ok.empty()) return reqs_.size();
    return ok[static_cast<size_t>(rand_int(0, static_cast<int64_t>(ok.size()) - 1))];
  }
  void drop(size_t i) { reqs_.erase(reqs_.begin() + static_cast<long>(i)); }

  // Reserves n more tokens for request i and "computes" them. On out-of-memory checks nothing
  // changed and retracts the request half of the time, as a scheduler would.
  void extend_and_compute(size_t i, int64_t n) {
    Req& r = reqs_[i];
    const int64_t need = kv_->pages_needed(r.slot, n);
    const bool fits = need <= kv_->available_pages();
    const KvAccounting before = kv_->accounting();
    auto pages = kv_->extend(r.slot, n);
    ASSERT_EQ(pages.has_value(), fits);
    if (!pages) {
      ++stats_.oom;
      const KvAccounting after = kv_->accounting();
      ASSERT_EQ(after.free, before.free);
      ASSERT_EQ(after.cached, before.cached);
      if (chance(0.5)) {
        kv_->retract(r.slot);
        drop(i);
      }
      return;
    }
    ASSERT_EQ(static_cast<int64_t>(pages->size()), need);
    if (kv_->accounting().cached < before.cached) ++stats_.evictions;
    prune_evicted();
    write_kv(r, r.computed, r.computed + n);
    r.computed += n;
  }

  void step(int i) {
    const int op = static_cast<int>(rand_int(0, 19));
    const int64_t cap = kv_->max_tokens_per_request();
    if (op < 4) {  // admit
      Tokens t = new_prompt();
      const std::vector<int32_t> want = expected_prefix(t);
      const bool slot_free = kv_->free_slots() > 0;
      auto a = kv_->admit(t);
      ASSERT_EQ(a.has_value(), slot_free);
      if (!a) return;
      ASSERT_EQ(a->cached_tokens, static_cast<int64_t>(want.size()) * ps_);
      const auto table = kv_->page_table(a->slot);
      ASSERT_EQ(std::vector<int32_t>(table.begin(), table.end()), want);
      if (a->cached_tokens > 0) ++stats_.prefix_hits;
      reqs_.push_back(Req{a->slot, std::move(t), a->cached_tokens});
    } else if (op < 8) {  // prefill chunk
      const size_t k = pick([](const Req& r, int64_t) { return r.computed < static_cast<int64_t>(r.tokens.size()); }, cap);
      if (k == reqs_.size()) return;
      const int64_t remaining = static_cast<int64_t>(reqs_[k].tokens.size()) - reqs_[k].computed;
      extend_and_compute(k, rand_int(1, remaining));
    } else if (op < 12) {  // decode: sample a token, then compute its KV
      const size_t k = pick([](const Req& r, int64_t c) {
        return r.computed == static_cast<int64_t>(r.tokens.size()) && r.computed < c;
      }, cap);
      if (k == reqs_.size()) return;
      reqs_[k].tokens.push_back(static_cast<int32_t>(rand_int(0, 3)));
      extend_and_compute(k, 1);
    } else if (op < 14) {  // cache an unfinished request
      const size_t k = pick([](const Req& r, int64_t) { return r.computed > 0; }, cap);
      if (k == reqs_.size()) return;
      Req& r = reqs_[k];
      const int64_t old_cached = kv_->cached_tokens(r.slot);
      const auto before = kv_->page_table(r.slot);
      const std::vector<int32_t> table_before(before.begin(), before.end());
      shadow_insert(r, r.computed);
      const int64_t got = kv_->cache_prefix(r.slot, std::span<const int32_t>(r.tokens).first(static_cast<size_t>(r.computed)));
      const int64_t want = cfg_.enable_radix_cache ? std::max(old_cached, r.computed / ps_ * ps_) : 0;
      ASSERT_EQ(got, want);
      ASSERT_EQ(kv_->cached_tokens(r.slot), want);
      const auto after = kv_->page_table(r.slot);
      if (std::vector<int32_t>(after.begin(), after.end()) != table_before) ++stats_.swaps;
    } else if (op < 17) {  // finish
      const size_t k = pick([](const Req& r, int64_t) { return r.computed > 0; }, cap);
      if (k == reqs_.size()) return;
      const Req& r = reqs_[k];
      const int64_t n = chance(0.8) ? r.computed : rand_int(0, r.computed);
      const bool cache_it = chance(0.85);
      if (cache_it) shadow_insert(r, n);
      kv_->finish(r.slot, std::span<const int32_t>(r.tokens).first(static_cast<size_t>(n)), cache_it);
      drop(k);
    } else if (op < 18) {  // retract
      if (reqs_.empty()) return;
      const size_t k = static_cast<size_t>(rand_int(0, static_cast<int64_t>(reqs_.size()) - 1));
      kv_->retract(reqs_[k].slot);
      drop(k);
    } else if (op < 19) {  // probe the prefix length an admission policy would see
      const Tokens t = new_prompt();
      ASSERT_EQ(kv_->prefix_tokens(t), static_cast<int64_t>(expected_prefix(t).size()) * ps_);
    } else if (chance(0.3)) {  // flush
      const bool can = kv_->radix().protected_pages() == 0;
      Status s = kv_->flush();
      ASSERT_EQ(s.has_value(), can);
      if (can) {
        shadow_.clear();
        ++stats_.flushes;
      } else {
        ++stats_.flush_refused;
      }
    }
    (void)i;
  }

  int32_t ps_ = 1;
  std::mt19937 rng_;
  KvCacheConfig cfg_;
  std::unique_ptr<KvCacheManager> kv_;
  std::vector<Tokens> content_;
  std::map<Tokens, int32_t> shadow_;
  std::vector<Tokens> system_prompts_, history_;
  std::vector<Req> reqs_;
  struct {
    int prefix_hits = 0, evictions = 0, oom = 0, swaps = 0, flushes = 0, flush_refused = 0;
  } stats_;
};

TEST_P(KvStress, RandomWorkloadKeepsEveryPageAccountedOnce) {
  for (int i = 0; i < 20000; ++i) {
    ASSERT_NO_FATAL_FAILURE(step(i));
    ASSERT_NO_FATAL_FAILURE(check_all(i));
  }
  // Drain: every request leaves, then a flush must return every page.
  while (!reqs_.empty()) {
    if (reqs_.back().computed > 0 && chance(0.5)) {
      shadow_insert(reqs_.back(), reqs_.back().computed);
      kv_->finish(reqs_.back().slot,
                  std::span<const int32_t>(reqs_.back().tokens).first(static_cast<size_t>(reqs_.back().computed)));
    } else {
      kv_->retract(reqs_.back().slot);
    }
    reqs_.pop_back();
    ASSERT_NO_FATAL_FAILURE(check_all(-1));
  }
  Status s = kv_->flush();
  ASSERT_TRUE(s.has_value()) << s.error().message();
  shadow_.clear();
  ASSERT_NO_FATAL_FAILURE(check_all(-2));
  const KvAccounting acc = kv_->accounting();
  EXPECT_EQ(acc.free, acc.total);
  EXPECT_EQ(kv_->free_slots(), cfg_.max_requests);

  // The workload must really have exercised what it claims to test.
  EXPECT_GT(stats_.oom, 0);
  EXPECT_GT(stats_.flushes, 0);
  if (cfg_.enable_radix_cache) {
    EXPECT_GT(stats_.prefix_hits, 50);
    EXPECT_GT(stats_.evictions, 10);
    EXPECT_GT(stats_.swaps, 0);
    EXPECT_GT(stats_.flush_refused, 0);
  }
  std::printf("[ stats    ] prefix_hits=%d evictions=%d oom=%d swaps=%d flushes=%d flush_refused=%d\n",
              stats_.prefix_hits, stats_.evictions, stats_.oom, stats_.swaps, stats_.flushes, stats_.flush_refused);
}

INSTANTIATE_TEST_SUITE_P(Workloads, KvStress,
                         ::testing::Values(StressParams{1, true, 0, 1}, StressParams{1, true, 0, 2},
                                           StressParams{4, true, 0, 3}, StressParams{4, true, 1, 4},
                                           StressParams{3, true, 2, 5}, StressParams{1, false, 0, 6},
                                           StressParams{4, false, 1, 7}),
                         [](const auto& info) {
                           return "page" + std::to_string(info.param.page_size) +
                                  (info.param.radix ? "_radix" : "_noradix") + "_seed" + std::to_string(info.param.seed);
                         });

}  // namespace
}  // namespace pdserve::cache
