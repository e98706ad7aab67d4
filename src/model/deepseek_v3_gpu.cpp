// DeepseekV3GpuModel: set-up (weights, memory planning, cache), the layers and eager passes, and the
// public entry points. The decode CUDA graphs are in deepseek_v3_gpu_graphs.cpp; the state both
// share is deepseek_v3_gpu_impl.h.
#include "model/deepseek_v3_gpu.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <map>

#include "base/logging.h"
#include "base/trace_spans.h"

#ifdef PDSERVE_HAVE_CUDA
#include "model/deepseek_v3_gpu_impl.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_gate.h"
#endif

namespace pdserve::model {

std::vector<int64_t> default_cuda_graph_bs(int64_t max_bs) {
  std::vector<int64_t> bs;
  for (int64_t b : {1, 2, 4}) bs.push_back(b);
  for (int64_t b = 8; b <= 256; b += 8) bs.push_back(b);
  for (int64_t b = 272; b <= 4096; b += 16) bs.push_back(b);
  std::vector<int64_t> out;
  for (int64_t b : bs)
    if (b <= max_bs) out.push_back(b);
  return out;
}

#ifdef PDSERVE_HAVE_CUDA

using ops::cuda::check;
static constexpr float kMlaNormEps = 1e-6f;  // HF's default eps for q_a / kv_a layernorms

bool cuda_device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

auto DeepseekV3GpuModel::Impl::upload(const HostInputs& h, DeviceArena& a) -> Inputs {
  std::vector<const std::vector<int32_t>*> parts = {&h.ids, &h.positions, &h.slots, &h.seq_lens, &h.page_table,
                                                    &h.cu_q, &h.cu_kv, &h.kv_batch, &h.kv_pos, &h.last_rows};
  std::vector<int32_t> flat;
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (const auto* p : parts) {
    spans.push_back({static_cast<int64_t>(flat.size()), static_cast<int64_t>(p->size())});
    flat.insert(flat.end(), p->begin(), p->end());
  }
  Tensor dev = a.take({std::max<int64_t>(1, static_cast<int64_t>(flat.size()))}, DType::kI32);
  check(cudaMemcpyAsync(dev.raw_data(), flat.data(), flat.size() * 4, cudaMemcpyHostToDevice, stream), "upload inputs");
  auto view = [&](size_t i) { return dev.slice(0, spans[i].first, spans[i].first + spans[i].second); };
  Inputs in{view(0), view(1), view(2), view(3), view(4), view(5), view(6), view(7), view(8), view(9)};
  const int64_t rows = static_cast<int64_t>(h.seq_lens.size());
  in.page_table = in.page_table.reshape({rows, h.max_pages});
  return in;
}

void DeepseekV3GpuModel::Impl::attention(int64_t l, const Tensor& x, const Inputs& in, const HostInputs& h, DeviceArena& a, bool decode, Tensor& residual) {
  const auto& lw = w.layers[static_cast<size_t>(l)];
  const auto& at = lw.attn;
  const int64_t T = x.size(0), H = dims.num_heads, qk = dims.qk_head_dim(), L = dims.kv_lora_rank;
  Tensor q = a.take({T, H * qk}, act);
  Tensor kv_a;  // [T, latent_dim]: the latent then k_pe (rows may be strided)
  if (cfg->q_lora_rank) {
    // One GEMM for q_a and kv_a (GpuLayerWeights::qkv_a); q_a's norm writes a contiguous copy for q_b.
    const int64_t ql = *cfg->q_lora_rank;
    Tensor qkv = a.take({T, ql + dims.latent_dim()}, act), cq = a.take({T, ql}, act);
    ops::linear(x, lw.qkv_a, qkv);
    ops::rms_norm(qkv.slice(1, 0, ql), at.q_a_layernorm, kMlaNormEps, cq);
    ops::linear(cq, at.q_b_proj, q);
    kv_a = qkv.slice(1, ql, ql + dims.latent_dim());
  } else {
    ops::linear(x, at.q_proj, q);
    kv_a = a.take({T, dims.latent_dim()}, act);
    ops::linear(x, at.kv_a_proj_with_mqa, kv_a);
  }
  Tensor latent = kv_a.slice(1, 0, L), k_pe = kv_a.slice(1, L, dims.latent_dim());
  ops::rms_norm(latent, at.kv_a_layernorm, kMlaNormEps, latent);
  Tensor q3 = q.reshape({T, H, qk}), pl = pool(l);
  ops::cuda::rope_kv_write(q3, dims.qk_nope_head_dim, latent, k_pe, in.positions, rope, in.slots, pl);

  Tensor out = a.take({T, H, dims.v_head_dim}, act);
  if (decode) {
    const int64_t bound = opts.context_length + 1;
    Tensor ws = a.take({std::max<int64_t>(1, ops::mla_decode_workspace_bytes(T, dims, bound, act))}, DType::kF8E4M3);
    ops::mla_decode_paged(q3, pl, in.page_table, in.seq_lens, at.w_uk, at.w_uv, dims, scale, out, bound, ws);
  } else {
    Tensor full = a.take({h.kv_tokens, dims.latent_dim()}, act);
    ops::kv_gather_paged(pl, in.page_table, in.kv_batch, in.kv_pos, full);
    Tensor ws = a.take({std::max<int64_t>(1, ops::mla_prefill_workspace_bytes(T, h.kv_tokens, dims, act, act))},
                       DType::kF8E4M3);
    ops::mla_prefill_varlen(q3, full, at.kv_b_proj, dims, in.cu_q, in.cu_kv, h.max_q, scale, out, ws);
  }
  ops::linear_add(out.reshape({T, H * dims.v_head_dim}), at.o_proj, residual);  // the GEMM adds into the residual
}

bool DeepseekV3GpuModel::Impl::experts_fp8(const GpuLayerWeights& lw) {
  return !lw.experts.empty() && lw.experts.gate_up.front().is_block_fp8();
}

void DeepseekV3GpuModel::Impl::mlp(const GpuMlp& m, const Tensor& x, DeviceArena& a, Tensor& residual) {
  const int64_t T = x.size(0), inter = m.inter();
  Tensor gu = a.take({T, 2 * inter}, act), h = a.take({T, inter}, act);
  ops::linear(x, m.gate_up, gu);  // one GEMM: gate then up columns (GpuMlp)
  ops::silu_mul(gu.slice(1, 0, inter), gu.slice(1, inter, 2 * inter), h);
  ops::linear_add(h, m.down, residual);  // the GEMM adds into the residual
}

void DeepseekV3GpuModel::Impl::moe(int64_t l, const Tensor& x, const Tensor& x_bf16, DeviceArena& a, bool masked, const Tensor& seq_lens, RoutingTrace* trace, Tensor& residual) {
  const auto& lw = w.layers[static_cast<size_t>(l)];
  const int64_t T = x.size(0), E = cfg->n_routed_experts, k = cfg->num_experts_per_tok, hid = cfg->hidden_size;
  const int64_t inter = cfg->moe_intermediate_size;
  Tensor logits = a.take({T, E}, DType::kF32);
  Tensor ids = a.take({T, k}, DType::kI32), wts = a.take({T, k}, DType::kF32);
  {
    trace::ScopedSpan span("moe_gate");
    ops::linear(x, lw.router, logits);
    ops::moe_gate(logits, lw.correction_bias, cfg->gate_params(), ids, wts);
    if (masked) ops::moe_drop_padding_rows(seq_lens, ids);
    if (expert_counts.defined()) {
      Tensor row = expert_counts.select(l);
      ops::moe_count(ids, row);  // padding rows are -1 here: not counted
    }
  }
  if (lw.shared.defined()) {
    trace::ScopedSpan span("shared_experts");
    mlp(lw.shared, x, a, residual);
  }
  // Routed experts uploaded by the EP ranks and no hook: only the warm-up at creation, which
  // sizes the arena (the EP path takes nothing more from it).
  if (!routed && lw.experts.empty()) return;
  trace::ScopedSpan routed_span("routed_experts");
  if (routed) {
    // Expert parallelism: the hook sends the bf16 rows to the experts' ranks, runs this rank's
    // experts on what it receives, and adds the weighted results back into the residual.
    throw_if_failed(routed->forward(l, x_bf16, ids, wts, residual));
    if (trace) record_routing(l, ids, T, k, *trace);
    return;
  }

  Tensor counts = a.take({E}, DType::kI32), slots = a.take({T, k}, DType::kI32);
  Tensor base;                           // first row of each expert's block
  std::vector<int64_t> offsets;          // packed layout only: host row offsets, E + 1 entries
  int64_t rows = E * T;
  if (masked) {
    base = masked_bases.at(T);
  } else {
    ops::moe_count(ids, counts);
    std::vector<int32_t> c(static_cast<size_t>(E) + 1);
    check(cudaMemcpyAsync(c.data(), counts.raw_data(), E * 4, cudaMemcpyDeviceToHost, stream), "moe counts");
    check(cudaStreamSynchronize(stream), "moe counts sync");
    offsets.assign(static_cast<size_t>(E) + 1, 0);
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + c[e];
    for (int64_t e = 0; e < E; ++e) c[e] = static_cast<int32_t>(offsets[e]);  // c becomes the bases
    rows = offsets[E];
    base = a.take({E}, DType::kI32);
    check(cudaMemcpyAsync(base.raw_data(), c.data(), E * 4, cudaMemcpyHostToDevice, stream), "moe bases");
  }
  // FP8 experts quantize their input rows per 128-group; from bf16 rows, as the EP dispatch
  // sends them (and as SGLang and HF, whose activations are bf16, do), so one GPU and EP ranks
  // compute the same products bit for bit. bf16 experts convert the f32 rows to bf16 anyway.
  const Tensor& xe = experts_fp8(lw) ? x_bf16 : x;
  Tensor xs = a.take({std::max<int64_t>(rows, 1), hid}, xe.dtype());
  ops::moe_scatter(xe, ids, base, xs, slots, counts);
  // gate|up rows [.., 2 * inter] (GpuExperts), their SiLU product h, the experts' outputs y.
  Tensor gu = a.take({std::max<int64_t>(rows, 1), 2 * inter}, act), h = a.take({std::max<int64_t>(rows, 1), inter}, act);
  Tensor y = a.take({std::max<int64_t>(rows, 1), hid}, act);
  if (masked) {
    Tensor gu3 = gu.reshape({E, T, 2 * inter}), h3 = h.reshape({E, T, inter}), y3 = y.reshape({E, T, hid});
    // Decode sizes: a few rows per chosen expert. The masked kernels read only the chosen
    // experts' weights; the masked GEMMs would run (and read) all E experts over all T rows.
    ops::grouped_masked_experts(xs.reshape({E, T, hid}), counts, lw.experts.gate_up, lw.experts.gate_up_table, gu3);
    // SiLU (straight to FP8 rows where the down kernel takes them), down; rows past the counts
    // stay stale, nothing reads them.
    ops::grouped_masked_silu_down(gu3, counts, lw.experts.down, lw.experts.down_table, h3, y3);
  } else if (rows > 0) {
    Tensor xr = xs.slice(0, 0, rows), gur = gu.slice(0, 0, rows), hr = h.slice(0, 0, rows), yr = y.slice(0, 0, rows);
    ops::grouped_linear_contiguous(xr, offsets, lw.experts.gate_up, gur);
    ops::silu_mul(gur.slice(1, 0, inter), gur.slice(1, inter, 2 * inter), hr);
    ops::grouped_linear_contiguous(hr, offsets, lw.experts.down, yr);
  }
  ops::moe_combine(y, slots, wts, residual);
  if (trace) record_routing(l, ids, T, k, *trace);
}

void DeepseekV3GpuModel::Impl::record_routing(int64_t l, const Tensor& ids, int64_t T, int64_t k, RoutingTrace& trace) {
  std::vector<int32_t> hid_ids(static_cast<size_t>(T * k));
  check(cudaMemcpyAsync(hid_ids.data(), ids.raw_data(), hid_ids.size() * 4, cudaMemcpyDeviceToHost, stream), "trace");
  check(cudaStreamSynchronize(stream), "trace sync");
  auto& out = trace.experts[l];
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> r(hid_ids.begin() + t * k, hid_ids.begin() + (t + 1) * k);
    std::sort(r.begin(), r.end());
    out.push_back(std::move(r));
  }
}

