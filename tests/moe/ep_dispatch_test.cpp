#include "moe/ep_dispatch.h"

#include <cmath>
#include <limits>
#include <tuple>

#include <gtest/gtest.h>

#include "base/clock.h"
#include "moe/ep_dispatch_low_latency.h"
#include "moe/ep_test_util.h"

namespace pdserve::moe {
namespace {

using testing::Routing;

constexpr int64_t kE = 32, kK = 4, kH = 16;

enum class Kind { kRandom, kHoles, kAllToRankZero };

// Rank r's batch in a scenario: a pure function of (r, step, kind), so every rank can compute what
// every other rank sends. Ranks 1 and (for R >= 4) 3 are idle: zero tokens.
Routing scenario(int r, int ranks, int step, Kind kind) {
  const int64_t T = (r == 1 || (ranks >= 4 && r == 3)) ? 0 : 3 + 5 * r + step;
  std::vector<int32_t> allowed;
  if (kind == Kind::kAllToRankZero)
    for (int32_t e = 0; e < kE / ranks; ++e) allowed.push_back(e);
  return testing::random_routing(T, kH, kK, kE, 1000 * static_cast<uint64_t>(r) + 17 * static_cast<uint64_t>(step) + static_cast<uint64_t>(kind),
                                 kind == Kind::kHoles, allowed);
}

// out[t] = sum_j w * (id + 1) * x[t]: what combine must give when expert e multiplies by (e + 1).
std::vector<double> expected_out(const Routing& m) {
  const int64_t T = m.x.size(0);
  std::vector<double> want(static_cast<size_t>(T * kH), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    double scale = 0.0;
    for (int64_t j = 0; j < kK; ++j) {
      const int32_t e = m.ids.data<int32_t>()[t * kK + j];
      if (e >= 0) scale += static_cast<double>(m.weights.data<float>()[t * kK + j]) * (e + 1);
    }
    for (int64_t c = 0; c < kH; ++c) want[static_cast<size_t>(t * kH + c)] = scale * m.x.data<float>()[t * kH + c];
  }
  return want;
}

bool row_equal(const float* a, const float* b) { return std::equal(a, a + kH, b); }

std::string case_name(int ranks, Kind kind) {
  const char* k = kind == Kind::kRandom ? "random" : kind == Kind::kHoles ? "holes" : "all_to_rank0";
  return "ep" + std::to_string(ranks) + "_" + k;
}

class EpExchange : public ::testing::TestWithParam<std::tuple<int, Kind>> {};

TEST_P(EpExchange, NormalModeDeliversEachTokenOncePerRankAndCombinesBack) {
  const auto [R, kind] = GetParam();
  testing::run_ranks_ok(R, [&, R = R, kind = kind](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
    const int me = info.moe_ep_rank;
    const EpGeometry geo{kE, R, me};
    const int64_t G = geo.local_experts(), first = geo.first_local_expert();
    NormalDispatcher dispatcher(geo);
    for (int step = 0; step < 3; ++step) {  // buffers are reused: stale rows must not leak through
      Routing mine = scenario(me, R, step, kind);
      PDSERVE_ASSIGN_OR_RETURN(NormalDispatchResult d, dispatcher.dispatch(*comms.ep, mine.x, mine.ids, mine.weights));

      // Direct computation: by source rank, then token order, every token with an expert here.
      int64_t row = 0;
      std::vector<int64_t> per_expert(static_cast<size_t>(G), 0);
      for (int s = 0; s < R; ++s) {
        Routing theirs = scenario(s, R, step, kind);
        for (int64_t t = 0; t < theirs.x.size(0); ++t) {
          bool here = false;
          for (int64_t j = 0; j < kK; ++j) {
            const int32_t e = theirs.ids.data<int32_t>()[t * kK + j];
            here |= e >= first && e < first + G;
          }
          if (!here) continue;
          EXPECT_TRUE(row_equal(d.recv_x.data<float>() + row * kH, theirs.x.data<float>() + t * kH)) << "row " << row;
          for (int64_t j = 0; j < kK; ++j) {
            const int32_t e = theirs.ids.data<int32_t>()[t * kK + j];
            const bool local = e >= first && e < first + G;
            EXPECT_EQ(d.recv_topk_idx.data<int32_t>()[row * kK + j], local ? e - first : -1);
            EXPECT_EQ(d.recv_topk_weights.data<float>()[row * kK + j], local ? theirs.weights.data<float>()[t * kK + j] : 0.0f);
            if (local) ++per_expert[static_cast<size_t>(e - first)];
          }
          ++row;
        }
      }
      EXPECT_EQ(d.recv_x.size(0), row);
      EXPECT_EQ(d.recv_tokens_per_expert, per_expert);

      // Contiguous layout, segments padded to 4 rows; each row is its token, padding rows are 0.
      const ContiguousLayout layout = contiguous_layout(d.recv_tokens_per_expert, 4);
      struct {
        Tensor x, slots;
        std::vector<int64_t> offsets;
      } c{Tensor::empty({layout.rows(), kH}, DType::kF32), Tensor::empty(d.recv_topk_idx.shape(), DType::kI32), layout.offsets};
      for (int64_t i = 0; i < c.x.numel(); ++i) c.x.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();  // stale
      to_contiguous(d, layout, c.x, c.slots);
      for (int64_t g = 0; g < G; ++g)
        EXPECT_EQ(c.offsets[static_cast<size_t>(g + 1)] - c.offsets[static_cast<size_t>(g)], (per_expert[static_cast<size_t>(g)] + 3) / 4 * 4);
      std::vector<char> used(static_cast<size_t>(c.x.size(0)), 0);
      for (int64_t i = 0; i < d.recv_x.size(0); ++i)
        for (int64_t j = 0; j < kK; ++j) {
          const int32_t g = d.recv_topk_idx.data<int32_t>()[i * kK + j], slot = c.slots.data<int32_t>()[i * kK + j];
          if (g < 0) {
            EXPECT_EQ(slot, -1);
            continue;
          }
          EXPECT_GE(slot, c.offsets[static_cast<size_t>(g)]);
          EXPECT_LT(slot, c.offsets[static_cast<size_t>(g + 1)]);
          EXPECT_TRUE(row_equal(c.x.data<float>() + slot * kH, d.recv_x.data<float>() + i * kH));
          used[static_cast<size_t>(slot)] = 1;
        }
      for (int64_t s = 0; s < c.x.size(0); ++s) {
        if (used[static_cast<size_t>(s)]) continue;
        for (int64_t k = 0; k < kH; ++k) EXPECT_EQ(c.x.data<float>()[s * kH + k], 0.0f);
      }

      // Expert g multiplies by its global id + 1.
      Tensor y = c.x.clone();
      for (int64_t g = 0; g < G; ++g)
        for (int64_t s = c.offsets[static_cast<size_t>(g)]; s < c.offsets[static_cast<size_t>(g + 1)]; ++s)
          for (int64_t k = 0; k < kH; ++k) y.data<float>()[s * kH + k] *= static_cast<float>(first + g + 1);
      Tensor partial = Tensor::empty(d.recv_x.shape(), DType::kF32);
      for (int64_t i = 0; i < partial.numel(); ++i) partial.data<float>()[i] = 1e30f;  // overwritten, not added to
      weighted_sum(y, c.slots, d, partial);
      Tensor out = Tensor::empty(mine.x.shape(), DType::kF32);
      PDSERVE_RETURN_IF_ERROR(dispatcher.combine(*comms.ep, d.handle, partial, out));
      EXPECT_LT(testing::rel_err(out, expected_out(mine)), 1e-6) << "rank " << me << " step " << step;
    }
    return ok_status();
  });
}

TEST_P(EpExchange, LowLatencyModeFillsFixedSlabsAndCombinesWithWeights) {
  const auto [R, kind] = GetParam();
  constexpr int64_t kMax = 64;
  testing::run_ranks_ok(R, [&, R = R, kind = kind](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
    const int me = info.moe_ep_rank;
    const EpGeometry geo{kE, R, me};
    const int64_t G = geo.local_experts(), first = geo.first_local_expert(), slab = R * kMax;
    PDSERVE_ASSIGN_OR_RETURN(LowLatencyDispatcher ll, LowLatencyDispatcher::create(geo, kH, kMax));
    EXPECT_EQ(ll.recv_x().shape(), (Shape{G, slab, kH}));
    for (int step = 0; step < 3; ++step) {  // buffers are reused: stale rows must not leak through
      Routing mine = scenario(me, R, step, kind);
      PDSERVE_RETURN_IF_ERROR(ll.dispatch(*comms.ep, mine.x, mine.ids));
      for (int64_t g = 0; g < G; ++g) {
        int64_t row = 0;
        for (int s = 0; s < R; ++s) {
          Routing theirs = scenario(s, R, step, kind);
          for (int64_t t = 0; t < theirs.x.size(0); ++t)
            for (int64_t j = 0; j < kK; ++j)
              if (theirs.ids.data<int32_t>()[t * kK + j] == first + g) {
                EXPECT_TRUE(row_equal(ll.recv_x().data<float>() + (g * slab + row) * kH, theirs.x.data<float>() + t * kH));
                ++row;
              }
        }
        EXPECT_EQ(ll.recv_count().data<int32_t>()[g], row) << "expert " << first + g;
      }
      // Unweighted expert outputs; rows past the counts are NaN to prove combine never reads them.
      Tensor y = Tensor::empty(ll.recv_x().shape(), DType::kF32);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t s = 0; s < slab; ++s)
          for (int64_t k = 0; k < kH; ++k)
            y.data<float>()[(g * slab + s) * kH + k] = s < ll.recv_count().data<int32_t>()[g]
                                                           ? ll.recv_x().data<float>()[(g * slab + s) * kH + k] * static_cast<float>(first + g + 1)
                                                           : std::numeric_limits<float>::quiet_NaN();
      Tensor out = Tensor::empty(mine.x.shape(), DType::kF32);
      PDSERVE_RETURN_IF_ERROR(ll.combine(*comms.ep, y, mine.weights, out));
      EXPECT_LT(testing::rel_err(out, expected_out(mine)), 1e-6) << "rank " << me << " step " << step;
    }
    return ok_status();
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, EpExchange,
                         ::testing::Combine(::testing::Values(1, 2, 4, 8),
                                            ::testing::Values(Kind::kRandom, Kind::kHoles, Kind::kAllToRankZero)),
                         [](const auto& p) { return case_name(std::get<0>(p.param), std::get<1>(p.param)); });

TEST(EpDispatch, LayoutCountsTokensPerRankOncePerRankAndPerExpert) {
  Tensor ids = Tensor::empty({3, 2}, DType::kI32);
  const int32_t v[] = {0, 1,    // both on rank 0
                       5, -1,   // rank 2, one hole
                       2, 7};   // ranks 1 and 3
  std::copy(v, v + 6, ids.data<int32_t>());
  auto l = get_dispatch_layout(ids, EpGeometry{8, 4, 0});
  ASSERT_TRUE(l) << l.error().message();
  EXPECT_EQ(l->tokens_per_rank, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(l->tokens_per_expert, (std::vector<int64_t>{1, 1, 1, 0, 0, 1, 0, 1}));
  EXPECT_EQ(l->token_in_rank, (std::vector<uint8_t>{1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1}));
  ids.data<int32_t>()[0] = 8;
  EXPECT_FALSE(get_dispatch_layout(ids, EpGeometry{8, 4, 0}));
  EXPECT_FALSE(get_dispatch_layout(ids, EpGeometry{6, 4, 0}));  // 6 experts do not split over 4 ranks
}

TEST(EpDispatch, TooManyTokensForTheLowLatencyBufferIsAnErrorThatReleasesThePeers) {
  Stopwatch sw;
  parallel::LocalWorld world(testing::ep_layout(4), parallel::CollectiveOptions{std::chrono::seconds(60)});
  auto st = world.run([&](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
    const EpGeometry geo{kE, 4, info.moe_ep_rank};
    PDSERVE_ASSIGN_OR_RETURN(LowLatencyDispatcher ll, LowLatencyDispatcher::create(geo, kH, 8));
    Routing mine = testing::random_routing(info.moe_ep_rank == 2 ? 9 : 8, kH, kK, kE, 5);
    return ll.dispatch(*comms.ep, mine.x, mine.ids);
  });
  EXPECT_LT(sw.seconds(), 10.0);
  ASSERT_FALSE(st[2].has_value());
  EXPECT_NE(st[2].error().message().find("SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"), std::string::npos)
      << st[2].error().message();
  for (const auto& s : st) EXPECT_FALSE(s.has_value());
}

TEST(EpDispatch, ARankThatDiesBetweenDispatchAndCombineIsNamedWithinTheTimeout) {
  Stopwatch sw;
  parallel::LocalWorld world(testing::ep_layout(4), parallel::CollectiveOptions{std::chrono::milliseconds(300)});
  std::vector<Status> st = world.run([&](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
    const EpGeometry geo{kE, 4, info.moe_ep_rank};
    NormalDispatcher dispatcher(geo);
    Routing mine = testing::random_routing(6, kH, kK, kE, static_cast<uint64_t>(info.global_rank));
    PDSERVE_ASSIGN_OR_RETURN(NormalDispatchResult d, dispatcher.dispatch(*comms.ep, mine.x, mine.ids, mine.weights));
    if (info.global_rank == 3) return ok_status();  // "killed": never reaches combine, reports nothing
    Tensor out = Tensor::empty(mine.x.shape(), DType::kF32);
    return dispatcher.combine(*comms.ep, d.handle, d.recv_x, out);
  });
  EXPECT_LT(sw.seconds(), 5.0);
  EXPECT_TRUE(st[3].has_value());
  for (int r = 0; r < 3; ++r) {
    ASSERT_FALSE(st[static_cast<size_t>(r)].has_value());
    EXPECT_NE(st[static_cast<size_t>(r)].error().message().find("timed out after 300 ms: rank 3 did not arrive"), std::string::npos)
        << st[static_cast<size_t>(r)].error().message();
  }
}

TEST(EpDispatch, MaxDispatchTokensFollowsSglangsEnvironmentRule) {
  EXPECT_EQ(*parse_max_dispatch_tokens_per_rank(std::nullopt, "X"), 128);
  EXPECT_EQ(*parse_max_dispatch_tokens_per_rank(std::string("256"), "X"), 256);
  EXPECT_EQ(*parse_max_dispatch_tokens_per_rank(std::string("1024"), "X"), 1024);
  for (const char* bad : {"0", "1025", "12x", "", "-5"}) {
    auto r = parse_max_dispatch_tokens_per_rank(std::string(bad), "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK");
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message().find("SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"), std::string::npos);
  }
  ::setenv("SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "64", 1);
  EXPECT_EQ(*max_dispatch_tokens_per_rank_from_env(), 64);
  ::unsetenv("SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK");
  ::setenv("PDSERVE_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "32", 1);
  EXPECT_EQ(*max_dispatch_tokens_per_rank_from_env(), 32);
  ::unsetenv("PDSERVE_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK");
  EXPECT_EQ(*max_dispatch_tokens_per_rank_from_env(), 128);
}

}  // namespace
}  // namespace pdserve::moe
