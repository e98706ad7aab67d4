// The DeepSeek-V3 parameters as stored (bf16/f32/fp8 + block scales), validated against the config.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "tensor/tensor.h"

namespace pdserve::model {

struct MlpWeights {
  Weight gate_proj;  // [inter, hidden]
  Weight up_proj;    // [inter, hidden]
  Weight down_proj;  // [hidden, inter]
};

struct AttentionWeights {
  Weight q_a_proj;            // [q_lora, hidden]   (q_lora_rank set)
  Tensor q_a_layernorm;       // [q_lora]
  Weight q_b_proj;            // [heads * qk_head_dim, q_lora]
  Weight q_proj;              // [heads * qk_head_dim, hidden] (q_lora_rank null)
  Weight kv_a_proj_with_mqa;  // [kv_lora + rope, hidden]
  Tensor kv_a_layernorm;      // [kv_lora]
  Weight kv_b_proj;           // [heads * (nope + v), kv_lora]
  Weight o_proj;              // [hidden, heads * v]
  // kv_b_proj split per head in f32 for the absorbed decode path (model-spec §3).
  Tensor w_uk;  // [heads, nope, kv_lora]
  Tensor w_uv;  // [heads, v, kv_lora]
};

struct MoeWeights {
  Weight router;            // mlp.gate.weight [experts, hidden]
  Tensor correction_bias;   // [experts] f32 (upcast from bf16 if stored so)
  std::vector<MlpWeights> experts;
  MlpWeights shared;        // n_shared_experts * moe_intermediate wide
};

struct LayerWeights {
  Tensor input_layernorm;
  Tensor post_attention_layernorm;
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights dense;  // !is_moe
  MoeWeights moe;    // is_moe
};

struct ModelWeights {
  Weight embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor norm;          // [hidden]
  Weight lm_head;       // [vocab, hidden]
  // Set when dummy weights were made without the routed experts (every MoE layer's `experts` empty):
  // GPU expert-parallel ranks make their own slice with make_dummy_experts(seed), so the host never
  // holds all of them (DeepSeek-V3's are ~650 GB in FP8).
  std::optional<uint64_t> dummy_experts_seed;
};

// Binds and validates every tensor of a checkpoint: names as in the published checkpoints
// (per-expert mlp.experts.E.*), shapes from the config, fp8 weights with a weight_scale_inv of
// shape [ceil(out/128), ceil(in/128)]. MTP layers (model.layers.{num_hidden_layers}+) are skipped
// with a log line. Errors name the folder, the tensor and the problem.
Result<ModelWeights> load_checkpoint_weights(const Checkpoint& ckpt, const ModelConfig& cfg);

// The tensors of `w` under their checkpoint names (fp8 weights with their "_scale_inv"), e.g. to
// write a dummy model to disk as a real checkpoint.
std::map<std::string, Tensor> checkpoint_tensors(const ModelConfig& cfg, const ModelWeights& w);

// Derives w_uk / w_uv from kv_b_proj for every layer (shared by checkpoint and dummy loading).
void derive_absorbed_weights(const ModelConfig& cfg, ModelWeights& w);

}  // namespace pdserve::model