void DeepseekV3GpuModel::Impl::body(const Inputs& in, const HostInputs& h, DeviceArena& a, bool decode, bool masked, bool all_logits, RoutingTrace* trace, Tensor& logits) {
  const int64_t T = in.ids.size(0), hid = cfg->hidden_size;
  const float eps = static_cast<float>(cfg->rms_norm_eps);
  // CPU spans (base/trace_spans.h) time the launches on the host; the kernels' device times come
  // from CUPTI. A replayed CUDA graph runs none of this code, so it has no layer spans.
  Tensor resid = a.take({T, hid}, DType::kF32);
  {
    trace::ScopedSpan span("embed_tokens");
    ops::embedding(in.ids, w.embed_tokens, resid);
  }
  Tensor xb = a.take({T, hid}, act), xf = a.take({T, hid}, DType::kF32);
  for (int64_t l = 0; l < cfg->num_hidden_layers; ++l) {
    trace::ScopedSpan layer_span("layers", static_cast<int32_t>(l));
    const auto& lw = w.layers[static_cast<size_t>(l)];
    {
      trace::ScopedSpan span("input_layernorm");
      ops::rms_norm(resid, lw.input_layernorm, eps, xb);
    }
    {
      trace::ScopedSpan span("self_attn");
      attention(l, xb, in, h, a, decode, resid);
    }
    // The MoE's input in bf16 when its routed experts are FP8 or live on EP ranks: they take bf16
    // rows (see moe()), and so do the router and the shared expert then, as in SGLang, whose
    // activations are bf16. The router's GEMM is bf16 either way (its weight is bf16 and linear
    // rounds f32 rows to bf16), and the norm's bf16 output is that rounding, so the logits are the
    // ones an f32 input gives. Otherwise (bf16 experts of tiny test models, dense layers) f32, as
    // the CPU backend computes. (xb is free again once the attention has run.)
    const bool bf16_input = lw.is_moe && (routed || experts_fp8(lw));
    {
      trace::ScopedSpan span("post_attention_layernorm");
      ops::rms_norm(resid, lw.post_attention_layernorm, eps, bf16_input ? xb : xf);
    }
    trace::ScopedSpan span(lw.is_moe ? "moe" : "mlp");
    if (lw.is_moe)
      moe(l, bf16_input ? xb : xf, xb, a, masked, in.seq_lens, trace, resid);
    else
      mlp(lw.dense, xf, a, resid);
  }
  Tensor rows = resid;
  if (!all_logits && !decode) {
    rows = a.take({static_cast<int64_t>(in.last_rows.size(0)), hid}, DType::kF32);
    ops::embedding(in.last_rows, Weight{resid, Tensor()}, rows);
  }
  Tensor normed = a.take(rows.shape(), act);
  {
    trace::ScopedSpan span("norm");
    ops::rms_norm(rows, w.norm, eps, normed);
  }
  trace::ScopedSpan span("lm_head");
  ops::linear(normed, w.lm_head, logits);
}

