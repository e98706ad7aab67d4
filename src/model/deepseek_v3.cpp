#include "model/deepseek_v3.h"

#include <algorithm>
#include <cstring>

#include "base/logging.h"
#include "base/trace_spans.h"
#include "model/dummy_weights.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/moe_gate.h"
#include "ops/rope.h"

namespace pdserve::model {

// HF builds q_a_layernorm / kv_a_layernorm with the default eps, not config.rms_norm_eps
// (model-spec §2.2).
static constexpr float kMlaNormEps = 1e-6f;

Result<LoadFormat> parse_load_format(const std::string& s) {
  if (s == "auto" || s == "safetensors") return LoadFormat::kAuto;
  if (s == "dummy") return LoadFormat::kDummy;
  return make_error(ErrorCode::kInvalidArgument, "--load-format must be auto, safetensors or dummy (got '{}')", s);
}

std::unique_ptr<DeepseekV3Model> DeepseekV3Model::from_weights(ModelConfig cfg, ModelWeights w) {
  auto m = std::unique_ptr<DeepseekV3Model>(new DeepseekV3Model(std::move(cfg), std::move(w)));
  m->rope_ = ops::make_rope_table(m->cfg_.rope);
  m->softmax_scale_ = m->cfg_.softmax_scale();
  return m;
}

Result<std::unique_ptr<DeepseekV3Model>> DeepseekV3Model::load(const std::filesystem::path& dir, const LoadOptions& opts) {
  PDSERVE_ASSIGN_OR_RETURN(ModelConfig cfg, load_model_config(dir, opts.json_model_override_args));
  if (opts.format == LoadFormat::kDummy) {
    log::info("Load weight begin. type=DeepseekV3ForCausalLM, load_format=dummy, seed={}", opts.dummy_seed);
    ModelWeights w = make_dummy_weights(cfg, opts.dummy_seed, opts.dummy_routed_experts);
    if (!opts.dummy_routed_experts) log::info("Routed experts are made by each expert-parallel GPU rank for its own slice");
    return from_weights(std::move(cfg), std::move(w));
  }
  auto ckpt = Checkpoint::open(dir);
  if (!ckpt) {
    if (ckpt.error().code() == ErrorCode::kNotFound)
      return Error(ckpt.error().code(), ckpt.error().message() + " (use --load-format dummy for random weights)");
    return ckpt.error();
  }
  log::info("Load weight begin. type=DeepseekV3ForCausalLM, path={}", dir.string());
  PDSERVE_ASSIGN_OR_RETURN(ModelWeights w, load_checkpoint_weights(*ckpt, cfg));
  return from_weights(std::move(cfg), std::move(w));
}

std::unique_ptr<LatentKvPool> DeepseekV3Model::make_kv_pool(int64_t max_tokens, int64_t page_size) const {
  const int64_t pages = std::max<int64_t>(1, (max_tokens + page_size - 1) / page_size);
  return std::make_unique<LatentKvPool>(cfg_.num_hidden_layers, pages, page_size, cfg_.mla_dims().latent_dim());
}

Tensor mlp_forward(const MlpWeights& m, const Tensor& x) {
  const int64_t n = x.size(0), inter = m.gate_proj.rows();
  Tensor g = Tensor::empty({n, inter}, DType::kF32), u = Tensor::empty({n, inter}, DType::kF32);
  ops::linear(x, m.gate_proj, g);
  ops::linear(x, m.up_proj, u);
  ops::silu_mul(g, u, g);
  Tensor y = Tensor::empty({n, m.down_proj.rows()}, DType::kF32);
  ops::linear(g, m.down_proj, y);
  return y;
}

Tensor moe_experts_forward(const MoeWeights& m, const Tensor& x, const Tensor& ids, const Tensor& weights) {
  const int64_t n = x.size(0), hidden = x.size(1), k = ids.size(1);
  // Group tokens by expert, run each expert once on its tokens, scatter-add weighted outputs.
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(m.experts.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j)
      by_expert[static_cast<size_t>(ids.data<int32_t>()[t * k + j])].push_back({t, weights.data<float>()[t * k + j]});
  Tensor out;
  if (m.shared.gate_proj.weight.defined()) {
    trace::ScopedSpan span("shared_experts");
    out = mlp_forward(m.shared, x);
  } else {
    out = Tensor::empty({n, hidden}, DType::kF32);
  }
  trace::ScopedSpan routed_span("routed_experts");
  for (size_t e = 0; e < by_expert.size(); ++e) {
    const auto& toks = by_expert[e];
    if (toks.empty()) continue;
    const int64_t cnt = static_cast<int64_t>(toks.size());
    Tensor xe = Tensor::empty({cnt, hidden}, DType::kF32);
    for (int64_t i = 0; i < cnt; ++i)
      std::memcpy(xe.data<float>() + i * hidden, x.data<float>() + toks[i].first * hidden, sizeof(float) * hidden);
    Tensor ye = mlp_forward(m.experts[e], xe);
    for (int64_t i = 0; i < cnt; ++i) {
      float* dst = out.data<float>() + toks[i].first * hidden;
      const float* src = ye.data<float>() + i * hidden;
      const float wgt = toks[i].second;
      for (int64_t c = 0; c < hidden; ++c) dst[c] += wgt * src[c];
    }
  }
  return out;
}

Result<Tensor> DeepseekV3Model::moe(int64_t layer, const Tensor& x, const ForwardOptions& opts) const {
  const auto& m = w_.layers[static_cast<size_t>(layer)].moe;
  const int64_t n = x.size(0), k = cfg_.num_experts_per_tok;
  Tensor logits = Tensor::empty({n, cfg_.n_routed_experts}, DType::kF32);
  Tensor ids = Tensor::empty({n, k}, DType::kI32), weights = Tensor::empty({n, k}, DType::kF32);
  {
    trace::ScopedSpan span("moe_gate");
    ops::linear(x, m.router, logits);
    ops::moe_gate(logits, m.correction_bias, cfg_.gate_params(), ids, weights);
  }
  Tensor out;
  if (opts.routed) {
    out = mlp_forward(m.shared, x);
    PDSERVE_RETURN_IF_ERROR(opts.routed->forward(layer, x, ids, weights, out));
  } else {
    if (m.experts.empty())
      return make_error(ErrorCode::kUnsupported,
                        "layer {}: the routed experts were not loaded here (dummy weights left to the GPU expert-parallel ranks)",
                        layer);
    out = moe_experts_forward(m, x, ids, weights);
  }
  if (auto* counts = opts.expert_counts) {
    auto& row = counts->per_layer[layer];
    row.assign(static_cast<size_t>(cfg_.n_routed_experts), 0);
    for (int64_t i = 0; i < n * k; ++i) {
      const int32_t e = ids.data<int32_t>()[i];
      if (e >= 0 && e < cfg_.n_routed_experts) ++row[static_cast<size_t>(e)];
    }
  }
  if (auto* trace = opts.routing) {
    auto& rows = trace->experts[layer];
    for (int64_t t = 0; t < n; ++t) {
      std::vector<int32_t> r(ids.data<int32_t>() + t * k, ids.data<int32_t>() + (t + 1) * k);
      std::sort(r.begin(), r.end());
      rows.push_back(std::move(r));
    }
  }
  return out;
}

Tensor DeepseekV3Model::attention(int64_t layer, const Tensor& x, const std::vector<SequenceInput>& batch,
                                  const Tensor& positions, LatentKvPool& pool, const ForwardOptions& opts) const {
  const auto& a = w_.layers[static_cast<size_t>(layer)].attn;
  const ops::MlaDims d = cfg_.mla_dims();
  const int64_t n = x.size(0), H = d.num_heads, qk = d.qk_head_dim(), latent_dim = d.latent_dim();

  // Queries [n, H, qk] with RoPE on the last qk_rope_head_dim of each head.
  Tensor q = Tensor::empty({n, H * qk}, DType::kF32);
  if (cfg_.q_lora_rank) {
    Tensor cq = Tensor::empty({n, *cfg_.q_lora_rank}, DType::kF32);
    ops::linear(x, a.q_a_proj, cq);
    ops::rms_norm(cq, a.q_a_layernorm, kMlaNormEps, cq);
    ops::linear(cq, a.q_b_proj, q);
  } else {
    ops::linear(x, a.q_proj, q);
  }
  Tensor q3 = q.reshape({n, H, qk});
  ops::apply_rope_interleaved(q3, d.qk_nope_head_dim, positions, rope_);

  // Latents [n, kv_lora + rope]: normalized c, then rotated k_pe (not normalized).
  Tensor latent = Tensor::empty({n, latent_dim}, DType::kF32);
  ops::linear(x, a.kv_a_proj_with_mqa, latent);
  Tensor c = Tensor::empty({n, d.kv_lora_rank}, DType::kF32);
  for (int64_t t = 0; t < n; ++t)
    std::memcpy(c.data<float>() + t * d.kv_lora_rank, latent.data<float>() + t * latent_dim, sizeof(float) * d.kv_lora_rank);
  ops::rms_norm(c, a.kv_a_layernorm, kMlaNormEps, c);
  for (int64_t t = 0; t < n; ++t)
    std::memcpy(latent.data<float>() + t * latent_dim, c.data<float>() + t * d.kv_lora_rank, sizeof(float) * d.kv_lora_rank);
  Tensor latent3 = latent.reshape({n, 1, latent_dim});
  ops::apply_rope_interleaved(latent3, d.kv_lora_rank, positions, rope_);

  Tensor& kv = pool.layer(layer);
  Tensor attn_out = Tensor::empty({n, H, d.v_head_dim}, DType::kF32);
  std::vector<size_t> decode_seqs;
  std::vector<int64_t> starts;
  int64_t start = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const auto& seq = batch[s];
    const int64_t len = static_cast<int64_t>(seq.tokens.size());
    starts.push_back(start);
    ops::kv_write(kv, seq.page_table, seq.prefix_len, latent.slice(0, start, start + len));
    if (len == 1 && (seq.prefix_len > 0 || opts.force_absorbed)) {
      decode_seqs.push_back(s);
    } else if (opts.force_absorbed) {
      // Absorbed prefill: each new token attends causally like a decode step of its own length.
      for (int64_t i = 0; i < len; ++i) {
        Tensor qi = q3.slice(0, start + i, start + i + 1).clone();
        Tensor oi = Tensor::empty({1, H, d.v_head_dim}, DType::kF32);
        ops::mla_decode(qi, kv, {seq.page_table}, {seq.prefix_len + i + 1}, a.w_uk, a.w_uv, d, softmax_scale_, oi);
        std::memcpy(attn_out.data<float>() + (start + i) * H * d.v_head_dim, oi.data<float>(), oi.nbytes());
      }
    } else {
      const int64_t total = seq.prefix_len + len;
      Tensor full = Tensor::empty({total, latent_dim}, DType::kF32);
      ops::kv_gather(kv, seq.page_table, total, full);
      Tensor qs = q3.slice(0, start, start + len).clone();
      Tensor os = Tensor::empty({len, H, d.v_head_dim}, DType::kF32);
      ops::mla_prefill(qs, full, a.kv_b_proj, d, seq.prefix_len, softmax_scale_, os);
      std::memcpy(attn_out.data<float>() + start * H * d.v_head_dim, os.data<float>(), os.nbytes());
    }
    start += len;
  }
  if (!decode_seqs.empty()) {
    const int64_t b = static_cast<int64_t>(decode_seqs.size());
    Tensor qd = Tensor::empty({b, H, qk}, DType::kF32);
    std::vector<std::vector<int32_t>> tables;
    std::vector<int64_t> lens;
    for (int64_t i = 0; i < b; ++i) {
      const auto& seq = batch[decode_seqs[i]];
      std::memcpy(qd.data<float>() + i * H * qk, q3.data<float>() + starts[decode_seqs[i]] * H * qk, sizeof(float) * H * qk);
      tables.push_back(seq.page_table);
      lens.push_back(seq.prefix_len + 1);
    }
    Tensor od = Tensor::empty({b, H, d.v_head_dim}, DType::kF32);
    ops::mla_decode(qd, kv, tables, lens, a.w_uk, a.w_uv, d, softmax_scale_, od);
    for (int64_t i = 0; i < b; ++i)
      std::memcpy(attn_out.data<float>() + starts[decode_seqs[i]] * H * d.v_head_dim,
                  od.data<float>() + i * H * d.v_head_dim, sizeof(float) * H * d.v_head_dim);
  }
  Tensor y = Tensor::empty({n, cfg_.hidden_size}, DType::kF32);
  ops::linear(attn_out.reshape({n, H * d.v_head_dim}), a.o_proj, y);
  return y;
}

