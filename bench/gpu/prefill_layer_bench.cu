// One prefill layer of one EP32 rank of DeepSeek-V3 on one GPU: the prefill counterpart of
// layer_bench.cu (decode). In one run: the card's ceilings, then the layer as the sequence of pdserve
// ops the GPU model's prefill forward calls (src/model/deepseek_v3_gpu.cpp: attention()'s prefill
// branch, the post-attention norms of body(), moe() with the shared expert's mlp(); the EP rank's
// experts as GpuEpExperts::forward_normal runs them on DeepEP's normal-mode receive), with the
// shapes read from models/deepseek-v3/config.json, FP8 128x128 block-scaled weights, bf16
// activations, a bf16 latent cache in 64-token pages:
//   16,384 tokens = 4 prompts x 4,096, causal, no cached prefix;
//   9 local experts (DeepSeek's deployment: 256 experts + 32 redundant = 288 slots over 32 ranks)
//   x 14,564 rows each = 16,384 tokens x top-8 x 32 ranks / 288 slots (balanced, rounded);
//   the shared expert over the 16,384 tokens.
// As the model keeps its weights (model/gpu_weights.h): q_a|kv_a one fused [1536 + 576, 7168] GEMM,
// gate|up one fused [2 x 2048, 7168] GEMM (shared expert and each local expert) whose two halves
// SiLU reads as row-strided views; the unfused forms are reference rows.
//
// Each op is timed alone (eager launches, median of 15: at milliseconds per op the launch cost is
// noise), each block and the whole layer eagerly and as ONE CUDA graph (the contiguous expert GEMMs
// take host offsets, so they capture once warmed up). Correctness: the layer's output from an eager
// run and from the graph replay must agree, and two rows of one expert are recomputed on the CPU.
//
// Not run: DeepEP's normal dispatch and combine across GPUs (one GPU). The experts read a fixed bf16
// [9 x 14564, 7168] slab laid out by expert, standing in for the received rows after
// forward_normal's moe_scatter (timed as a reference row); ops::moe_combine of the expert rows into
// the 16,384 tokens' residual stands in for the combine's weighted sum.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/config.h"
#include "ops/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/rope.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_gate.h"
#include "ops/quant.h"
#include "ops/rope.h"
#include "tensor/dtype.h"
#include "tensor/tensor.h"
#include "bench_util.cuh"
#include "layer_util.cuh"

namespace {

using namespace pdserve;
using ops::cuda::check;
using namespace pdserve::bench;

constexpr int64_t kPrompts = 4, kPromptLen = 4096, kTokens = kPrompts * kPromptLen, kPageSize = 64;
constexpr int64_t kRanks = 32, kSlots = 288, kLocalExperts = kSlots / kRanks;
// 16384 x 8 x 32 / 288 = 14563.6: the balanced share of one physical expert slot, rounded.
constexpr int64_t kRowsPerExpert = (kTokens * 8 * kRanks + kSlots / 2) / kSlots;
constexpr int kLayerSamples = 20;
constexpr double kGoalMs = 25.0, kTorchMs = 34.7, kSglangMs = 42.8, kDeepSeekMs = 34.6;

// ---- the layer ----

enum class Ceil { kFp8, kBf16, kMemory };

struct Op {
  std::string name, call, shape;
  int block;  // 0 attention, 1 MoE, 2 reference (timed alone, not part of the layer)
  double flops, bytes;
  Ceil ceil;
  std::function<void()> f;
};

struct Layer {
  model::ModelConfig cfg;
  ops::MlaDims d;
  ops::RopeTable rope;
  float scale = 0, eps = 0;
  int64_t H = 0, QL = 0, inter = 0, pages = 0, rows = 0;
  double bytes = 0;  // everything build() allocates
  // weights
  Tensor ln_in, ln_post, q_a_ln, kv_a_ln, bias;
  Weight qkv_a, q_a, kv_a, q_b, kv_b, o_proj, router, sh_gate_up, sh_down;  // q_a, kv_a: row views of qkv_a
  std::vector<Weight> e_gate_up, e_down, e_gate, e_up;  // e_gate, e_up: row halves of e_gate_up
  std::vector<int64_t> offsets;                         // host row offsets of the local experts
  // cache and prefill inputs (as gpu_host_inputs builds them for 4 fresh prompts)
  Tensor pool, table, positions, slots, kv_batch, kv_pos, cu;
  // activations: resid0 is the layer's input, resid its in-place residual (the model's f32 stream)
  Tensor resid0, resid, xb, qkv, cq, q, kva, full, ws, attn, logits, ids, wts, sgu, sh;
  Tensor xe, egu, eh, ye, combine_slots, scatter_ids, row_base, scatter_slots, scatter_counts;
  std::vector<Op> ops;

