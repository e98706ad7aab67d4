// The model's weights on the GPU, in the forms the CUDA ops take (one upload at startup).
#pragma once

#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace pdserve::model {

struct GpuLayerWeights {
  Tensor input_layernorm, post_attention_layernorm;
  AttentionWeights attn;  // device copies; w_uk / w_uv are bf16 views of one [H, nope + v, r] tensor
  bool is_moe = false;
  MlpWeights dense;
  Weight router;
  Tensor correction_bias;  // [E] f32, or undefined
  std::vector<Weight> expert_gate, expert_up, expert_down;  // grouped-GEMM operands
  Tensor gate_table, up_table, down_table;  // ops::expert_pointer_table of each, for the decode GEMV
  MlpWeights shared;
};

struct GpuWeights {
  Weight embed_tokens;
  std::vector<GpuLayerWeights> layers;
  Tensor norm;
  Weight lm_head;
  size_t bytes = 0;  // device memory they take
};

// Copies every tensor of `w` to the current CUDA device (synchronous). The absorbed-decode
// matrices are rounded to bf16 (the tensor-core decode kernel's operand type).
GpuWeights upload_weights(const ModelConfig& cfg, const ModelWeights& w);

}  // namespace pdserve::model
