// EP MoE on CPU ranks against the single-rank MoE of the tiny DeepSeek-V3 (dummy weights, bf16 and
// fp8 experts). The reference below is model/deepseek_v3.cpp's DeepseekV3Model::moe step by step
// (that method is private): shared expert first, then every expert in ascending id order adding
// weight * expert(x) into the token's row.
//
// Bound: normwise relative error (max |ep - ref| / max |ref|) <= 1e-5. Both sides compute the same
// f32 products; only the order of the f32 additions differs (per-token sums of the k experts before
// adding, partial sums per EP rank in normal mode), which moves results by a few ulps: the measured
// error is printed and is ~1e-7.
#include "moe/ep_moe.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <tuple>

#include <gtest/gtest.h>

#include "base/clock.h"
#include "model/config.h"
#include "model/deepseek_v3.h"
#include "model/dummy_weights.h"
#include "moe/ep_test_util.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/moe_gate.h"

namespace pdserve::moe {
namespace {

using model::MlpWeights;
using model::MoeWeights;
using parallel::DeepEpMode;

constexpr double kBound = 1e-5;

struct TinyMoe {
  model::ModelConfig cfg;
  model::ModelWeights w;
  const MoeWeights& layer() const { return w.layers[static_cast<size_t>(cfg.first_k_dense_replace)].moe; }
};

const TinyMoe& tiny(bool fp8) {
  static std::once_flag once[2];
  static TinyMoe models[2];
  std::call_once(once[fp8], [&] {
    auto cfg = model::load_model_config(std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3");
    ASSERT_TRUE(cfg) << cfg.error().message();
    models[fp8].cfg = *cfg;
    if (fp8) models[fp8].cfg.quantization = model::FP8QuantConfig{};
    // Only the first MoE layer is used: skip the later layers and most of the 129k-row embedding,
    // which dominate the time to make the weights (each is a function of its own name only).
    models[fp8].cfg.num_hidden_layers = models[fp8].cfg.first_k_dense_replace + 1;
    models[fp8].cfg.vocab_size = 256;
    models[fp8].w = model::make_dummy_weights(models[fp8].cfg, 7);
  });
  return models[fp8];
}

// The single-rank reference is the model's own CPU MoE block.
Tensor single_rank_moe(const MoeWeights& m, const Tensor& x, const Tensor& ids, const Tensor& weights) {
  return model::moe_experts_forward(m, x, ids, weights);
}

// Tokens per rank and step: uneven, rank 1 idle in step 0, rank 2 idle in every step (R >= 4).
int64_t tokens(int rank, int ranks, int step) {
  if ((rank == 1 && step == 0) || (ranks >= 4 && rank == 2)) return 0;
  return 1 + (7 * rank + 3 * step) % 23;
}

class EpMoeEquality : public ::testing::TestWithParam<std::tuple<int, DeepEpMode, bool>> {};

TEST_P(EpMoeEquality, EqualsTheSingleRankMoe) {
  const auto [R, mode, fp8] = GetParam();
  const TinyMoe& m = tiny(fp8);
  const MoeWeights& layer = m.layer();
  const int64_t H = m.cfg.hidden_size, E = m.cfg.n_routed_experts, K = m.cfg.num_experts_per_tok;
  std::mutex mu;
  double worst = 0.0;
  testing::run_ranks_ok(R, [&, R = R, mode = mode](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
    const EpGeometry geo{E, R, info.moe_ep_rank};
    PDSERVE_ASSIGN_OR_RETURN(auto mine, local_experts(layer.experts, geo));
    EpMoeOptions opts;
    opts.max_dispatch_tokens_per_rank = 32;
    opts.expert_alignment = 4;
    PDSERVE_ASSIGN_OR_RETURN(EpMoe ep_moe, EpMoe::create(geo, std::move(mine), opts));
    for (int step = 0; step < 3; ++step) {
      const int64_t T = tokens(info.global_rank, R, step);
      testing::Routing r = testing::random_routing(T, H, K, E, 100 * static_cast<uint64_t>(info.global_rank) + static_cast<uint64_t>(step));
      Tensor out = Tensor::empty({T, H}, DType::kF32);
      Tensor ref;
      if (T > 0) {
        // The model's gate on this rank's tokens replaces the random routing.
        Tensor logits = Tensor::empty({T, E}, DType::kF32);
        ops::linear(r.x, layer.router, logits);
        ops::moe_gate(logits, layer.correction_bias, m.cfg.gate_params(), r.ids, r.weights);
        ref = single_rank_moe(layer, r.x, r.ids, r.weights);
        out = model::mlp_forward(layer.shared, r.x);  // forward adds the routed sum onto the shared expert
      }
      PDSERVE_RETURN_IF_ERROR(ep_moe.forward(*comms.ep, mode, r.x, r.ids, r.weights, out));
      if (T == 0) continue;
      std::vector<double> want(ref.data<float>(), ref.data<float>() + ref.numel());
      const double err = testing::rel_err(out, want);
      EXPECT_LE(err, kBound) << "rank " << info.global_rank << " step " << step;
      std::lock_guard lk(mu);
      worst = std::max(worst, err);
    }
    return ok_status();
  });
  std::printf("EP%d %s %s: max normwise relative error %.3g (bound %.0e)\n", R, parallel::deepep_mode_name(mode),
              fp8 ? "fp8" : "bf16", worst, kBound);
}

INSTANTIATE_TEST_SUITE_P(Ranks, EpMoeEquality,
                         ::testing::Combine(::testing::Values(1, 2, 4, 8),
                                            ::testing::Values(DeepEpMode::kNormal, DeepEpMode::kLowLatency),
                                            ::testing::Bool()),
                         [](const auto& p) {
                           return fmt::format("ep{}_{}_{}", std::get<0>(p.param), parallel::deepep_mode_name(std::get<1>(p.param)),
                                              std::get<2>(p.param) ? "fp8" : "bf16");
                         });

TEST(EpMoe, UnresolvedAutoModeIsAnErrorOnEveryRankAtOnce) {
  const TinyMoe& m = tiny(false);
  parallel::LocalWorld world(testing::ep_layout(2), parallel::CollectiveOptions{std::chrono::seconds(60)});
  Stopwatch sw;
  auto st = world.run([&](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
    const EpGeometry geo{m.cfg.n_routed_experts, 2, info.moe_ep_rank};
    PDSERVE_ASSIGN_OR_RETURN(auto mine, local_experts(m.layer().experts, geo));
    PDSERVE_ASSIGN_OR_RETURN(EpMoe ep_moe, EpMoe::create(geo, std::move(mine)));
    testing::Routing r = testing::random_routing(3, m.cfg.hidden_size, m.cfg.num_experts_per_tok, m.cfg.n_routed_experts, 1);
    Tensor out = Tensor::empty(r.x.shape(), DType::kF32);
    return ep_moe.forward(*comms.ep, info.global_rank == 0 ? DeepEpMode::kAuto : DeepEpMode::kNormal, r.x, r.ids,
                          r.weights, out);
  });
  EXPECT_LT(sw.seconds(), 10.0);
  for (const auto& s : st) {
    ASSERT_FALSE(s.has_value());
    EXPECT_NE(s.error().message().find("mode auto must be resolved"), std::string::npos) << s.error().message();
  }
}

TEST(EpMoe, ExpertsThatDoNotSplitEvenlyAreRefused) {
  const TinyMoe& m = tiny(false);
  auto r = local_experts(m.layer().experts, EpGeometry{0, 3, 0});  // 16 experts over 3 ranks
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("do not split evenly over 3"), std::string::npos) << r.error().message();
  auto wrong = EpMoe::create(EpGeometry{16, 2, 0}, std::vector<MlpWeights>(3));
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message().find("got 3 experts, expected 8"), std::string::npos) << wrong.error().message();
}

}  // namespace
}  // namespace pdserve::moe