Tensor DeepseekV3GpuModel::Impl::download(const Tensor& dev_logits, int64_t rows) {
  Tensor out;
  if (sampling) {
    out = sampler.sample(dev_logits.slice(0, 0, rows), *sampling, stream);
  } else {
    out = Tensor::empty({rows, cfg->vocab_size}, DType::kF32);
    check(cudaMemcpyAsync(out.raw_data(), dev_logits.raw_data(), out.nbytes(), cudaMemcpyDeviceToHost, stream), "logits");
    check(cudaStreamSynchronize(stream), "forward");
  }
  if (counts_out) report_counts(*counts_out);
  return out;
}

void DeepseekV3GpuModel::Impl::report_counts(ExpertCounts& out) {
  const int64_t L = cfg->num_hidden_layers, E = cfg->n_routed_experts;
  std::vector<int32_t> c(static_cast<size_t>(L * E));
  check(cudaMemcpyAsync(c.data(), expert_counts.raw_data(), c.size() * 4, cudaMemcpyDeviceToHost, stream),
        "expert counts");
  check(cudaStreamSynchronize(stream), "expert counts");
  out.per_layer.clear();
  for (int64_t l = 0; l < L; ++l)
    if (w.layers[static_cast<size_t>(l)].is_moe)
      out.per_layer[l].assign(c.begin() + l * E, c.begin() + (l + 1) * E);
}

