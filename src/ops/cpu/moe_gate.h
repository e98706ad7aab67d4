// CPU reference for the DeepSeek-V3 noaux_tc router.
#pragma once

#include "ops/moe_gate.h"

namespace pdserve::ops::cpu {

void moe_gate(const Tensor& router_logits, const Tensor& correction_bias, const MoeGateParams& p, Tensor& topk_ids,
              Tensor& topk_weights);

}  // namespace pdserve::ops::cpu