Status validate_batch(const ModelConfig& cfg, const std::vector<SequenceInput>& batch, int64_t num_pages,
                      int64_t page_size) {
  if (batch.empty()) return make_error(ErrorCode::kInvalidArgument, "forward: empty batch");
  for (size_t s = 0; s < batch.size(); ++s) {
    const auto& seq = batch[s];
    if (seq.tokens.empty()) return make_error(ErrorCode::kInvalidArgument, "forward: sequence {} has no new tokens", s);
    const int64_t total = seq.prefix_len + static_cast<int64_t>(seq.tokens.size());
    if (static_cast<int64_t>(seq.page_table.size()) * page_size < total)
      return make_error(ErrorCode::kInvalidArgument, "forward: sequence {} needs {} cache slots, its page table covers {}",
                        s, total, seq.page_table.size() * page_size);
    for (int32_t p : seq.page_table)
      if (p < 0 || p >= num_pages)
        return make_error(ErrorCode::kInvalidArgument, "forward: sequence {} has page {} outside the pool", s, p);
    for (int32_t id : seq.tokens)
      if (id < 0 || id >= cfg.vocab_size)
        return make_error(ErrorCode::kInvalidArgument, "token id {} is out of range [0, {})", id, cfg.vocab_size);
  }
  return ok_status();
}

