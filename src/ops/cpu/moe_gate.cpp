#include "ops/cpu/moe_gate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace pdserve::ops::cpu {

void moe_gate(const Tensor& router_logits, const Tensor& correction_bias, const MoeGateParams& p, Tensor& topk_ids,
              Tensor& topk_weights) {
  const int64_t n = router_logits.size(0), e = p.n_routed_experts;
  const int64_t per_group = e / p.n_group;
  const float* bias = correction_bias.defined() ? correction_bias.data<float>() : nullptr;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  std::vector<float> s(e), sc(e), group_score(p.n_group);
  std::vector<int32_t> order(std::max(e, p.n_group));
  for (int64_t t = 0; t < n; ++t) {
    const float* logits = router_logits.data<float>() + t * router_logits.strides()[0];
    for (int64_t j = 0; j < e; ++j) {
      s[j] = 1.0f / (1.0f + std::exp(-logits[j]));
      sc[j] = bias ? s[j] + bias[j] : s[j];
    }
    for (int64_t g = 0; g < p.n_group; ++g) {
      const float* gs = sc.data() + g * per_group;
      float a = kNegInf, b = kNegInf;  // the two largest
      for (int64_t j = 0; j < per_group; ++j) {
        if (gs[j] > a) {
          b = a;
          a = gs[j];
        } else if (gs[j] > b) {
          b = gs[j];
        }
      }
      group_score[g] = a + b;
    }
    // Ties go to the lower index, which makes the (otherwise unordered) torch.topk choice deterministic.
    auto by_score = [](const std::vector<float>& v) {
      return [&v](int32_t x, int32_t y) { return v[x] > v[y] || (v[x] == v[y] && x < y); };
    };
    std::iota(order.begin(), order.begin() + p.n_group, 0);
    std::partial_sort(order.begin(), order.begin() + p.topk_group, order.begin() + p.n_group, by_score(group_score));
    std::vector<bool> keep(p.n_group, false);
    for (int64_t g = 0; g < p.topk_group; ++g) keep[order[g]] = true;
    // -inf (HF 5.17), not 0 (HF 4.5x): with a negative bias a kept expert can score below 0 and
    // must still win over every expert of a dropped group.
    for (int64_t j = 0; j < e; ++j)
      if (!keep[j / per_group]) sc[j] = kNegInf;

    std::iota(order.begin(), order.begin() + e, 0);
    std::partial_sort(order.begin(), order.begin() + p.top_k, order.begin() + e, by_score(sc));
    int32_t* ids = topk_ids.data<int32_t>() + t * p.top_k;
    float* w = topk_weights.data<float>() + t * p.top_k;
    float sum = 0.0f;
    for (int64_t k = 0; k < p.top_k; ++k) {
      ids[k] = order[k];
      w[k] = s[order[k]];
      sum += w[k];
    }
    const float denom = sum + 1e-20f;
    for (int64_t k = 0; k < p.top_k; ++k) {
      if (p.norm_topk_prob) w[k] /= denom;
      w[k] *= p.routed_scaling_factor;
    }
  }
}

}  // namespace pdserve::ops::cpu
