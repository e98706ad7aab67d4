// Shared by the EP dispatch/combine and EP MoE tests: a world of CPU ranks (DP attention + DeepEP,
// one EP group of all ranks) and per-rank random routing.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "parallel/local_world.h"
#include "parallel/rank_layout.h"
#include "tensor/tensor.h"

namespace pdserve::moe::testing {

inline parallel::RankLayout ep_layout(int ranks) {
  parallel::ParallelConfig cfg;
  cfg.tp_size = ranks;
  cfg.dp_size = ranks;
  cfg.enable_dp_attention = true;
  cfg.moe_a2a_backend = parallel::MoeA2aBackend::kDeepEp;
  auto l = parallel::RankLayout::create(cfg);
  EXPECT_TRUE(l) << l.error().message();
  return *l;
}

// Runs fn on every rank and expects every rank to succeed.
inline void run_ranks_ok(int ranks, const parallel::LocalWorld::RankFn& fn,
                         std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  parallel::LocalWorld world(ep_layout(ranks), parallel::CollectiveOptions{timeout});
  auto st = world.run(fn);
  for (size_t r = 0; r < st.size(); ++r)
    EXPECT_TRUE(st[r].has_value()) << "rank " << r << ": " << st[r].error().message();
}

struct Routing {
  Tensor x;        // [T, H] f32
  Tensor ids;      // [T, K] i32, distinct per token, some -1 if `holes`
  Tensor weights;  // [T, K] f32
};

// T tokens; each picks K distinct experts among `allowed` (all experts when empty).
inline Routing random_routing(int64_t T, int64_t H, int64_t K, int64_t E, uint64_t seed, bool holes = false,
                              std::vector<int32_t> allowed = {}) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  if (allowed.empty())
    for (int32_t e = 0; e < E; ++e) allowed.push_back(e);
  Routing r{Tensor::empty({T, H}, DType::kF32), Tensor::empty({T, K}, DType::kI32), Tensor::empty({T, K}, DType::kF32)};
  for (int64_t i = 0; i < T * H; ++i) r.x.data<float>()[i] = u(rng);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> pick = allowed;
    std::shuffle(pick.begin(), pick.end(), rng);
    for (int64_t j = 0; j < K; ++j) {
      const bool hole = holes && (rng() % 5 == 0);
      r.ids.data<int32_t>()[t * K + j] = hole ? -1 : pick[static_cast<size_t>(j)];
      r.weights.data<float>()[t * K + j] = 0.25f + 0.5f * (u(rng) + 1.0f);
    }
  }
  return r;
}

// max |got - want| / max |want| over all elements.
inline double rel_err(const Tensor& got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(got.data<float>()[i]) - want[i]));
    den = std::max(den, std::abs(want[i]));
  }
  return den > 0.0 ? num / den : num;
}

}  // namespace pdserve::moe::testing
