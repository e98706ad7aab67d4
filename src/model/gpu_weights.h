// The model's weights on the GPU, in the forms the CUDA ops take (one upload at startup).
#pragma once

#include <vector>

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"

namespace pdserve::model {

// One MLP on the device, its gate and up projections fused into one weight: gate_up [2 * inter,
// hidden] holds the gate rows then the up rows (their block scales likewise), so one GEMM writes
// [m, 2 * inter] and silu_mul reads its two halves. One GEMM instead of two reads x once and fills
// more of the GPU at decode sizes (an H100 measured one expert's 512-row gate|up at 122 us fused
// against 229 us as two GEMMs: docs/perf/kernels.md).
struct GpuMlp {
  Weight gate_up;  // [2 * inter, hidden]
  Weight down;     // [hidden, inter]
  bool defined() const { return gate_up.weight.defined(); }
  int64_t inter() const { return down.cols(); }
};

// Routed experts [begin, end) of one MoE layer on the device (all of them, or one EP rank's slice),
// fused as GpuMlp is.
struct GpuExperts {
  std::vector<Weight> gate_up, down;  // grouped-GEMM operands, index = expert - begin
  Tensor gate_up_table, down_table;   // ops::expert_pointer_table of each, for the masked kernels
  bool empty() const { return gate_up.empty(); }
  int64_t inter() const { return down.empty() ? 0 : down.front().cols(); }
};

struct GpuLayerWeights {
  Tensor input_layernorm, post_attention_layernorm;
  // Device copies; w_uk / w_uv are bf16 views of one [H, nope + v, r] tensor. With a q LoRA the
  // q_a and kv_a projections live in qkv_a instead (q_a_proj and kv_a_proj_with_mqa undefined here).
  AttentionWeights attn;
  // [q_lora_rank + kv_lora_rank + rope, hidden]: q_a_proj's rows then kv_a_proj_with_mqa's, fused as
  // GpuMlp's gate|up (SGLang's fused_qkv_a_proj_with_mqa): both read the same x, and each alone
  // is too small to fill the GPU at decode sizes (q_a 20.7 us, kv_a 19.3 us on an H100).
  Weight qkv_a;
  bool is_moe = false;
  GpuMlp dense;
  Weight router;
  Tensor correction_bias;  // [E] f32, or undefined
  GpuExperts experts;  // every routed expert, or none when they live with EP ranks (see below)
  GpuMlp shared;       // undefined when the model has no shared expert
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

// The host form of `m` as the device keeps it (GpuMlp): gate and up concatenated by rows. FP8
// block-scaled weights stay FP8 when the gate rows fill whole 128-row scale blocks (the up rows
// then start a block of their own, so the scales concatenate as well; every DeepSeek-V3 MLP does);
// otherwise (tiny test models) both halves go to bf16 first, as any fp8 weight cuBLASLt cannot take.
GpuMlp fused_host_mlp(const MlpWeights& m);

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
