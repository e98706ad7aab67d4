#include "model/weights.h"

#include <regex>
#include <set>

#include "base/logging.h"
#include "ops/attention.h"

namespace pdserve::model {
namespace {

bool is_float_dtype(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16 || t == DType::kF8E4M3;
}

// Binds tensors by name and checks them; remembers which names were used.
class Binder {
 public:
  Binder(const Checkpoint& ckpt) : ckpt_(ckpt) {}

  Result<Tensor> vector(const std::string& name, int64_t n) {
    PDSERVE_ASSIGN_OR_RETURN(Tensor t, get(name));
    if (t.shape() != Shape{n}) return mismatch(name, t.shape(), Shape{n});
    if (!is_float_dtype(t.dtype()) || t.dtype() == DType::kF8E4M3)
      return bad_dtype(name, t.dtype(), "bf16, f16 or f32");
    return t;
  }

  Result<Weight> matrix(const std::string& name, int64_t rows, int64_t cols, bool allow_fp8 = true) {
    PDSERVE_ASSIGN_OR_RETURN(Tensor t, get(name));
    if (t.shape() != Shape{rows, cols}) return mismatch(name, t.shape(), Shape{rows, cols});
    if (!is_float_dtype(t.dtype())) return bad_dtype(name, t.dtype(), "bf16, f16, f32 or fp8_e4m3");
    Weight w{t, Tensor()};
    const std::string scale_name = name + "_scale_inv";
    if (t.dtype() == DType::kF8E4M3) {
      if (!allow_fp8) return bad_dtype(name, t.dtype(), "bf16, f16 or f32 (this tensor is never quantized)");
      if (!ckpt_.contains(scale_name))
        return make_error(ErrorCode::kCorrupt, "{}: fp8 tensor '{}' has no '{}'", ckpt_.dir().string(), name,
                          scale_name);
      PDSERVE_ASSIGN_OR_RETURN(Tensor s, get(scale_name));
      const Shape want{(rows + Weight::kBlock - 1) / Weight::kBlock, (cols + Weight::kBlock - 1) / Weight::kBlock};
      if (s.shape() != want) return mismatch(scale_name, s.shape(), want);
      if (s.dtype() != DType::kF32) return bad_dtype(scale_name, s.dtype(), "f32");
      w.scale_inv = s;
    } else if (ckpt_.contains(scale_name)) {
      return make_error(ErrorCode::kCorrupt, "{}: '{}' is {} but has a '{}' (only fp8 weights have block scales)",
                        ckpt_.dir().string(), name, dtype_name(t.dtype()), scale_name);
    }
    return w;
  }

  const std::set<std::string>& used() const { return used_; }

 private:
  Result<Tensor> get(const std::string& name) {
    if (!ckpt_.contains(name))
      return make_error(ErrorCode::kNotFound, "{}: missing tensor '{}'", ckpt_.dir().string(), name);
    used_.insert(name);
    used_.insert(name + "_scale_inv");
    auto t = ckpt_.tensor(name);
    if (!t) return t.error();
    return t;
  }
  Error mismatch(const std::string& name, const Shape& got, const Shape& want) {
    return make_error(ErrorCode::kCorrupt, "{}: tensor '{}' has shape {}, expected {} from config.json",
                      ckpt_.dir().string(), name, shape_to_string(got), shape_to_string(want));
  }
  Error bad_dtype(const std::string& name, DType got, const char* want) {
    return make_error(ErrorCode::kCorrupt, "{}: tensor '{}' has dtype {}, expected {}", ckpt_.dir().string(), name,
                      dtype_name(got), want);
  }