void DeepseekV3GpuModel::Impl::warm_gemm_buckets(int64_t largest) {
  for (int64_t b = 1; b < largest; b *= 2) {
    std::vector<SequenceInput> batch(static_cast<size_t>(b));
    for (auto& s : batch) {
      s.tokens = {0};
      s.page_table = {0};
    }
    run_eager(batch, {});
  }
}

void DeepseekV3GpuModel::Impl::reserve_ep_buffers() {
  const int64_t hidden = cfg->hidden_size, k = cfg->num_experts_per_tok;
  idle_x = Tensor::empty({1, hidden}, DType::kBF16, Device::kCuda);
  idle_out = Tensor::empty({1, hidden}, DType::kF32, Device::kCuda);
  idle_ids = Tensor::empty({1, k}, DType::kI32, Device::kCuda);
  idle_w = Tensor::empty({1, k}, DType::kF32, Device::kCuda);
  sampler.reserve(opts.max_forward_tokens, stream);
}

Tensor DeepseekV3GpuModel::Impl::run_eager(const std::vector<SequenceInput>& batch, const ForwardOptions& o) {
  ops::cuda::set_current_stream(stream);
  const HostInputs h = flatten(batch, opts.page_size, 0, 0);
  const int64_t rows = o.all_logits ? h.tokens : h.seqs;
  for (;;) {
    try {
      arena.reset();
      const Inputs in = upload(h, arena);
      Tensor logits = arena.take({rows, cfg->vocab_size}, DType::kF32);
      body(in, h, arena, h.decode && !o.all_logits, false, o.all_logits, o.routing, logits);
      return download(logits, rows);
    } catch (const ArenaFull& f) {
      // Under EP a rerun would repeat exchanges the peers already finished (and growing frees
      // memory while their kernels wait for ours): the warm-up at creation sizes the arena.
      if (routed)
        throw std::runtime_error(fmt::format("this EP pass needs {} B more activation memory than the startup warm-up "
                                             "(a forward of --max-prefill-tokens tokens) reserved", f.needed));
      check(cudaStreamSynchronize(stream), "arena growth");
      const size_t want = std::max(f.needed * 2, arena.capacity() * 2);
      log::info("Growing the activation arena to {:.2f} GB", want / kGiB);
      arena.reserve(want);
      if (o.routing) o.routing->experts.clear();
    }
  }
}