  explicit Layer(model::ModelConfig c) : cfg(std::move(c)) {}
  void build();
  void run_block(int block) const {
    for (const Op& op : ops)
      if (op.block == block) op.f();
  }
  void run_layer() const {
    run_block(0);
    run_block(1);
  }
};

void check_config(const model::ModelConfig& cfg) {
  if (cfg.hidden_size != 7168 || !cfg.q_lora_rank || *cfg.q_lora_rank != 1536 || cfg.kv_lora_rank != 512 ||
      cfg.qk_rope_head_dim != 64 || cfg.qk_nope_head_dim != 128 || cfg.v_head_dim != 128 || cfg.num_attention_heads != 128 ||
      cfg.moe_intermediate_size != 2048 || cfg.n_routed_experts != 256 || cfg.num_experts_per_tok != 8 || cfg.n_group != 8 ||
      cfg.topk_group != 4 || cfg.n_shared_experts != 1 || !cfg.quantization || cfg.quantization->block_rows != 128 ||
      cfg.quantization->block_cols != 128)
    fail("config is not DeepSeek-V3's (hidden 7168, q_lora 1536, kv_lora 512, 128 heads, 256 experts top-8, fp8 128x128)");
}

void Layer::build() {
  d = cfg.mla_dims();
  rope = ops::make_rope_table(cfg.rope);
  scale = cfg.softmax_scale();
  eps = static_cast<float>(cfg.rms_norm_eps);
  const float mla_eps = 1e-6f;  // deepseek_v3_gpu.cpp's kMlaNormEps
  H = cfg.hidden_size, QL = *cfg.q_lora_rank, inter = cfg.moe_intermediate_size;
  const int64_t T = kTokens, NH = d.num_heads, qk = d.qk_head_dim(), L = d.kv_lora_rank, lat = d.latent_dim();
  const int64_t E = cfg.n_routed_experts, K = cfg.num_experts_per_tok, G = kLocalExperts, M = kRowsPerExpert;
  rows = G * M;
  const int64_t kv_rows = NH * (d.qk_nope_head_dim + d.v_head_dim);
  const DType f8 = DType::kF8E4M3, bf = DType::kBF16, f32 = DType::kF32, i32 = DType::kI32;
  const Device dev = Device::kCuda;
  uint64_t seed = 1;
  auto T_ = [this](Tensor t) { bytes += static_cast<double>(t.nbytes()); return t; };
  auto W_ = [this](Weight w) {
    bytes += static_cast<double>(w.weight.nbytes()) + (w.scale_inv.defined() ? static_cast<double>(w.scale_inv.nbytes()) : 0);
    return w;
  };
  auto empty = [&](const Shape& s, DType dt) { return T_(Tensor::empty(s, dt, dev)); };

  // Weights in the forms gpu_weights.cpp uploads: fp8 block-scaled projections (kv_b too: the
  // prefill expands it), bf16 norms and router, f32 correction bias.
  ln_in = T_(device_tensor({H}, bf, seed++, 0.8f, 1.2f)), ln_post = T_(device_tensor({H}, bf, seed++, 0.8f, 1.2f));
  q_a_ln = T_(device_tensor({QL}, bf, seed++, 0.8f, 1.2f)), kv_a_ln = T_(device_tensor({L}, bf, seed++, 0.8f, 1.2f));
  // q_a and kv_a fused as GpuLayerWeights::qkv_a: q_a's 1536 rows (12 whole scale blocks), then
  // kv_a's 576; the two alone are views of it (the unfused reference row).
  qkv_a = W_(device_weight(QL + lat, H, f8, seed += 2));
  q_a = {qkv_a.weight.slice(0, 0, QL), qkv_a.scale_inv.slice(0, 0, QL / 128)};
  kv_a = {qkv_a.weight.slice(0, QL, QL + lat), qkv_a.scale_inv.slice(0, QL / 128, qkv_a.scale_inv.size(0))};
  q_b = W_(device_weight(NH * qk, QL, f8, seed += 2)), kv_b = W_(device_weight(kv_rows, L, f8, seed += 2));
  o_proj = W_(device_weight(H, NH * d.v_head_dim, f8, seed += 2));
  router = W_(device_weight(E, H, bf, seed += 2)), bias = T_(device_tensor({E}, f32, seed++, -0.05f, 0.05f));
  sh_gate_up = W_(device_weight(2 * inter, H, f8, seed += 2)), sh_down = W_(device_weight(H, inter, f8, seed += 2));
  for (int64_t g = 0; g < G; ++g) {
    e_gate_up.push_back(W_(device_weight(2 * inter, H, f8, seed += 2)));
    e_down.push_back(W_(device_weight(H, inter, f8, seed += 2)));
    const Weight& w = e_gate_up.back();  // the halves as views: the two-GEMM reference row
    e_gate.push_back({w.weight.slice(0, 0, inter), w.scale_inv.slice(0, 0, inter / 128)});
    e_up.push_back({w.weight.slice(0, inter, 2 * inter), w.scale_inv.slice(0, inter / 128, 2 * inter / 128)});
  }
  for (int64_t g = 0; g <= G; ++g) offsets.push_back(g * M);

  // Paged bf16 latent cache, 64 pages per prompt shuffled over the pool; token t of prompt b at
  // position t, its slot in page table[b][t / 64].
  const int64_t pages_per_seq = kPromptLen / kPageSize;
  pages = kPrompts * pages_per_seq;
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(1));
  pool = T_(device_tensor({pages, kPageSize, lat}, bf, seed++));
  table = T_(i32_device(perm, {kPrompts, pages_per_seq}));
  std::vector<int32_t> pos_v(static_cast<size_t>(T)), slot_v(pos_v), batch_v(pos_v), cu_v;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = t / kPromptLen, p = t % kPromptLen;
    pos_v[t] = static_cast<int32_t>(p), batch_v[t] = static_cast<int32_t>(b);
    slot_v[t] = static_cast<int32_t>(perm[b * pages_per_seq + p / kPageSize] * kPageSize + p % kPageSize);
  }
  for (int64_t b = 0; b <= kPrompts; ++b) cu_v.push_back(static_cast<int32_t>(b * kPromptLen));
  positions = T_(i32_device(pos_v, {T})), slots = T_(i32_device(slot_v, {T}));
  kv_batch = T_(i32_device(batch_v, {T})), kv_pos = positions, cu = T_(i32_device(cu_v, {kPrompts + 1}));

  resid0 = T_(device_tensor({T, H}, f32, seed++)), resid = empty({T, H}, f32);
  xb = empty({T, H}, bf);
  qkv = empty({T, QL + lat}, bf), cq = empty({T, QL}, bf), q = empty({T, NH * qk}, bf), full = empty({T, lat}, bf);
  kva = empty({T, lat}, bf);  // the unfused reference row's kv_a output
  ws = empty({std::max<int64_t>(1, ops::mla_prefill_workspace_bytes(T, T, d, bf, bf))}, f8);
  attn = empty({T, NH, d.v_head_dim}, bf);
  logits = empty({T, E}, f32), ids = empty({T, K}, i32), wts = empty({T, K}, f32);
  sgu = empty({T, 2 * inter}, bf), sh = empty({T, inter}, bf);
  // The experts' rows, contiguous by expert (forward_normal's xc_ after its moe_scatter).
  xe = T_(device_tensor({rows, H}, bf, seed++));
  egu = empty({rows, 2 * inter}, bf), eh = empty({rows, inter}, bf), ye = empty({rows, H}, bf);
  // Choice i = t * 8 + j -> row (i % 9) * M + i / 9: a bijection of the 131,072 choices onto all
  // but 4 of the 131,076 rows, each token's 8 rows in 8 different experts (as real routing).
  std::vector<int32_t> cs(static_cast<size_t>(T * K)), sid(static_cast<size_t>(T * K)), rb;
  for (int64_t i = 0; i < T * K; ++i) {
    cs[i] = static_cast<int32_t>((i % G) * M + i / G);
    sid[i] = static_cast<int32_t>(i % G);
  }
  for (int64_t g = 0; g < G; ++g) rb.push_back(static_cast<int32_t>(g * M));
  combine_slots = T_(i32_device(cs, {T, K})), scatter_ids = T_(i32_device(sid, {T, K})), row_base = T_(i32_device(rb, {G}));
  scatter_slots = empty({T, K}, i32), scatter_counts = empty({G}, i32);
  check(cudaStreamSynchronize(ops::cuda::current_stream()), "set-up");

  // Views the ops read or write through (non-const lvalues for the in-place calls).
  Tensor qa = qkv.slice(1, 0, QL), latent = qkv.slice(1, QL, QL + L), k_pe = qkv.slice(1, QL + L, QL + lat);
  Tensor q3 = q.reshape({T, NH, qk}), cq2 = cq;
  Tensor attn2 = attn.reshape({T, NH * d.v_head_dim});
  Tensor sg = sgu.slice(1, 0, inter), su = sgu.slice(1, inter, 2 * inter);
  Tensor eg = egu.slice(1, 0, inter), eu = egu.slice(1, inter, 2 * inter);
  Tensor eg2 = egu.reshape({2 * rows, inter}).slice(0, 0, rows), eu2 = egu.reshape({2 * rows, inter}).slice(0, rows, 2 * rows);
  const double t = static_cast<double>(T), h = static_cast<double>(H), r = static_cast<double>(rows);
  auto add = [&](const std::string& name, const std::string& call, const std::string& shape, int block,
                 std::pair<double, double> cost, Ceil c, std::function<void()> f) {
    ops.push_back({name, call, shape, block, cost.first, cost.second, c, std::move(f)});
  };
  auto lin = [&](const std::string& name, int block, Tensor x, Weight w, Tensor y) {
    const bool fp8 = w.is_block_fp8();
    add(name, "ops::linear", dims({x.size(0), w.rows(), w.cols()}), block,
        gemm_cost(x.size(0), w.rows(), w.cols(), dtype_size(x.dtype()), dtype_size(y.dtype()), fp8), fp8 ? Ceil::kFp8 : Ceil::kBf16,
        [x, w, y]() mutable { ops::linear(x, w, y); });
  };
  // y += x W^T into the f32 residual (ops::linear_add: the GEMM's epilogue adds; y read and written).
  auto lin_add = [&](const std::string& name, int block, Tensor x, Weight w, Tensor y) {
    const bool fp8 = w.is_block_fp8();
    auto cost = gemm_cost(x.size(0), w.rows(), w.cols(), dtype_size(x.dtype()), 8, fp8);
    add(name, "ops::linear_add", dims({x.size(0), w.rows(), w.cols()}), block, cost, fp8 ? Ceil::kFp8 : Ceil::kBf16,
        [x, w, y]() mutable { ops::linear_add(x, w, y); });
  };
  auto experts = [&](const std::string& name, int block, Tensor x, const std::vector<Weight>* w, Tensor y) {
    const Weight& w0 = w->front();
    add(name, "ops::grouped_linear_contiguous", "9x" + std::to_string(M) + " x " + dims({w0.rows(), w0.cols()}), block,
        gemm_cost(r, w0.rows(), w0.cols(), 2, 2, true, static_cast<double>(w->size())), Ceil::kFp8,
        [this, x, w, y]() mutable { ops::grouped_linear_contiguous(x, offsets, *w, y); });
  };

  // Attention block: body()'s input_layernorm, then attention()'s prefill branch.
  add("input_layernorm", "ops::rms_norm f32->bf16", dims({T, H}), 0, {0, t * h * 6}, Ceil::kMemory,
      [this] { ops::rms_norm(resid, ln_in, eps, xb); });
  lin("q_a|kv_a_proj (fused)", 0, xb, qkv_a, qkv);
  add("q_a_layernorm", "ops::rms_norm strided->bf16", dims({T, QL}), 0, {0, t * QL * 4.0}, Ceil::kMemory,
      [this, qa, mla_eps] { ops::rms_norm(qa, q_a_ln, mla_eps, cq); });
  lin("q_b_proj", 0, cq, q_b, q);
  add("kv_a_layernorm", "ops::rms_norm bf16 in place", dims({T, L}), 0, {0, t * L * 4.0}, Ceil::kMemory,
      [this, latent, mla_eps]() mutable { ops::rms_norm(latent, kv_a_ln, mla_eps, latent); });
  add("rope q,k_pe + KV write", "ops::cuda::rope_kv_write", "16384 tok into pages", 0,
      {0, t * NH * d.qk_rope_head_dim * 4.0 + t * lat * 4.0}, Ceil::kMemory, [this, q3, latent, k_pe]() mutable {
        ops::cuda::rope_kv_write(q3, d.qk_nope_head_dim, latent, k_pe, positions, rope, slots, pool);
      });
  add("KV gather (no prefix)", "ops::kv_gather_paged", dims({T, lat}), 0, {0, t * lat * 4.0}, Ceil::kMemory,
      [this] { ops::kv_gather_paged(pool, table, kv_batch, kv_pos, full); });
  // kv_b expansion (bf16 GEMM after converting kv_b) + causal flash attention, as attention_bench.
  const double pairs = kPrompts * kPromptLen * (kPromptLen + 1) / 2.0;
  const double mla_flops = 2.0 * t * L * kv_rows + pairs * NH * 2.0 * (qk + d.v_head_dim);
  const double mla_bytes = t * lat * 2.0 + kv_rows * L + 2 * t * kv_rows * 2.0 + t * NH * (qk + d.v_head_dim) * 2.0;
  add("MLA prefill (kv_b, flash)", "ops::mla_prefill_varlen", "4x4096 causal 128h", 0, {mla_flops, mla_bytes}, Ceil::kBf16,
      [this, q3]() mutable { ops::mla_prefill_varlen(q3, full, kv_b, d, cu, cu, kPromptLen, scale, attn, ws); });
  lin_add("o_proj (+= residual)", 0, attn2, o_proj, resid);

  // MoE block: post_attention_layernorm in bf16 (FP8 experts: the router, the shared expert and the
  // dispatch all read it, as body() does), router, gate, shared expert, the local experts on the
  // received slab, the combine stand-in.
  add("post_attention_layernorm", "ops::rms_norm f32->bf16", dims({T, H}), 1, {0, t * h * 6}, Ceil::kMemory,
      [this] { ops::rms_norm(resid, ln_post, eps, xb); });
  lin("router (bf16 W, bf16 x)", 1, xb, router, logits);
  const ops::MoeGateParams gp = cfg.gate_params();
  add("noaux_tc gate", "ops::moe_gate", "16384x256 -> top8", 1, {0, t * E * 4.0 + t * K * 8.0}, Ceil::kMemory,
      [this, gp] { ops::moe_gate(logits, bias, gp, ids, wts); });
  lin("shared gate|up (fused)", 1, xb, sh_gate_up, sgu);
  add("shared silu*mul (halves)", "ops::silu_mul bf16 strided", dims({T, inter}), 1, {0, t * inter * 6.0}, Ceil::kMemory,
      [this, sg, su] { ops::silu_mul(sg, su, sh); });
  lin_add("shared down_proj (+= residual)", 1, sh, sh_down, resid);
  experts("experts gate|up (fused)", 1, xe, &e_gate_up, egu);
  add("experts silu*mul (halves)", "ops::silu_mul bf16 strided", dims({rows, inter}), 1, {0, r * inter * 6.0},
      Ceil::kMemory, [this, eg, eu] { ops::silu_mul(eg, eu, eh); });
  experts("experts down_proj", 1, eh, &e_down, ye);
  add("combine stand-in (+ residual)", "ops::moe_combine", "131072 rows -> 16384", 1, {0, t * K * h * 2 + t * h * 8},
      Ceil::kMemory, [this] { ops::moe_combine(ye, combine_slots, wts, resid); });

  // References, not in the layer: q_a and kv_a as two GEMMs (the model before qkv_a, each
  // quantizing x), forward_normal's scatter of the received rows into the expert layout (from
  // 16,384 distinct tokens here, ~117k on a real rank), gate and up as two expert GEMMs (before
  // GpuExperts::gate_up; each quantizes the slab again).
  add("ref: q_a, kv_a unfused", "ops::linear x2", dims({T, QL, H}) + " + " + std::to_string(lat), 2,
      gemm_cost(t, static_cast<double>(QL + lat), h, 2, 2, true), Ceil::kFp8, [this, cq2]() mutable {
        ops::linear(xb, q_a, cq2);
        ops::linear(xb, kv_a, kva);
      });
  add("ref: moe_scatter into the slab", "ops::moe_scatter", "16384x8 -> 131076 rows", 2, {0, t * h * 2 + t * K * h * 2},
      Ceil::kMemory, [this] { ops::moe_scatter(xb, scatter_ids, row_base, xe, scatter_slots, scatter_counts); });
  add("ref: experts gate, up unfused", "grouped_linear_contiguous x2", "2 x 9x" + std::to_string(M) + " x 2048x7168", 2,
      gemm_cost(r, 2.0 * inter, h, 2, 2, true, G), Ceil::kFp8, [this, eg2, eu2]() mutable {
        ops::grouped_linear_contiguous(xe, offsets, e_gate, eg2);
        ops::grouped_linear_contiguous(xe, offsets, e_up, eu2);
      });
}

