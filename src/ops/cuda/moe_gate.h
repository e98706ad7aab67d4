// CUDA noaux_tc router: the whole DeepSeek-V3 gate (sigmoid, bias, group top-2 sums, group top-k,
// expert top-k, normalise, scale) in one kernel, one warp per token.
#pragma once

#include "ops/moe_gate.h"
#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// ops::moe_gate for device tensors, same contract and the same output order (descending selection
// score, ties to the lower expert id). Sigmoid uses the accurate expf (not __expf), group scores
// and the weight normalisation follow the CPU op's f32 operation order, so weights agree with the
// CPU op to an ulp or two and ids agree exactly wherever the selection scores are not within an
// ulp of each other. Device limits (checked): n_routed_experts <= 1024, n_group <= 32,
// top_k <= 32. A NaN selection score ranks below every number.
void moe_gate(const Tensor& router_logits, const Tensor& correction_bias, const MoeGateParams& p, Tensor& topk_ids,
              Tensor& topk_weights);

}  // namespace pdserve::ops::cuda