DeepseekV3GpuModel::Impl::~Impl() {
  for (auto& [bs, exec] : graphs) cudaGraphExecDestroy(exec);
  if (stream) cudaStreamDestroy(stream);
  if (capture_stream) cudaStreamDestroy(capture_stream);
}


DeepseekV3GpuModel::DeepseekV3GpuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeepseekV3GpuModel::~DeepseekV3GpuModel() = default;
const ModelConfig& DeepseekV3GpuModel::config() const { return *impl_->cfg; }
int64_t DeepseekV3GpuModel::num_pages() const { return impl_->num_pages; }
int64_t DeepseekV3GpuModel::page_size() const { return impl_->opts.page_size; }
const GpuMemoryReport& DeepseekV3GpuModel::memory() const { return impl_->mem; }
Tensor DeepseekV3GpuModel::kv_cache() const { return impl_->kv; }
bool DeepseekV3GpuModel::last_forward_used_graph() const { return impl_->used_graph; }
bool DeepseekV3GpuModel::counts_experts() const { return impl_->expert_counts.defined(); }

Result<std::unique_ptr<DeepseekV3GpuModel>> DeepseekV3GpuModel::create(std::shared_ptr<const DeepseekV3Model> host,
                                                                       const GpuModelOptions& opts) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
    return make_error(ErrorCode::kUnsupported, "--device cuda: no CUDA device is visible");
  if (opts.device < 0 || opts.device >= count)
    return make_error(ErrorCode::kInvalidArgument, "GPU {} requested, {} visible", opts.device, count);
  if (!(opts.mem_fraction_static > 0 && opts.mem_fraction_static <= 1))
    return make_error(ErrorCode::kInvalidArgument, "--mem-fraction-static must be in (0, 1], got {}", opts.mem_fraction_static);
  if (opts.page_size < 1) return make_error(ErrorCode::kInvalidArgument, "page size must be >= 1");
  if (host->weights().dummy_experts_seed && !opts.routed_experts_elsewhere)
    return make_error(ErrorCode::kInvalidArgument, "the model's routed experts were left to expert-parallel ranks; "
                      "this GPU model needs them all");
  StreamScope scope;
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.host = std::move(host);
  m.cfg = &m.host->config();
  m.opts = opts;
  std::sort(m.opts.cuda_graph_bs.begin(), m.opts.cuda_graph_bs.end());
  m.opts.cuda_graph_bs.erase(std::unique(m.opts.cuda_graph_bs.begin(), m.opts.cuda_graph_bs.end()), m.opts.cuda_graph_bs.end());
  try {
    check(cudaSetDevice(opts.device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "stream");
    check(cudaStreamCreateWithFlags(&m.capture_stream, cudaStreamNonBlocking), "stream");
    size_t free_b = 0, total_b = 0;
    check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    m.mem.total_gb = total_b / kGiB;
    const size_t free_at_start = free_b;
    log::info("Load weight begin. avail mem={:.2f} GB", free_b / kGiB);
    m.w = upload_weights(*m.cfg, m.host->weights(), !opts.routed_experts_elsewhere);
    m.mem.weights_gb = m.w.bytes / kGiB;
    log::info("Load weight end. type=DeepseekV3ForCausalLM, dtype=torch.bfloat16, avail mem={:.2f} GB, mem usage={:.2f} GB.",
              avail_gb(), m.mem.weights_gb);
    m.rope = ops::make_rope_table(m.cfg->rope);
    m.dims = m.cfg->mla_dims();
    m.scale = m.cfg->softmax_scale();

    // The activation arena, sized by a warm-up prefill of the largest forward against a one-page
    // cache (every token's slot on page 0: the contents are garbage and never read again).
    const int64_t latent = m.dims.latent_dim(), L = m.cfg->num_hidden_layers;
    m.kv = Tensor::empty({L, 1, m.opts.page_size, latent}, m.act, Device::kCuda);
    m.num_pages = 1;
    if (opts.count_experts) {
      m.expert_counts = Tensor::empty({L, m.cfg->n_routed_experts}, DType::kI32, Device::kCuda);
      check(cudaMemsetAsync(m.expert_counts.raw_data(), 0, m.expert_counts.nbytes(), m.stream), "expert counts");
    }
    {
      SequenceInput warm;
      const int64_t n = std::max<int64_t>(1, std::min(opts.max_forward_tokens, opts.context_length));
      warm.tokens.assign(static_cast<size_t>(n), 0);
      warm.page_table.assign(static_cast<size_t>((n + m.opts.page_size - 1) / m.opts.page_size), 0);
      m.arena.reserve(size_t{64} << 20);
      m.run_eager({warm}, {});
      if (m.opts.routed_experts_elsewhere) m.warm_gemm_buckets(n);
    }
    m.kv = Tensor();

    // The cache: what is left of the static fraction after weights and activations.
    check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    const double reserve = static_cast<double>(total_b) * (1.0 - opts.mem_fraction_static);
    // EP ranks sharing this GPU and created after this model each need what this one took so
    // far (weights, activations) and an equal share of the cache.
    const double own = static_cast<double>(free_at_start) - static_cast<double>(free_b);
    const int later = std::max(0, opts.later_models_on_device);
    const double kv_budget = (static_cast<double>(free_b) - reserve - later * own) / (later + 1);
    const int64_t token_bytes = L * latent * static_cast<int64_t>(dtype_size(m.act));
    int64_t tokens = kv_budget > 0 ? static_cast<int64_t>(kv_budget / static_cast<double>(token_bytes)) : 0;
    if (opts.max_total_tokens > 0) tokens = std::min(tokens, opts.max_total_tokens);
    m.num_pages = tokens / m.opts.page_size;
    if (m.num_pages < 2)
      return make_error(ErrorCode::kInvalidArgument,
                        "not enough GPU memory for the KV cache: {:.2f} GB free after weights and activations, "
                        "{:.2f} GB kept back by --mem-fraction-static {}; raise the fraction or use a smaller model",
                        free_b / kGiB, reserve / kGiB, opts.mem_fraction_static);
    m.kv = Tensor::empty({L, m.num_pages, m.opts.page_size, latent}, m.act, Device::kCuda);
    if (m.opts.routed_experts_elsewhere) m.reserve_ep_buffers();
    m.mem.max_total_num_tokens = m.num_pages * m.opts.page_size;
    m.mem.kv_gb = m.kv.nbytes() / kGiB;
    log::info("KV Cache is allocated. #tokens: {}, KV size: {:.2f} GB", m.mem.max_total_num_tokens, m.mem.kv_gb);
    log::info("Memory pool end. avail mem={:.2f} GB", avail_gb());

    m.mem.avail_gb = avail_gb();
    // EP models capture once their hook is set (capture_routed_graphs).
    if (!m.opts.cuda_graph_bs.empty() && !m.opts.routed_experts_elsewhere) m.capture_logged(nullptr);
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInternal, "GPU model setup failed: {}", e.what());
  }
  return std::unique_ptr<DeepseekV3GpuModel>(new DeepseekV3GpuModel(std::move(impl)));
}

