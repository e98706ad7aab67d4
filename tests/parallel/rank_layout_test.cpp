#include "parallel/rank_layout.h"

#include <gtest/gtest.h>

namespace pdserve::parallel {
namespace {

using Groups = std::vector<std::vector<int>>;

TEST(RankLayout, DpAttentionWithDeepEpIsOneReplicaOfFullyDataParallelAttention) {
  ParallelConfig cfg;
  cfg.tp_size = 4;
  cfg.dp_size = 4;
  cfg.enable_dp_attention = true;
  cfg.moe_a2a_backend = MoeA2aBackend::kDeepEp;  // ep_size left at 1: forced to 4 as SGLang does
  auto layout = RankLayout::create(cfg);
  ASSERT_TRUE(layout) << layout.error().message();
  EXPECT_EQ(layout->world_size(), 4);
  EXPECT_EQ(layout->config().ep_size, 4);
  ASSERT_EQ(layout->notes().size(), 1u);
  EXPECT_NE(layout->notes()[0].find("expert parallel size is adjusted"), std::string::npos);
  for (int r = 0; r < 4; ++r) {
    const RankInfo& i = layout->rank(r);
    EXPECT_EQ(i.tp_rank, r);
    EXPECT_EQ(i.dp_rank, r);
    EXPECT_EQ(i.attn_tp_size, 1);
    EXPECT_EQ(i.attn_tp_rank, 0);
    EXPECT_EQ(i.moe_ep_rank, r);
    EXPECT_EQ(i.moe_ep_size, 4);
    EXPECT_EQ(log::format_prefix(i.log_prefix()), fmt::format(" DP{0} TP{0} EP{0}", r));
  }
  EXPECT_EQ(layout->attn_tp_groups(), (Groups{{0}, {1}, {2}, {3}}));
  EXPECT_EQ(layout->ep_groups(), (Groups{{0, 1, 2, 3}}));
  EXPECT_EQ(layout->tp_groups(), (Groups{{0, 1, 2, 3}}));
}

TEST(RankLayout, PartialDpAttentionShardsAttentionOverTpOverDpRanks) {
  ParallelConfig cfg;
  cfg.tp_size = 8;
  cfg.dp_size = 2;
  cfg.ep_size = 8;
  cfg.enable_dp_attention = true;
  auto layout = RankLayout::create(cfg);
  ASSERT_TRUE(layout) << layout.error().message();
  EXPECT_EQ(layout->rank(5).dp_rank, 1);
  EXPECT_EQ(layout->rank(5).attn_tp_rank, 1);
  EXPECT_EQ(layout->rank(5).attn_tp_size, 4);
  EXPECT_EQ(layout->attn_tp_groups(), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_TRUE(layout->notes().empty());
}

TEST(RankLayout, EpSmallerThanTpGroupsRanksWithTheSameMoeTpRank) {
  ParallelConfig cfg;
  cfg.tp_size = 4;
  cfg.ep_size = 2;
  auto layout = RankLayout::create(cfg);
  ASSERT_TRUE(layout) << layout.error().message();
  EXPECT_EQ(layout->rank(3).moe_tp_size, 2);
  EXPECT_EQ(layout->rank(3).moe_tp_rank, 1);
  EXPECT_EQ(layout->rank(3).moe_ep_rank, 1);
  EXPECT_FALSE(layout->rank(3).dp_rank.has_value());
  EXPECT_EQ(log::format_prefix(layout->rank(3).log_prefix()), " TP3 EP1");
  EXPECT_EQ(layout->ep_groups(), (Groups{{0, 2}, {1, 3}}));
}

TEST(RankLayout, DpWithoutDpAttentionMeansReplicas) {
  ParallelConfig cfg;
  cfg.tp_size = 2;
  cfg.dp_size = 2;
  auto layout = RankLayout::create(cfg);
  ASSERT_TRUE(layout) << layout.error().message();
  EXPECT_EQ(layout->world_size(), 4);
  EXPECT_EQ(layout->rank(2).dp_rank, 1);
  EXPECT_EQ(layout->rank(2).tp_rank, 0);
  EXPECT_EQ(layout->tp_groups(), (Groups{{0, 1}, {2, 3}}));
  EXPECT_EQ(layout->attn_tp_groups(), (Groups{{0, 1}, {2, 3}}));
}

TEST(RankLayout, SingleRankHasNoPrefix) {
  auto layout = RankLayout::create({});
  ASSERT_TRUE(layout);
  EXPECT_EQ(layout->world_size(), 1);
  EXPECT_EQ(log::format_prefix(layout->rank(0).log_prefix()), "");
}

TEST(RankLayout, RejectsWhatSglangRejects) {
  auto expect_error = [](ParallelConfig cfg, const std::string& needle) {
    auto l = RankLayout::create(cfg);
    ASSERT_FALSE(l) << needle;
    EXPECT_EQ(l.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(l.error().message().find(needle), std::string::npos) << l.error().message();
  };
  ParallelConfig c;
  c.tp_size = 4;
  c.dp_size = 3;
  c.enable_dp_attention = true;
  expect_error(c, "divisible by --dp-size");
  c = {};
  c.tp_size = 4;
  c.ep_size = 3;
  expect_error(c, "divisible by --ep-size");
  c = {};
  c.enable_dp_lm_head = true;
  expect_error(c, "--enable-dp-lm-head requires");
  c = {};
  c.moe_dense_tp_size = 2;
  expect_error(c, "supports only 1");
  c = {};
  c.tp_size = 0;
  expect_error(c, "--tp-size must be >= 1");
}

TEST(RankLayout, FlagParsersAndAutoMode) {
  EXPECT_EQ(*parse_moe_a2a_backend("deepep"), MoeA2aBackend::kDeepEp);
  EXPECT_EQ(*parse_moe_a2a_backend("none"), MoeA2aBackend::kNone);
  EXPECT_EQ(parse_moe_a2a_backend("mooncake").error().code(), ErrorCode::kUnsupported);
  EXPECT_EQ(parse_moe_a2a_backend("nccl").error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(*parse_deepep_mode("low_latency"), DeepEpMode::kLowLatency);
  EXPECT_FALSE(parse_deepep_mode("fast"));
  EXPECT_EQ(resolve_deepep_mode(DeepEpMode::kAuto, true), DeepEpMode::kNormal);
  EXPECT_EQ(resolve_deepep_mode(DeepEpMode::kAuto, false), DeepEpMode::kLowLatency);
  EXPECT_EQ(resolve_deepep_mode(DeepEpMode::kNormal, false), DeepEpMode::kNormal);
}

}  // namespace
}  // namespace pdserve::parallel
