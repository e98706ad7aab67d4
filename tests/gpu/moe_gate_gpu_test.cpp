// CUDA noaux_tc gate against the CPU op: DeepSeek-V3's config (256 experts, 8 groups, top-4 groups,
// top-8 experts) and small ones, on fresh random logits and biases.
//
// Inputs have clear margins (every decision the gate makes - which groups survive, which experts
// are picked and in what order - is separated by >= 1e-5 in score; rows that miss this are
// redrawn), so ids must match exactly; weights within 1e-6 (relative, floor 1). Exact ties (all
// logits equal) must break to the lower id, as on the CPU.
#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/moe_gate.h"

namespace pdserve::gpu_test {
namespace {

constexpr float kMargin = 1e-5f;

// True when the row's group cut and expert ranking are clear by kMargin.
bool clear_margins(const float* logits, const float* bias, const ops::MoeGateParams& p) {
  const int64_t e = p.n_routed_experts, per = e / p.n_group;
  std::vector<float> sc(e);
  for (int64_t j = 0; j < e; ++j) sc[j] = 1.0f / (1.0f + std::exp(-logits[j])) + (bias ? bias[j] : 0.0f);
  std::vector<std::pair<float, int64_t>> groups;
  for (int64_t g = 0; g < p.n_group; ++g) {
    std::vector<float> v(sc.begin() + g * per, sc.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    groups.push_back({v[0] + v[1], g});
  }
  std::sort(groups.rbegin(), groups.rend());
  if (p.topk_group < p.n_group && groups[p.topk_group - 1].first - groups[p.topk_group].first < kMargin) return false;
  std::vector<float> kept;
  for (int64_t g = 0; g < p.topk_group; ++g)
    for (int64_t j = 0; j < per; ++j) kept.push_back(sc[groups[g].second * per + j]);
  std::sort(kept.rbegin(), kept.rend());
  const int64_t last = std::min<int64_t>(p.top_k, static_cast<int64_t>(kept.size()) - 1);
  for (int64_t i = 0; i < last; ++i)
    if (kept[i] - kept[i + 1] < kMargin) return false;
  return true;
}

void run_case(const ops::MoeGateParams& p, int64_t n, bool with_bias, uint32_t seed) {
  const std::string what = "E=" + std::to_string(p.n_routed_experts) + " groups=" + std::to_string(p.n_group) +
                           " topk_group=" + std::to_string(p.topk_group) + " top_k=" + std::to_string(p.top_k) +
                           " n=" + std::to_string(n) + (with_bias ? " bias" : "");
  const int64_t e = p.n_routed_experts;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.5f);
  Tensor bias;
  if (with_bias) {
    bias = Tensor::empty({e}, DType::kF32);
    std::normal_distribution<float> bd(0.0f, 0.3f);  // negative biases too: dropped groups must be -inf
    for (int64_t j = 0; j < e; ++j) bias.data<float>()[j] = bd(rng);
  }
  Tensor logits = Tensor::empty({n, e}, DType::kF32);
  for (int64_t t = 0; t < n; ++t) {
    float* row = logits.data<float>() + t * e;
    do {
      for (int64_t j = 0; j < e; ++j) row[j] = nd(rng);
    } while (!clear_margins(row, with_bias ? bias.data<float>() : nullptr, p));
  }
  Tensor ids_want = Tensor::empty({n, p.top_k}, DType::kI32), w_want = Tensor::empty({n, p.top_k}, DType::kF32);
  ops::moe_gate(logits, bias, p, ids_want, w_want);

  Tensor ids = poisoned_device({n, p.top_k}, DType::kI32), w = poisoned_device({n, p.top_k});
  ops::moe_gate(logits.to(Device::kCuda), with_bias ? bias.to(Device::kCuda) : Tensor(), p, ids, w);
  Tensor ids_h = ids.to(Device::kCpu), w_h = w.to(Device::kCpu);
  int64_t id_mismatch = 0;
  for (int64_t i = 0; i < n * p.top_k; ++i) {
    if (ids_h.data<int32_t>()[i] != ids_want.data<int32_t>()[i] && id_mismatch++ < 5)
      ADD_FAILURE() << what << ": token " << i / p.top_k << " slot " << i % p.top_k << " id "
                    << ids_h.data<int32_t>()[i] << " want " << ids_want.data<int32_t>()[i];
    const float a = w_h.data<float>()[i], b = w_want.data<float>()[i];
    if (!(std::abs(a - b) <= 1e-6f * std::max(1.0f, std::abs(b))))
      ADD_FAILURE() << what << ": weight " << i << " " << a << " want " << b;
  }
  EXPECT_EQ(id_mismatch, 0) << what;
}

TEST(MoeGateGpu, DeepSeekV3ConfigMatchesCpu) {
  ops::MoeGateParams p;  // 256 experts, 8 groups, topk_group 4, top_k 8, scaling 2.5
  run_case(p, 256, true, 1);
  run_case(p, 1, true, 2);
  run_case(p, 1003, true, 3);
  run_case(p, 64, false, 4);
}

TEST(MoeGateGpu, SmallConfigsMatchCpu) {
  ops::MoeGateParams a;
  a.n_routed_experts = 16, a.n_group = 4, a.topk_group = 2, a.top_k = 4, a.routed_scaling_factor = 1.0f;
  run_case(a, 100, true, 10);
  ops::MoeGateParams b;
  b.n_routed_experts = 64, b.n_group = 8, b.topk_group = 3, b.top_k = 6, b.norm_topk_prob = false;
  run_case(b, 77, true, 11);
  ops::MoeGateParams c;  // one group: plain top-k
  c.n_routed_experts = 32, c.n_group = 1, c.topk_group = 1, c.top_k = 8;
  run_case(c, 50, false, 12);
  ops::MoeGateParams d;  // more experts than lanes, odd group size
  d.n_routed_experts = 96, d.n_group = 32, d.topk_group = 5, d.top_k = 10;
  run_case(d, 40, true, 13);
}

TEST(MoeGateGpu, ExactTiesGoToLowerIds) {
  ops::MoeGateParams p;
  const int64_t n = 3;
  Tensor logits = Tensor::empty({n, 256}, DType::kF32);  // all zero: every score ties
  Tensor ids_want = Tensor::empty({n, 8}, DType::kI32), w_want = Tensor::empty({n, 8}, DType::kF32);
  ops::moe_gate(logits, Tensor(), p, ids_want, w_want);
  Tensor ids = poisoned_device({n, 8}, DType::kI32), w = poisoned_device({n, 8});
  ops::moe_gate(logits.to(Device::kCuda), Tensor(), p, ids, w);
  Tensor ids_h = ids.to(Device::kCpu), w_h = w.to(Device::kCpu);
  for (int64_t i = 0; i < n * 8; ++i) {
    EXPECT_EQ(ids_h.data<int32_t>()[i], ids_want.data<int32_t>()[i]) << i;
    EXPECT_EQ(ids_h.data<int32_t>()[i], i % 8) << i;
    EXPECT_EQ(w_h.data<float>()[i], w_want.data<float>()[i]) << i;
  }
}

}  // namespace
}  // namespace pdserve::gpu_test
