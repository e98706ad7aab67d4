// DeepSeek-V3 config.json: both the published Hub layout (rope_scaling + rope_theta) and the
// transformers-5 layout (rope_parameters, rope_interleave, head_dim, qk_head_dim, dtype).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "base/status.h"
#include "ops/attention.h"
#include "ops/moe_gate.h"
#include "ops/rope.h"

namespace pdserve::model {

struct FP8QuantConfig {
  int64_t block_rows = 128;  // weight_block_size[0]
  int64_t block_cols = 128;  // weight_block_size[1]
  std::string activation_scheme = "dynamic";
  std::string scale_fmt = "float";  // "ue8m0" (V3.1): activation scales rounded up to powers of two
};

struct ModelConfig {
  std::string model_type = "deepseek_v3";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP width
  int64_t moe_intermediate_size = 0;  // each routed and shared expert
  int64_t num_hidden_layers = 0;
  int64_t first_k_dense_replace = 0;  // layers [0, k) are dense MLP, the rest MoE
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  std::string topk_method = "noaux_tc";
  std::string scoring_func = "sigmoid";
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  std::optional<int64_t> q_lora_rank;  // null: a single q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t num_attention_heads = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  std::string hidden_act = "silu";
  bool attention_bias = false;
  bool tie_word_embeddings = false;
  bool rope_interleave = true;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  int64_t num_nextn_predict_layers = 0;
  std::string torch_dtype = "bfloat16";
  ops::RopeParams rope;                      // rotary_dim = qk_rope_head_dim
  std::optional<FP8QuantConfig> quantization;  // quantization_config with quant_method "fp8"

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const { return n_routed_experts > 0 && layer >= first_k_dense_replace; }
  ops::MlaDims mla_dims() const;
  ops::MoeGateParams gate_params() const;
  // qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 when YaRN with mscale_all_dim set.
  float softmax_scale() const;
};

// Parses a config.json text. Errors are one line naming the source and the field:
// "models/x/config.json: field 'hidden_size' must be a positive integer (got -3)". Codes: kCorrupt
// for text that is not a JSON object, kUnsupported for valid values this build cannot run (rope
// type, quant method, topk_method, ...), kInvalidArgument for missing/ill-typed/inconsistent fields.
// `source` is used in messages (usually the file path).
Result<ModelConfig> parse_model_config(const std::string& json_text, const std::string& source);
// Reads and parses DIR/config.json (or a config file path). `json_override` is SGLang's
// --json-model-override-args: a JSON object whose keys replace config.json's top-level fields
// before parsing (e.g. {"num_hidden_layers": 4} for a shallower model); empty or "{}" = none.
Result<ModelConfig> load_model_config(const std::filesystem::path& path, const std::string& json_override = {});

}  // namespace pdserve::model