// ---- report ----

double bound_us(const Op& op, const Ceilings& c) {
  const double tc = op.ceil == Ceil::kFp8 ? c.fp8_tflops : op.ceil == Ceil::kBf16 ? c.bf16_tflops : 0;
  return std::max(tc > 0 ? op.flops / (tc * 1e6) : 0.0, op.bytes / (c.copy_tbs * 1e6));
}

std::vector<float> download_f32(const Tensor& t, cudaStream_t s) {
  check(cudaStreamSynchronize(s), "sync before download");
  const Tensor h = t.to(Device::kCpu).to_f32();  // bf16 rows come back as f32 too
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Row `row` of local expert g recomputed on the CPU (ops::linear dequantizes the fp8 weights; x
// stays bf16-exact in f32, the GPU quantizes it per 128 columns to fp8): relative L2 difference of
// the down projection's output.
double cpu_expert_row(const Layer& l, int64_t g, int64_t row, cudaStream_t s) {
  const int64_t inter = l.inter;
  const std::vector<float> xv = download_f32(l.xe.slice(0, row, row + 1), s);
  const std::vector<float> yv = download_f32(l.ye.slice(0, row, row + 1), s);
  Tensor x = Tensor::empty({1, l.H}, DType::kF32), gu = Tensor::empty({1, 2 * inter}, DType::kF32);
  Tensor hh = Tensor::empty({1, inter}, DType::kF32), y = Tensor::empty({1, l.H}, DType::kF32);
  std::copy(xv.begin(), xv.end(), x.data<float>());
  ops::linear(x, l.e_gate_up[static_cast<size_t>(g)].to(Device::kCpu), gu);
  for (int64_t i = 0; i < inter; ++i) {  // the GPU stores gate|up and the SiLU product in bf16
    const float a = bf16_round(gu.data<float>()[i]), b = bf16_round(gu.data<float>()[inter + i]);
    hh.data<float>()[i] = bf16_round(a / (1.0f + std::exp(-a)) * b);
  }
  ops::linear(hh, l.e_down[static_cast<size_t>(g)].to(Device::kCpu), y);
  double num = 0, den = 0;
  for (int64_t i = 0; i < l.H; ++i) {
    const double ref = y.data<float>()[i], got = yv[static_cast<size_t>(i)];
    if (!std::isfinite(got)) return INFINITY;
    num += (got - ref) * (got - ref), den += ref * ref;
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

int run(const std::string& config_path) {
  auto cfg = model::load_model_config(config_path);
  if (!cfg.has_value()) fail(cfg.error().message());
  check_config(cfg.value());
  std::printf("prefill_layer_bench: one DeepSeek-V3 prefill layer of one EP32 rank, one GPU (%s)\n", config_path.c_str());
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  std::printf("device: %s, %d SMs, %.1f GiB, L2 %d MiB\n", p.name, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0,
              p.l2CacheSize >> 20);

  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  ops::cuda::set_current_stream(s);

  const Ceilings c = measure_ceilings(s);
  std::printf("\n== ceilings (this run, median of %d)\n", kSamples);
  std::printf("device-to-device copy, 1 GiB (read + write)   %8.2f TB/s\n", c.copy_tbs);
  std::printf("FP8 block-scaled GEMM 8192^3 (pdserve engine)  %8.1f TFLOP/s\n", c.fp8_tflops);
  std::printf("BF16 GEMM 8192^3 (pdserve engine)              %8.1f TFLOP/s\n", c.bf16_tflops);

  Layer l(std::move(cfg.value()));
  l.build();
  std::printf("\n== work\n");
  std::printf("prefill, %lld prompts x %lld tokens = %lld tokens, causal, no cached prefix; bf16 latent cache [%lld pages, "
              "%lld, %lld], pages shuffled; MLA: kv_b expansion + flash attention (ops::mla_prefill_varlen)\n",
              (long long)kPrompts, (long long)kPromptLen, (long long)kTokens, (long long)l.pages, (long long)kPageSize,
              (long long)l.d.latent_dim());
  std::printf("MoE: %lld local experts (%lld slots incl. redundant / %lld ranks) x %lld rows = %lld tokens x top-8 x %lld "
              "ranks / %lld slots (balanced, rounded);\n  rows contiguous by expert in a bf16 [%lld, %lld] slab standing in "
              "for DeepEP's normal-mode receive; gate|up one fused fp8 [%lld, %lld] GEMM per expert;\n  shared expert over "
              "the %lld tokens (gate|up fused as well); no dispatch/combine across GPUs: ops::moe_combine into the residual "
              "stands in\n",
              (long long)kLocalExperts, (long long)kSlots, (long long)kRanks, (long long)kRowsPerExpert, (long long)kTokens,
              (long long)kRanks, (long long)kSlots, (long long)l.rows, (long long)l.H, (long long)(2 * l.inter), (long long)l.H,
              (long long)kTokens);

  // Warm-up: one eager layer sizes the GEMM scratch and makes the cuBLASLt plans (nothing may grow
  // inside a capture), as the model's warm-up does.
  auto reset = [&] {
    check(cudaMemcpyAsync(l.resid.raw_data(), l.resid0.raw_data(), l.resid.nbytes(), cudaMemcpyDeviceToDevice, s), "reset");
  };
  reset();
  l.run_layer();
  check(cudaStreamSynchronize(s), "eager warm-up layer");
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  std::printf("memory: the benchmark's tensors and weights %.2f GiB; in use on the device after the warm-up (GEMM scratch, "
              "cuBLASLt, context included) %.2f of %.2f GiB\n",
              l.bytes / 1073741824.0, (total_b - free_b) / 1073741824.0, total_b / 1073741824.0);

  Graph attn_g, moe_g, layer_g;
  attn_g.capture(s, 1, [&] { l.run_block(0); });
  moe_g.capture(s, 1, [&] { l.run_block(1); });
  layer_g.capture(s, 1, [&] { l.run_layer(); });

  // Correctness: the same input through the eager ops and through the graph replay; two rows of
  // expert 4 (one in its main GEMM, its last row in the GEMM's 16-row tail) on the CPU.
  reset();
  l.run_layer();
  const std::vector<float> eager = download_f32(l.resid, s);
  const double row_main = cpu_expert_row(l, 4, 4 * kRowsPerExpert + 17, s);
  const double row_tail = cpu_expert_row(l, 4, 5 * kRowsPerExpert - 1, s);
  reset();
  layer_g.launch(s);
  const std::vector<float> graph = download_f32(l.resid, s);
  const std::vector<float> input = download_f32(l.resid0, s);
  double max_ref = 0, max_diff = 0, max_change = 0;
  size_t nonfinite = 0;
  for (size_t i = 0; i < eager.size(); ++i) {
    if (!std::isfinite(eager[i]) || !std::isfinite(graph[i])) ++nonfinite;
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(eager[i])));
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(eager[i] - graph[i])));
    max_change = std::max(max_change, static_cast<double>(std::fabs(eager[i] - input[i])));
  }
  const double rel = max_ref > 0 ? max_diff / max_ref : 0;
  std::printf("\n== correctness\n");
  std::printf("layer output (f32 residual [%lld, %lld]), eager vs one graph replay: max |diff| / max |eager| = %.3g "
              "(max |eager| %.3g, max change by the layer %.3g, non-finite %zu)\n",
              (long long)kTokens, (long long)l.H, rel, max_ref, max_change, nonfinite);
  std::printf("expert 4 on the CPU (fp8 weights dequantized, x not quantized): relative L2 difference %.3g (row in the main "
              "GEMM), %.3g (last row, tail GEMM)\n", row_main, row_tail);
  if (nonfinite > 0 || rel > 1e-2 || !(max_change > 0)) fail("correctness check failed: graph replay differs from eager ops");
  // fp8 quantization of the activations (per 128 columns, twice) costs a few per cent.
  if (!(row_main < 0.1) || !(row_tail < 0.1)) fail("correctness check failed: an expert row differs from the CPU");

  // Blocks and layer: one graph each (median of kLayerSamples replays), and the eager launches.
  auto replay_us = [&](const Graph& g) {
    return time_eager(s, [&] { g.launch(s); }, kLayerSamples) * 1e3;
  };
  const double attn_graph = replay_us(attn_g), moe_graph = replay_us(moe_g), layer_graph = replay_us(layer_g);
  const double attn_eager = time_eager(s, [&] { l.run_block(0); }, kLayerSamples) * 1e3;
  const double moe_eager = time_eager(s, [&] { l.run_block(1); }, kLayerSamples) * 1e3;
  const double layer_eager = time_eager(s, [&] { l.run_layer(); }, kLayerSamples) * 1e3;

  // Each op alone, eager (in-place ops drift their values over repeats; timing does not care, and
  // the correctness check ran first). The references come last: they may grow the GEMM scratch,
  // which the graphs above must not see (they were replayed already).
  std::printf("\n== each op alone (eager launches, median of %d)\n", kSamples);
  std::printf("bound = max(FLOPs / tensor-core ceiling, bytes / copy TB/s); FP8 ops against FP8 block-scaled, "
              "MLA and router against BF16\n\n");
  std::printf("%-30s %-30s %-26s %9s %8s %8s %9s %7s\n", "op", "pdserve call", "shape", "time us", "GFLOP", "MB", "bound us",
              "of bnd");
  std::printf("%s\n", std::string(134, '-').c_str());
  double sum[3] = {0, 0, 0};
  bool failed = false;
  const char* titles[3] = {"-- attention block", "-- MoE block", "-- references (not in the layer)"};
  for (int b = 0; b < 3; ++b) {
    std::printf("%s\n", titles[b]);
    for (const Op& op : l.ops) {
      if (op.block != b) continue;
      try {
        const double us = time_eager(s, op.f) * 1e3, bd = bound_us(op, c);
        sum[b] += us;
        std::printf("%-30s %-30s %-26s %9.1f %8.1f %8.1f %9.1f %6.0f%%\n", op.name.c_str(), op.call.c_str(), op.shape.c_str(),
                    us, op.flops / 1e9, op.bytes / 1e6, bd, 100.0 * bd / us);
      } catch (const std::exception& e) {
        std::printf("%-30s FAILED: %s\n", op.name.c_str(), e.what());
        failed = true;
      }
      std::fflush(stdout);
    }
  }

  std::printf("\n== totals (ms; blocks and layer: median of %d)\n", kLayerSamples);
  std::printf("%-18s %12s %16s %16s\n", "", "sum of ops", "one CUDA graph", "eager launches");
  std::printf("%-18s %12.2f %16.2f %16.2f\n", "attention block", sum[0] / 1e3, attn_graph / 1e3, attn_eager / 1e3);
  std::printf("%-18s %12.2f %16.2f %16.2f\n", "MoE block", sum[1] / 1e3, moe_graph / 1e3, moe_eager / 1e3);
  std::printf("%-18s %12.2f %16.2f %16.2f\n", "layer", (sum[0] + sum[1]) / 1e3, layer_graph / 1e3, layer_eager / 1e3);
  std::printf("layer graph: %zu nodes\n", layer_g.nodes().first);
  std::printf("goal: <= %.0f ms per prefill layer on an H100; references: PyTorch eager BF16 %.1f ms, SGLang %.1f ms, "
              "DeepSeek's profile %.1f ms\n", kGoalMs, kTorchMs, kSglangMs, kDeepSeekMs);
  std::printf("this card, one graph: %.2f x the goal, %.2f x PyTorch's, %.2f x SGLang's, %.2f x DeepSeek's\n",
              layer_graph / 1e3 / kGoalMs, layer_graph / 1e3 / kTorchMs, layer_graph / 1e3 / kSglangMs,
              layer_graph / 1e3 / kDeepSeekMs);

  check(cudaStreamSynchronize(s), "final sync");
  ops::cuda::set_current_stream(cudaStreamPerThread);
  if (failed) fail("some ops failed (see above)");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc > 1 ? argv[1] : "models/deepseek-v3/config.json");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefill_layer_bench: %s\n", e.what());
    return 1;
  }
}
