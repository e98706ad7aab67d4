// DeepSeek-V3 router (noaux_tc): sigmoid scores, bias for selection only, group-limited top-k.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops {

struct MoeGateParams {
  int64_t n_routed_experts = 256;
  int64_t n_group = 8;
  int64_t topk_group = 4;
  int64_t top_k = 8;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 2.5f;
};

// router_logits: [n, E] f32 (x @ gate^T in f32). correction_bias: [E] f32, or undefined (zeros).
// For each token: s = sigmoid(logits); sc = s + bias; group score = sum of the 2 largest sc in the
// group; keep topk_group groups (others -inf); top_k experts by masked sc; weights = s[idx]
// (un-biased), divided by (sum + 1e-20) if norm_topk_prob, times routed_scaling_factor.
// topk_ids: [n, top_k] i32, topk_weights: [n, top_k] f32. Experts are listed in descending
// selection score (ties: lower expert id first) so output is deterministic.
void moe_gate(const Tensor& router_logits, const Tensor& correction_bias, const MoeGateParams& p,
              Tensor& topk_ids, Tensor& topk_weights);

}  // namespace pdserve::ops