  const Checkpoint& ckpt_;
  std::set<std::string> used_;
};

Result<MlpWeights> bind_mlp(Binder& b, const std::string& prefix, int64_t hidden, int64_t inter) {
  MlpWeights m;
  PDSERVE_ASSIGN_OR_RETURN(m.gate_proj, b.matrix(prefix + "gate_proj.weight", inter, hidden));
  PDSERVE_ASSIGN_OR_RETURN(m.up_proj, b.matrix(prefix + "up_proj.weight", inter, hidden));
  PDSERVE_ASSIGN_OR_RETURN(m.down_proj, b.matrix(prefix + "down_proj.weight", hidden, inter));
  return m;
}

Result<AttentionWeights> bind_attention(Binder& b, const std::string& p, const ModelConfig& c) {
  AttentionWeights a;
  const int64_t H = c.num_attention_heads, hidden = c.hidden_size;
  if (c.q_lora_rank) {
    PDSERVE_ASSIGN_OR_RETURN(a.q_a_proj, b.matrix(p + "q_a_proj.weight", *c.q_lora_rank, hidden));
    PDSERVE_ASSIGN_OR_RETURN(a.q_a_layernorm, b.vector(p + "q_a_layernorm.weight", *c.q_lora_rank));
    PDSERVE_ASSIGN_OR_RETURN(a.q_b_proj, b.matrix(p + "q_b_proj.weight", H * c.qk_head_dim(), *c.q_lora_rank));
  } else {
    PDSERVE_ASSIGN_OR_RETURN(a.q_proj, b.matrix(p + "q_proj.weight", H * c.qk_head_dim(), hidden));
  }
  PDSERVE_ASSIGN_OR_RETURN(a.kv_a_proj_with_mqa,
                           b.matrix(p + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, hidden));
  PDSERVE_ASSIGN_OR_RETURN(a.kv_a_layernorm, b.vector(p + "kv_a_layernorm.weight", c.kv_lora_rank));
  PDSERVE_ASSIGN_OR_RETURN(a.kv_b_proj,
                           b.matrix(p + "kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank));
  PDSERVE_ASSIGN_OR_RETURN(a.o_proj, b.matrix(p + "o_proj.weight", hidden, H * c.v_head_dim));
  return a;
}

void put(std::map<std::string, Tensor>& out, const std::string& name, const Weight& w) {
  out[name] = w.weight;
  if (w.is_block_fp8()) out[name + "_scale_inv"] = w.scale_inv;
}

void put_mlp(std::map<std::string, Tensor>& out, const std::string& p, const MlpWeights& m) {
  put(out, p + "gate_proj.weight", m.gate_proj);
  put(out, p + "up_proj.weight", m.up_proj);
  put(out, p + "down_proj.weight", m.down_proj);
}

}  // namespace

std::map<std::string, Tensor> checkpoint_tensors(const ModelConfig& c, const ModelWeights& w) {
  std::map<std::string, Tensor> out;
  put(out, "model.embed_tokens.weight", w.embed_tokens);
  out["model.norm.weight"] = w.norm;
  put(out, "lm_head.weight", w.lm_head);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& layer = w.layers[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out[p + "input_layernorm.weight"] = layer.input_layernorm;
    out[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm;
    const auto& a = layer.attn;
    const std::string ap = p + "self_attn.";
    if (c.q_lora_rank) {
      put(out, ap + "q_a_proj.weight", a.q_a_proj);
      out[ap + "q_a_layernorm.weight"] = a.q_a_layernorm;
      put(out, ap + "q_b_proj.weight", a.q_b_proj);
    } else {
      put(out, ap + "q_proj.weight", a.q_proj);
    }
    put(out, ap + "kv_a_proj_with_mqa.weight", a.kv_a_proj_with_mqa);
    out[ap + "kv_a_layernorm.weight"] = a.kv_a_layernorm;
    put(out, ap + "kv_b_proj.weight", a.kv_b_proj);
    put(out, ap + "o_proj.weight", a.o_proj);
    if (!layer.is_moe) {
      put_mlp(out, p + "mlp.", layer.dense);
      continue;
    }
    put(out, p + "mlp.gate.weight", layer.moe.router);
    out[p + "mlp.gate.e_score_correction_bias"] = layer.moe.correction_bias;
    for (size_t e = 0; e < layer.moe.experts.size(); ++e)
      put_mlp(out, p + "mlp.experts." + std::to_string(e) + ".", layer.moe.experts[e]);
    if (c.n_shared_experts > 0) put_mlp(out, p + "mlp.shared_experts.", layer.moe.shared);
  }
  return out;
}

void derive_absorbed_weights(const ModelConfig& c, ModelWeights& w) {
  const ops::MlaDims d = c.mla_dims();
  for (auto& layer : w.layers) {
    auto& a = layer.attn;
    a.w_uk = Tensor::empty({d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank}, DType::kF32);
    a.w_uv = Tensor::empty({d.num_heads, d.v_head_dim, d.kv_lora_rank}, DType::kF32);
    ops::split_kv_b(a.kv_b_proj, d, a.w_uk, a.w_uv);
  }
}

Result<ModelWeights> load_checkpoint_weights(const Checkpoint& ckpt, const ModelConfig& c) {
  Binder b(ckpt);
  ModelWeights w;
  PDSERVE_ASSIGN_OR_RETURN(w.embed_tokens, b.matrix("model.embed_tokens.weight", c.vocab_size, c.hidden_size, false));
  PDSERVE_ASSIGN_OR_RETURN(w.norm, b.vector("model.norm.weight", c.hidden_size));
  if (c.tie_word_embeddings && !ckpt.contains("lm_head.weight")) {
    w.lm_head = w.embed_tokens;
  } else {
    PDSERVE_ASSIGN_OR_RETURN(w.lm_head, b.matrix("lm_head.weight", c.vocab_size, c.hidden_size, false));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights layer;
    PDSERVE_ASSIGN_OR_RETURN(layer.input_layernorm, b.vector(p + "input_layernorm.weight", c.hidden_size));
    PDSERVE_ASSIGN_OR_RETURN(layer.post_attention_layernorm,
                             b.vector(p + "post_attention_layernorm.weight", c.hidden_size));
    PDSERVE_ASSIGN_OR_RETURN(layer.attn, bind_attention(b, p + "self_attn.", c));
    layer.is_moe = c.is_moe_layer(l);
    if (!layer.is_moe) {
      PDSERVE_ASSIGN_OR_RETURN(layer.dense, bind_mlp(b, p + "mlp.", c.hidden_size, c.intermediate_size));
    } else {
      auto& m = layer.moe;
      PDSERVE_ASSIGN_OR_RETURN(m.router, b.matrix(p + "mlp.gate.weight", c.n_routed_experts, c.hidden_size, false));
      PDSERVE_ASSIGN_OR_RETURN(Tensor bias, b.vector(p + "mlp.gate.e_score_correction_bias", c.n_routed_experts));
      m.correction_bias = bias.to_f32();
      m.experts.reserve(static_cast<size_t>(c.n_routed_experts));
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        PDSERVE_ASSIGN_OR_RETURN(
            MlpWeights ew, bind_mlp(b, p + "mlp.experts." + std::to_string(e) + ".", c.hidden_size, c.moe_intermediate_size));
        m.experts.push_back(std::move(ew));
      }
      if (c.n_shared_experts > 0) {
        PDSERVE_ASSIGN_OR_RETURN(m.shared, bind_mlp(b, p + "mlp.shared_experts.", c.hidden_size,
                                                    c.moe_intermediate_size * c.n_shared_experts));
      }
    }
    w.layers.push_back(std::move(layer));
  }

  // Report what was not used: MTP layers are expected (HF ignores them too); anything else is
  // probably a different architecture, which is worth a warning but not a refusal.
  const std::regex layer_re(R"(^model\.layers\.(\d+)\.)");
  size_t mtp = 0, unknown = 0;
  std::string first_unknown;
  for (const auto& name : ckpt.names()) {
    if (b.used().count(name)) continue;
    std::smatch m;
    if (std::regex_search(name, m, layer_re) && std::stoll(m[1]) >= c.num_hidden_layers) {
      ++mtp;
    } else {
      if (unknown++ == 0) first_unknown = name;
    }
  }
  if (mtp)
    log::info("Skipping {} tensors of model.layers.{}+ (MTP next-n layers, or layers cut by --json-model-override-args) in {}",
              mtp, c.num_hidden_layers, ckpt.dir().string());
  if (unknown)
    log::warning("{} tensors in {} are not used by DeepseekV3ForCausalLM (first: '{}')", unknown,
                 ckpt.dir().string(), first_unknown);
  derive_absorbed_weights(c, w);
  return w;
}

}  // namespace pdserve::model