namespace {
// The hook and counts output of one forward, set on the model for the call's duration.
struct RoutedScope {
  DeepseekV3GpuModel::Impl* impl;
  ~RoutedScope() {
    impl->routed = nullptr;
    impl->counts_out = nullptr;
  }
};
}  // namespace

void DeepseekV3GpuModel::set_routed_experts(std::shared_ptr<RoutedExperts> routed) {
  impl_->routed_default = std::move(routed);
}

// Checks the batch (validate_batch_or_idle) and picks the forward's routed-experts hook.
static Status begin_forward(DeepseekV3GpuModel& model, DeepseekV3GpuModel::Impl& m, const std::vector<SequenceInput>& batch,
                            const ForwardOptions& opts) {
  check(cudaSetDevice(m.opts.device), "cudaSetDevice");  // rank threads may serve different GPUs
  RoutedExperts* routed = opts.routed ? opts.routed : m.routed_default.get();
  if (!routed && m.opts.routed_experts_elsewhere)
    return make_error(ErrorCode::kInternal, "this GPU model's routed experts live with the EP ranks, and no hook was set");
  std::function<Status()> idle;
  if (routed) idle = [&] { return model.idle_forward(*routed); };
  PDSERVE_RETURN_IF_ERROR(validate_batch_or_idle(*m.cfg, batch, m.num_pages, m.opts.page_size, idle));
  if (opts.expert_counts && !m.expert_counts.defined())
    return make_error(ErrorCode::kInternal, "expert counts asked of a GPU model created without count_experts");
  m.routed = routed;
  m.counts_out = opts.expert_counts;
  return ok_status();
}

