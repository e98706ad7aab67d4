#include "ops/moe_gate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <stdexcept>

#include "test_util.h"

namespace pdserve::ops {
namespace {

struct Routed {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

// HF 5.17 noaux_tc routing for one token, written plainly (sorting instead of a running top-2).
Routed ref_route(const float* logits, const float* bias, const MoeGateParams& p) {
  const int64_t e = p.n_routed_experts, per = e / p.n_group;
  std::vector<double> s(e), sc(e);
  for (int64_t j = 0; j < e; ++j) {
    s[j] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[j])));
    sc[j] = s[j] + (bias ? bias[j] : 0.0);
  }
  std::vector<std::pair<double, int64_t>> groups;
  for (int64_t g = 0; g < p.n_group; ++g) {
    std::vector<double> v(sc.begin() + g * per, sc.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    groups.push_back({-(v[0] + v[1]), g});
  }
  std::sort(groups.begin(), groups.end());
  std::vector<std::pair<double, int32_t>> cand;
  for (int64_t k = 0; k < p.topk_group; ++k)
    for (int64_t j = groups[k].second * per; j < (groups[k].second + 1) * per; ++j)
      cand.push_back({-sc[j], static_cast<int32_t>(j)});
  std::sort(cand.begin(), cand.end());
  Routed r;
  double sum = 0.0;
  for (int64_t k = 0; k < p.top_k; ++k) {
    r.ids.push_back(cand[k].second);
    r.weights.push_back(s[cand[k].second]);
    sum += s[cand[k].second];
  }
  for (double& w : r.weights) w = (p.norm_topk_prob ? w / (sum + 1e-20) : w) * p.routed_scaling_factor;
  return r;
}

struct GateOut {
  Tensor ids, weights;
};

GateOut run_gate(const Tensor& logits, const Tensor& bias, const MoeGateParams& p) {
  GateOut o{Tensor::empty({logits.size(0), p.top_k}, DType::kI32), Tensor::empty({logits.size(0), p.top_k}, DType::kF32)};
  moe_gate(logits, bias, p, o.ids, o.weights);
  return o;
}

Tensor row(const std::vector<float>& v) {
  Tensor t = Tensor::empty({1, static_cast<int64_t>(v.size())}, DType::kF32);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

float logit(double prob) { return static_cast<float>(std::log(prob / (1.0 - prob))); }

TEST(MoeGate, MatchesDirectFormulaOnRandomTokens) {
  std::mt19937_64 rng(31);
  MoeGateParams v3;  // 256 experts, 8 groups, 4 kept, top 8
  MoeGateParams tiny{16, 4, 2, 4, true, 2.5f};
  MoeGateParams unnormed{64, 8, 3, 6, false, 1.5f};
  for (const MoeGateParams& p : {v3, tiny, unnormed}) {
    // Wide logits keep scores well separated, so f32 vs double never flips a choice.
    Tensor logits = testing::rand_f32({37, p.n_routed_experts}, rng, -4.0f, 4.0f);
    Tensor bias = testing::rand_f32({p.n_routed_experts}, rng, -0.5f, 0.5f);
    for (bool with_bias : {true, false}) {
      GateOut o = run_gate(logits, with_bias ? bias : Tensor(), p);
      for (int64_t t = 0; t < logits.size(0); ++t) {
        const Routed r = ref_route(logits.data<float>() + t * p.n_routed_experts,
                                   with_bias ? bias.data<float>() : nullptr, p);
        for (int64_t k = 0; k < p.top_k; ++k) {
          ASSERT_EQ(o.ids.data<int32_t>()[t * p.top_k + k], r.ids[k]) << "token " << t << " slot " << k;
          EXPECT_NEAR(o.weights.data<float>()[t * p.top_k + k], r.weights[k], 1e-6 * p.routed_scaling_factor);
        }
      }
    }
  }
}

TEST(MoeGate, GroupWithSingleBestExpertButLowTop2SumIsDropped) {
  // 8 experts, 4 groups of 2, keep 2 groups, pick 2 experts.
  MoeGateParams p{8, 4, 2, 2, true, 1.0f};
  // Group 0 holds the best single expert (0.99) but its pair sums to 1.00; groups 1 and 2 sum to
  // 1.4 and 1.2; group 3 to 0.2. A flat top-2 would pick expert 0; group routing must not.
  Tensor logits = row({logit(0.99), logit(0.01), logit(0.7), logit(0.7), logit(0.6), logit(0.6), logit(0.1),
                       logit(0.1)});
  GateOut o = run_gate(logits, Tensor(), p);
  EXPECT_EQ(o.ids.data<int32_t>()[0], 2);
  EXPECT_EQ(o.ids.data<int32_t>()[1], 3);  // tie with expert 2 broken by lower id first
  EXPECT_NEAR(o.weights.data<float>()[0], 0.5f, 1e-6);
  EXPECT_NEAR(o.weights.data<float>()[1], 0.5f, 1e-6);
}

TEST(MoeGate, NegativeBiasUsesMinusInfinityMask) {
  // Kept groups have negative selection scores; a 0.0 mask (HF 4.5x) would then prefer experts of
  // dropped groups, the -inf mask (HF 5.17) never does.
  MoeGateParams p{8, 4, 1, 2, true, 2.5f};
  std::vector<float> lg(8, logit(0.5));
  lg[4] = logit(0.9);
  lg[5] = logit(0.8);
  std::vector<float> b = {-2.0f, -2.0f, -3.0f, -3.0f, -1.5f, -1.5f, -2.5f, -2.5f};
  Tensor bias = Tensor::empty({8}, DType::kF32);
  std::copy(b.begin(), b.end(), bias.data<float>());
  GateOut o = run_gate(row(lg), bias, p);
  // Only group 2 (experts 4, 5) is kept; both its selection scores are < 0.
  EXPECT_EQ(o.ids.data<int32_t>()[0], 4);
  EXPECT_EQ(o.ids.data<int32_t>()[1], 5);
  // Weights come from the un-biased sigmoid: 0.9 and 0.8, normalised, times 2.5.
  EXPECT_NEAR(o.weights.data<float>()[0], 0.9 / 1.7 * 2.5, 1e-6);
  EXPECT_NEAR(o.weights.data<float>()[1], 0.8 / 1.7 * 2.5, 1e-6);

  // Now keep two groups and ask for 3 experts: the third must come from the second kept group
  // (score < 0), not from a dropped group whose masked score would be 0 under the old rule.
  MoeGateParams p3{8, 4, 2, 3, true, 2.5f};
  GateOut o3 = run_gate(row(lg), bias, p3);
  std::set<int32_t> ids(o3.ids.data<int32_t>(), o3.ids.data<int32_t>() + 3);
  EXPECT_EQ(ids, (std::set<int32_t>{0, 4, 5}));  // group 0 (sum -3.0) beats group 3 (-4.0), group 1 (-5.0)
}

TEST(MoeGate, TiesResolveToLowerIds) {
  MoeGateParams p{16, 4, 4, 5, true, 1.0f};
  GateOut o = run_gate(row(std::vector<float>(16, 0.3f)), Tensor(), p);
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(o.ids.data<int32_t>()[k], k);
    EXPECT_NEAR(o.weights.data<float>()[k], 0.2f, 1e-7);
  }
}

TEST(MoeGate, RejectsInvalidConfigurations) {
  std::mt19937_64 rng(32);
  Tensor logits = testing::rand_f32({2, 16}, rng);
  Tensor ids = Tensor::empty({2, 4}, DType::kI32), w = Tensor::empty({2, 4}, DType::kF32);
  EXPECT_THROW(moe_gate(logits, Tensor(), MoeGateParams{16, 3, 2, 4, true, 1.0f}, ids, w), std::invalid_argument);
  EXPECT_THROW(moe_gate(logits, Tensor(), MoeGateParams{16, 16, 2, 4, true, 1.0f}, ids, w), std::invalid_argument);
  EXPECT_THROW(moe_gate(logits, Tensor(), MoeGateParams{16, 4, 5, 4, true, 1.0f}, ids, w), std::invalid_argument);
  EXPECT_THROW(moe_gate(logits, Tensor(), MoeGateParams{16, 4, 1, 5, true, 1.0f}, ids, w), std::invalid_argument);
  EXPECT_THROW(moe_gate(logits, Tensor(), MoeGateParams{32, 4, 2, 4, true, 1.0f}, ids, w), std::invalid_argument);
  EXPECT_THROW(moe_gate(logits, testing::rand_f32({15}, rng), MoeGateParams{16, 4, 2, 4, true, 1.0f}, ids, w),
               std::invalid_argument);
  Tensor ids3 = Tensor::empty({2, 3}, DType::kI32);
  EXPECT_THROW(moe_gate(logits, Tensor(), MoeGateParams{16, 4, 2, 4, true, 1.0f}, ids3, w), std::invalid_argument);
  EXPECT_NO_THROW(moe_gate(logits, Tensor(), MoeGateParams{16, 4, 2, 4, true, 1.0f}, ids, w));
}

}  // namespace
}  // namespace pdserve::ops
