// The model's weights on the GPU, in the forms the CUDA ops take (one upload at startup).
#pragma once

#include <vector>

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"

namespace pdserve::model {

// Routed experts [begin, end) of one MoE layer on the device (all of them, or one EP rank's slice).
struct GpuExperts {
  std::vector<Weight> gate, up, down;       // grouped-GEMM operands, index = expert - begin
  Tensor gate_table, up_table, down_table;  // ops::expert_pointer_table of each, for the decode GEMV
};

struct GpuLayerWeights {
  Tensor input_layernorm, post_attention_layernorm;
  AttentionWeights attn;  // device copies; w_uk / w_uv are bf16 views of one [H, nope + v, r] tensor
  bool is_moe = false;
  MlpWeights dense;
  Weight router;
  Tensor correction_bias;  // [E] f32, or undefined
  GpuExperts experts;  // every routed expert, or none when they live with EP ranks (see below)
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
// matrices are rounded to bf16 (the tensor-core decode kernel's operand type). routed_experts
// false leaves the routed experts out (expert parallelism: each rank uploads its own slice).
GpuWeights upload_weights(const ModelConfig& cfg, const ModelWeights& w, bool routed_experts = true);

// Experts [begin, end) of one MoE layer to the current CUDA device; adds their bytes to *bytes.
GpuExperts upload_experts(const MoeWeights& m, int64_t begin, int64_t end, size_t* bytes = nullptr);

// Local expert `slot` of `g` becomes `host` (converted as upload_experts converts), by synchronous
// host-to-device copies into the slot's own buffers: nothing is allocated or freed on the device
// (an EP rank rebalancing beside peers that spin in an exchange on the same GPU must not), and the
// GEMV's pointer tables and captured CUDA graphs stay valid. kInvalidArgument when the new
// expert's tensors differ in dtype or size from the slot's.
Status overwrite_expert(GpuExperts& g, int64_t slot, const MlpWeights& host);

// host -> the existing device tensor `dev` of the same dtype and size, waited for on this thread's
// stream; nothing is allocated on the device. `what` names it in errors.
Status copy_to_device(const Tensor& host, Tensor& dev, const char* what);

}  // namespace pdserve::model