Status DeepseekV3Model::idle_forward(RoutedExperts& routed) const {
  const int64_t hidden = cfg_.hidden_size, k = cfg_.num_experts_per_tok;
  Tensor x = Tensor::empty({0, hidden}, DType::kF32), out = Tensor::empty({0, hidden}, DType::kF32);
  Tensor ids = Tensor::empty({0, k}, DType::kI32), weights = Tensor::empty({0, k}, DType::kF32);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    if (!w_.layers[static_cast<size_t>(l)].is_moe) continue;
    trace::ScopedSpan span("moe", static_cast<int32_t>(l));
    PDSERVE_RETURN_IF_ERROR(routed.forward(l, x, ids, weights, out));
  }
  return ok_status();
}

Status validate_batch_or_idle(const ModelConfig& cfg, const std::vector<SequenceInput>& batch, int64_t num_pages,
                              int64_t page_size, const std::function<Status()>& idle_pass) {
  Status valid = validate_batch(cfg, batch, num_pages, page_size);
  if (!valid.has_value() && idle_pass) {
    if (Status idle = idle_pass(); !idle.has_value())
      log::error("idle pass after a rejected batch failed: {}", idle.error().message());
  }
  return valid;
}

Result<Tensor> DeepseekV3Model::forward(const std::vector<SequenceInput>& batch, LatentKvPool& pool,
                                        const ForwardOptions& opts) const {
  std::function<Status()> idle;
  if (opts.routed) idle = [&] { return idle_forward(*opts.routed); };
  PDSERVE_RETURN_IF_ERROR(validate_batch_or_idle(cfg_, batch, pool.num_pages(), pool.page_size(), idle));
  int64_t n = 0;
  for (const auto& seq : batch) n += static_cast<int64_t>(seq.tokens.size());
  Tensor ids = Tensor::empty({n}, DType::kI32), positions = Tensor::empty({n}, DType::kI32);
  {
    int64_t t = 0;
    for (const auto& seq : batch)
      for (size_t i = 0; i < seq.tokens.size(); ++i, ++t) {
        ids.data<int32_t>()[t] = seq.tokens[i];
        positions.data<int32_t>()[t] = static_cast<int32_t>(seq.prefix_len + static_cast<int64_t>(i));
      }
  }
  const int64_t hidden = cfg_.hidden_size;
  Tensor h = Tensor::empty({n, hidden}, DType::kF32);
  {
    trace::ScopedSpan span("embed_tokens");
    ops::embedding(ids, w_.embed_tokens, h);
  }
  Tensor x = Tensor::empty({n, hidden}, DType::kF32);
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    // Span names follow the HF module names (model.layers.N.self_attn, .mlp, ...).
    trace::ScopedSpan layer_span("layers", static_cast<int32_t>(l));
    const auto& lw = w_.layers[static_cast<size_t>(l)];
    {
      trace::ScopedSpan span("input_layernorm");
      ops::rms_norm(h, lw.input_layernorm, eps, x);
    }
    {
      trace::ScopedSpan span("self_attn");
      ops::add_inplace(h, attention(l, x, batch, positions, pool, opts));
    }
    {
      trace::ScopedSpan span("post_attention_layernorm");
      ops::rms_norm(h, lw.post_attention_layernorm, eps, x);
    }
    trace::ScopedSpan span(lw.is_moe ? "moe" : "mlp");
    if (lw.is_moe) {
      PDSERVE_ASSIGN_OR_RETURN(Tensor y, moe(l, x, opts));
      ops::add_inplace(h, y);
    } else {
      ops::add_inplace(h, mlp_forward(lw.dense, x));
    }
  }
  // Final norm and lm_head only on the rows whose logits are wanted.
  Tensor rows;
  if (opts.all_logits) {
    rows = h;
  } else {
    rows = Tensor::empty({static_cast<int64_t>(batch.size()), hidden}, DType::kF32);
    int64_t end = 0;
    for (size_t s = 0; s < batch.size(); ++s) {
      end += static_cast<int64_t>(batch[s].tokens.size());
      std::memcpy(rows.data<float>() + s * hidden, h.data<float>() + (end - 1) * hidden, sizeof(float) * hidden);
    }
  }
  Tensor normed = Tensor::empty(rows.shape(), DType::kF32);
  {
    trace::ScopedSpan span("norm");
    ops::rms_norm(rows, w_.norm, eps, normed);
  }
  trace::ScopedSpan span("lm_head");
  Tensor logits = Tensor::empty({rows.size(0), cfg_.vocab_size}, DType::kF32);
  ops::linear(normed, w_.lm_head, logits);
  return logits;
}

}  // namespace pdserve::model