Status DeepseekV3GpuModel::capture_routed_graphs() {
  Impl& m = *impl_;
  if (!m.opts.routed_experts_elsewhere || m.opts.cuda_graph_bs.empty()) return ok_status();
  if (!m.routed_default)
    return make_error(ErrorCode::kInternal, "capture_routed_graphs: set the routed-experts hook (set_routed_experts) first");
  if (!m.graphs.empty()) return make_error(ErrorCode::kInternal, "capture_routed_graphs: the graphs are captured already");
  StreamScope scope;
  try {
    check(cudaSetDevice(m.opts.device), "cudaSetDevice");
    m.capture_logged(m.routed_default.get());
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInternal, "GPU EP graph capture failed: {}", e.what());
  }
  return ok_status();
}

Status DeepseekV3GpuModel::idle_forward(RoutedExperts& routed) {
  StreamScope scope;
  Impl& m = *impl_;
  try {
    check(cudaSetDevice(m.opts.device), "cudaSetDevice");
    ops::cuda::set_current_stream(m.stream);
    if (!m.idle_x.defined()) m.reserve_ep_buffers();  // a model made without routed_experts_elsewhere
    const Tensor x = m.idle_x.slice(0, 0, 0), ids = m.idle_ids.slice(0, 0, 0), w = m.idle_w.slice(0, 0, 0);
    Tensor out = m.idle_out.slice(0, 0, 0);
    for (int64_t l = 0; l < m.cfg->num_hidden_layers; ++l) {
      if (!m.w.layers[static_cast<size_t>(l)].is_moe) continue;
      trace::ScopedSpan span("moe", static_cast<int32_t>(l));
      PDSERVE_RETURN_IF_ERROR(routed.forward(l, x, ids, w, out));
    }
    check(cudaStreamSynchronize(m.stream), "idle pass");
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInternal, "GPU idle pass failed: {}", e.what());
  }
  return ok_status();
}

