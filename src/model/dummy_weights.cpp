#include "model/dummy_weights.h"

#include <cmath>
#include <string>
#include <vector>

namespace pdserve::model {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ULL ^ seed;  // FNV-1a, then mixed
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ULL;
  return splitmix64(h);
}

// Uniform in [-1, 1) from a counter: element i of the tensor named `key`.
inline float uniform_at(uint64_t key, uint64_t i) {
  return static_cast<float>(static_cast<double>(splitmix64(key + i) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

// Fills rows in parallel (OpenMP, as the CPU kernels); rows are independent, so the result does not
// depend on the split.
template <typename F>
void parallel_rows(int64_t rows, F&& fill_rows) {
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (rows + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) fill_rows(c * kChunk, std::min(rows, (c + 1) * kChunk));
}

class DummyFactory {
 public:
  DummyFactory(uint64_t seed, bool fp8) : seed_(seed), fp8_(fp8) {}

  Weight matrix(const std::string& name, int64_t rows, int64_t cols, bool quantizable, float gain = 1.0f) {
    const uint64_t key = hash_name(name, seed_);
    const float bound = gain * std::sqrt(3.0f / static_cast<float>(cols));
    if (fp8_ && quantizable) {
      // Store values whose block amax is exactly `bound`: fp8 covers [-448, 448] and the scale
      // maps that back, so a dummy fp8 model has the same statistics as the bf16 one.
      const int64_t B = Weight::kBlock;
      Weight w{Tensor::empty({rows, cols}, DType::kF8E4M3), Tensor::empty({(rows + B - 1) / B, (cols + B - 1) / B}, DType::kF32)};
      auto* q = w.weight.data<uint8_t>();
      parallel_rows(rows, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = 0; c < cols; ++c)
            q[r * cols + c] = f32_to_fp8e4m3(uniform_at(key, static_cast<uint64_t>(r * cols + c)) * kFp8E4M3Max);
      });
      float* s = w.scale_inv.data<float>();
      for (int64_t i = 0; i < w.scale_inv.numel(); ++i) s[i] = bound / kFp8E4M3Max;
      return w;
    }
    Weight w{Tensor::empty({rows, cols}, DType::kBF16), Tensor()};
    auto* d = w.weight.data<uint16_t>();
    parallel_rows(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < cols; ++c)
          d[r * cols + c] = f32_to_bf16(uniform_at(key, static_cast<uint64_t>(r * cols + c)) * bound);
    });
    return w;
  }

  Tensor constant(int64_t n, float value) {
    Tensor t = Tensor::empty({n}, DType::kBF16);
    for (int64_t i = 0; i < n; ++i) t.data<uint16_t>()[i] = f32_to_bf16(value);
    return t;
  }

  Tensor small_f32(const std::string& name, int64_t n, float scale) {
    Tensor t = Tensor::empty({n}, DType::kF32);
    const uint64_t key = hash_name(name, seed_);
    for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = uniform_at(key, static_cast<uint64_t>(i)) * scale;
    return t;
  }

  MlpWeights mlp(const std::string& p, int64_t hidden, int64_t inter) {
    return MlpWeights{matrix(p + "gate_proj.weight", inter, hidden, true), matrix(p + "up_proj.weight", inter, hidden, true),
                      matrix(p + "down_proj.weight", hidden, inter, true)};
  }

 private:
  uint64_t seed_;
  bool fp8_;
};

std::string expert_prefix(int64_t layer, int64_t e) {
  return "model.layers." + std::to_string(layer) + ".mlp.experts." + std::to_string(e) + ".";
}

}  // namespace

std::vector<MlpWeights> make_dummy_experts(const ModelConfig& c, uint64_t seed, int64_t layer, int64_t begin, int64_t end) {
  DummyFactory f(seed, c.quantization.has_value());
  std::vector<MlpWeights> out;
  for (int64_t e = begin; e < end; ++e) out.push_back(f.mlp(expert_prefix(layer, e), c.hidden_size, c.moe_intermediate_size));
  return out;
}

ModelWeights make_dummy_weights(const ModelConfig& c, uint64_t seed, bool routed_experts) {
  DummyFactory f(seed, c.quantization.has_value());
  ModelWeights w;
  const int64_t H = c.num_attention_heads, hidden = c.hidden_size;
  // The embedding is not behind a norm's fan-in; unit-scale rows keep the first RMSNorm well-posed.
  w.embed_tokens = f.matrix("model.embed_tokens.weight", c.vocab_size, hidden, false, std::sqrt(static_cast<float>(hidden) / 3.0f));
  w.norm = f.constant(hidden, 1.0f);
  w.lm_head = f.matrix("lm_head.weight", c.vocab_size, hidden, false);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights layer;
    layer.input_layernorm = f.constant(hidden, 1.0f);
    layer.post_attention_layernorm = f.constant(hidden, 1.0f);
    auto& a = layer.attn;
    const std::string ap = p + "self_attn.";
    if (c.q_lora_rank) {
      a.q_a_proj = f.matrix(ap + "q_a_proj.weight", *c.q_lora_rank, hidden, true);
      a.q_a_layernorm = f.constant(*c.q_lora_rank, 1.0f);
      a.q_b_proj = f.matrix(ap + "q_b_proj.weight", H * c.qk_head_dim(), *c.q_lora_rank, true);
    } else {
      a.q_proj = f.matrix(ap + "q_proj.weight", H * c.qk_head_dim(), hidden, true);
    }
    a.kv_a_proj_with_mqa = f.matrix(ap + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, hidden, true);
    a.kv_a_layernorm = f.constant(c.kv_lora_rank, 1.0f);
    a.kv_b_proj = f.matrix(ap + "kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, true);
    a.o_proj = f.matrix(ap + "o_proj.weight", hidden, H * c.v_head_dim, true);
    layer.is_moe = c.is_moe_layer(l);
    if (!layer.is_moe) {
      layer.dense = f.mlp(p + "mlp.", hidden, c.intermediate_size);
    } else {
      auto& m = layer.moe;
      // A strong router (gain 4) so expert choice is decisive rather than near-tied.
      m.router = f.matrix(p + "mlp.gate.weight", c.n_routed_experts, hidden, false, 4.0f);
      m.correction_bias = f.small_f32(p + "mlp.gate.e_score_correction_bias", c.n_routed_experts, 0.05f);
      if (routed_experts)
        for (int64_t e = 0; e < c.n_routed_experts; ++e) m.experts.push_back(f.mlp(expert_prefix(l, e), hidden, c.moe_intermediate_size));
      if (c.n_shared_experts > 0)
        m.shared = f.mlp(p + "mlp.shared_experts.", hidden, c.moe_intermediate_size * c.n_shared_experts);
    }
    w.layers.push_back(std::move(layer));
  }
  derive_absorbed_weights(c, w);
  if (!routed_experts) w.dummy_experts_seed = seed;
  return w;
}

}  // namespace pdserve::model
