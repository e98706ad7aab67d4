#include "ops/moe_gate.h"

#include "ops/check.h"
#include "ops/cpu/moe_gate.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/moe_gate.h"
#endif

namespace pdserve::ops {

using detail::fail;

void moe_gate(const Tensor& router_logits, const Tensor& correction_bias, const MoeGateParams& p, Tensor& topk_ids,
              Tensor& topk_weights) {
  constexpr const char* op = "moe_gate";
  const int64_t e = p.n_routed_experts;
  if (e <= 0 || p.n_group <= 0 || e % p.n_group != 0)
    fail(op, fmt::format("n_routed_experts {} must be a positive multiple of n_group {}", e, p.n_group));
  const int64_t per_group = e / p.n_group;
  if (per_group < 2) fail(op, fmt::format("groups need >= 2 experts (group score is a top-2 sum), got {}", per_group));
  if (p.topk_group <= 0 || p.topk_group > p.n_group)
    fail(op, fmt::format("topk_group {} must be in [1, n_group={}]", p.topk_group, p.n_group));
  if (p.top_k <= 0 || p.top_k > p.topk_group * per_group)
    fail(op, fmt::format("top_k {} must be in [1, topk_group * experts_per_group = {}]", p.top_k,
                         p.topk_group * per_group));
  detail::check_dtype(op, "router_logits", router_logits, DType::kF32);
  detail::check_rank(op, "router_logits", router_logits, 2);
  detail::check_last_dim_contiguous(op, "router_logits", router_logits);
  if (router_logits.size(1) != e)
    fail(op, fmt::format("router_logits {} does not have n_routed_experts = {} columns",
                         shape_to_string(router_logits.shape()), e));
  if (correction_bias.defined()) {
    detail::check_dtype(op, "correction_bias", correction_bias, DType::kF32);
    detail::check_shape(op, "correction_bias", correction_bias, {e});
    detail::check_contiguous(op, "correction_bias", correction_bias);
  }
  const int64_t n = router_logits.size(0);
  detail::check_dtype(op, "topk_ids", topk_ids, DType::kI32);
  detail::check_shape(op, "topk_ids", topk_ids, {n, p.top_k});
  detail::check_contiguous(op, "topk_ids", topk_ids);
  detail::check_dtype(op, "topk_weights", topk_weights, DType::kF32);
  detail::check_shape(op, "topk_weights", topk_weights, {n, p.top_k});
  detail::check_contiguous(op, "topk_weights", topk_weights);
  if (!detail::all_on_cpu(op, {&router_logits, &correction_bias, &topk_ids, &topk_weights})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::moe_gate(router_logits, correction_bias, p, topk_ids, topk_weights);
#else
    detail::no_cuda(op);
#endif
  }
  cpu::moe_gate(router_logits, correction_bias, p, topk_ids, topk_weights);
}

}  // namespace pdserve::ops