Result<Tensor> DeepseekV3GpuModel::forward(const std::vector<SequenceInput>& batch, const ForwardOptions& opts) {
  StreamScope scope;
  RoutedScope routed_scope{impl_.get()};
  try {
    PDSERVE_RETURN_IF_ERROR(begin_forward(*this, *impl_, batch, opts));
    const int64_t bs = impl_->graph_bs(batch, opts);
    impl_->used_graph = bs > 0;
    return bs > 0 ? impl_->run_graph(batch, bs) : impl_->run_eager(batch, opts);
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInternal, "GPU forward failed: {}", e.what());
  }
}

Result<std::vector<int32_t>> DeepseekV3GpuModel::forward_sample(const std::vector<SequenceInput>& batch,
                                                                const std::vector<RowSampling>& rows,
                                                                RoutingTrace* routing, ExpertCounts* counts) {
  if (rows.size() != batch.size())
    return make_error(ErrorCode::kInvalidArgument, "forward_sample: {} sampling rows for {} sequences", rows.size(),
                      batch.size());
  impl_->sampling = &rows;
  struct Reset {
    Impl* impl;
    ~Reset() { impl->sampling = nullptr; }
  } reset{impl_.get()};
  ForwardOptions opts;
  opts.routing = routing;
  opts.expert_counts = counts;
  auto ids = forward(batch, opts);
  if (!ids) return ids.error();
  return std::vector<int32_t>(ids->data<int32_t>(), ids->data<int32_t>() + ids->numel());
}

Result<Tensor> DeepseekV3GpuModel::forward_eager(const std::vector<SequenceInput>& batch, const ForwardOptions& opts,
                                                 bool graph_layout) {
  StreamScope scope;
  RoutedScope routed_scope{impl_.get()};
  try {
    PDSERVE_RETURN_IF_ERROR(begin_forward(*this, *impl_, batch, opts));
    impl_->used_graph = false;
    if (graph_layout) {
      const int64_t bs = impl_->graph_bs(batch, opts);
      if (bs == 0) return make_error(ErrorCode::kInvalidArgument, "forward_eager: no captured graph fits this batch");
      ops::cuda::set_current_stream(impl_->stream);
      impl_->fill_static(batch, bs);
      impl_->static_decode(bs, impl_->graph_arena);
      return impl_->download(impl_->st.logits, static_cast<int64_t>(batch.size()));
    }
    return impl_->run_eager(batch, opts);
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInternal, "GPU forward failed: {}", e.what());
  }
}

#endif  // PDSERVE_HAVE_CUDA

}  // namespace pdserve::model
