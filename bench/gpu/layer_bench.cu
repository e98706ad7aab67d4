// One decode layer of one EP72 rank of DeepSeek-V3 (issue 5) on one GPU, in one run: the card's
// ceilings, then the layer as the sequence of pdserve ops the GPU model's decode forward calls
// (src/model/deepseek_v3_gpu.cpp: attention(), the post-attention norms of body(), moe(), mlp(); the
// EP rank's experts as src/moe/cuda/ep_gpu_experts.cpp runs them), with real V3 shapes read from
// models/deepseek-v3/config.json, FP8 block-scaled weights, bf16 activations and latent cache:
// 256 requests at context 2000, 4 local experts x 512 tokens (balanced), the shared expert.
//
// Each op is timed alone (a CUDA graph of `reps` back-to-back calls, median of 15 replays, as
// gemm_bench does), then each block and the whole layer are captured into ONE graph and replayed
// (median of 60): that figure has no host launch gaps and no hand summing. A correctness check
// compares the layer's output (the f32 residual) from an eager run and from the graph replay.
//
// The experts run twice, in two layer graphs: through ops::grouped_masked_experts, the masked
// kernels GpuEpExperts::run_experts calls for a decode pass (rows < counts only: at EP72 a rank's
// slab holds 72 x 256 rows per expert, of which ~512 arrive), and through cuBLASLt's masked GEMMs,
// which compute every slab row and so are only this fast here, where slab = count (their best case).
// Gate and up are one fused GEMM (model::GpuMlp / GpuExperts), SiLU reads its two halves.
//
// Not run: dispatch and combine across GPUs (one GPU). The experts read a fixed [4, 512, 7168] bf16
// slab standing in for the low-latency dispatch's recv_x; ops::moe_combine (the one-GPU model's
// op) of their 2048 rows into the 256 tokens' residual stands in for the combine's weighted sum.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/config.h"
#include "ops/attention.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/mla_kernels.h"
#include "ops/cuda/rope.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/moe_dispatch.h"
#include "ops/moe_gate.h"
#include "ops/quant.h"
#include "ops/rope.h"
#include "tensor/tensor.h"
#include "bench_util.cuh"
#include "layer_util.cuh"

namespace {

using namespace pdserve;
using ops::cuda::check;
using namespace pdserve::bench;

// The published deployment's per-rank work (LMSYS EP72 decode): 256 requests at context 2000,
// 256 x top-8 = 2048 (token, expert) rows = 4 local experts x 512 with balanced routing.
constexpr int64_t kTokens = 256, kContext = 2000, kPageSize = 64, kLocalExperts = 4, kRowsPerExpert = 512;
constexpr int kLayerSamples = 60;  // kSamples (15): bench_util.cuh
constexpr double kGoalUs = 750.0, kSglangUs = 950.0;

// ---- the layer ----

enum class Ceil { kFp8, kBf16, kMemory };

struct Op {
  std::string name, call, shape;
  // 0 attention, 1 MoE without the routed experts, 2 reference (timed alone, not in a layer), 3 the
  // routed experts as the model's EP decode runs them (ops::grouped_masked_experts), 4 the same
  // experts through cuBLASLt's masked GEMMs (only right where every slab row is a received row),
  // 5 the combine (after either experts block).
  int block;
  double flops, bytes;
  Ceil ceil;
  int reps;
  std::function<void()> f;
};

struct Layer {
  model::ModelConfig cfg;
  ops::MlaDims d;
  ops::RopeTable rope;
  float scale = 0, eps = 0;
  int64_t H = 0, QL = 0, inter = 0, pages = 0, pages_per_seq = 0;
  // weights
  Tensor ln_in, ln_post, q_a_ln, kv_a_ln, w_kv, w_uk, w_uv, bias;
  // qkv_a: q_a|kv_a fused (model::GpuLayerWeights); the shared expert's gate|up fused (model::GpuMlp)
  Weight qkv_a, q_b, o_proj, router, sh_gate_up, sh_down;
  std::vector<Weight> e_gate_up, e_down;                          // as model::GpuExperts
  Tensor t_gate_up, t_down;  // expert_pointer_table of each, for the masked kernels
  // cache and decode inputs
  Tensor pool, table, lens, positions, slots;
  // activations: resid0 is the layer's input, resid its in-place residual (the model's f32 stream)
  Tensor resid0, resid, xb, qkv, cq, q, attn, ws, logits, ids, wts, sgu, sh;
  Tensor xe, xe8, xe8_scales, xq, xq_scales, counts, gue, he, ye, combine_slots;
  std::vector<Op> ops;

  explicit Layer(model::ModelConfig c) : cfg(std::move(c)) {}
  void build();
  void run_block(int block) const {
    for (const Op& op : ops)
      if (op.block == block) op.f();
  }
  // The MoE block with the routed experts of block `experts` (3 or 4), then the combine.
  void run_moe(int experts) const {
    run_block(1);
    run_block(experts);
    combine();
  }
  void run_layer(int experts = 3) const {
    run_block(0);
    run_moe(experts);
  }
  std::function<void()> combine;
};

// The shapes this benchmark's per-rank accounting assumes; anything else is a wrong config file.
void check_config(const model::ModelConfig& cfg) {
  if (cfg.hidden_size != 7168 || !cfg.q_lora_rank || *cfg.q_lora_rank != 1536 || cfg.kv_lora_rank != 512 ||
      cfg.qk_rope_head_dim != 64 || cfg.qk_nope_head_dim != 128 || cfg.v_head_dim != 128 || cfg.num_attention_heads != 128 ||
      cfg.moe_intermediate_size != 2048 || cfg.n_routed_experts != 256 || cfg.num_experts_per_tok != 8 || cfg.n_group != 8 ||
      cfg.topk_group != 4 || cfg.n_shared_experts != 1 || !cfg.quantization || cfg.quantization->block_rows != 128 ||
      cfg.quantization->block_cols != 128)
    fail("config is not DeepSeek-V3's (hidden 7168, q_lora 1536, kv_lora 512, 128 heads, 256 experts top-8, fp8 128x128)");
  if (kTokens * cfg.num_experts_per_tok != kLocalExperts * kRowsPerExpert) fail("256 x top-8 must equal 4 x 512 rows");
}

void Layer::build() {
  d = cfg.mla_dims();
  rope = ops::make_rope_table(cfg.rope);
  scale = cfg.softmax_scale();  // as the model: qk_head_dim^-0.5 x YaRN mscale^2
  eps = static_cast<float>(cfg.rms_norm_eps);
  const float mla_eps = 1e-6f;  // deepseek_v3_gpu.cpp's kMlaNormEps (q_a / kv_a layernorms)
  H = cfg.hidden_size, QL = *cfg.q_lora_rank, inter = cfg.moe_intermediate_size;
  const int64_t T = kTokens, NH = d.num_heads, qk = d.qk_head_dim(), L = d.kv_lora_rank, lat = d.latent_dim();
  const int64_t E = cfg.n_routed_experts, K = cfg.num_experts_per_tok, G = kLocalExperts, M = kRowsPerExpert;
  const DType f8 = DType::kF8E4M3, bf = DType::kBF16, f32 = DType::kF32, i32 = DType::kI32;
  const Device dev = Device::kCuda;
  uint64_t seed = 1;

  // Weights in the forms gpu_weights.cpp uploads: fp8 block-scaled projections and experts, bf16
  // norms and router (the checkpoint's gate.weight is bf16), f32 correction bias, and W_UK / W_UV
  // as bf16 strided views of one [H, nope + v, r] tensor.
  ln_in = device_tensor({H}, bf, seed++, 0.8f, 1.2f), ln_post = device_tensor({H}, bf, seed++, 0.8f, 1.2f);
  q_a_ln = device_tensor({QL}, bf, seed++, 0.8f, 1.2f), kv_a_ln = device_tensor({L}, bf, seed++, 0.8f, 1.2f);
  qkv_a = device_weight(QL + lat, H, f8, seed += 2), q_b = device_weight(NH * qk, QL, f8, seed += 2);
  o_proj = device_weight(H, NH * d.v_head_dim, f8, seed += 2);
  w_kv = device_tensor({NH, d.qk_nope_head_dim + d.v_head_dim, L}, bf, seed++, -0.09f, 0.09f);
  w_uk = w_kv.slice(1, 0, d.qk_nope_head_dim), w_uv = w_kv.slice(1, d.qk_nope_head_dim, d.qk_nope_head_dim + d.v_head_dim);
  router = device_weight(E, H, bf, seed += 2), bias = device_tensor({E}, f32, seed++, -0.05f, 0.05f);
  sh_gate_up = device_weight(2 * inter, H, f8, seed += 2), sh_down = device_weight(H, inter, f8, seed += 2);
  for (int64_t g = 0; g < G; ++g) {
    e_gate_up.push_back(device_weight(2 * inter, H, f8, seed += 2));
    e_down.push_back(device_weight(H, inter, f8, seed += 2));
  }
  t_gate_up = ops::expert_pointer_table(e_gate_up), t_down = ops::expert_pointer_table(e_down);

  // Paged bf16 latent cache: 64-token pages (the TMA tile path of the wgmma decode core), each
  // sequence's pages shuffled over the pool as a long-running server's would be.
  pages_per_seq = (kContext + kPageSize - 1) / kPageSize;
  pages = T * pages_per_seq;
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(1));
  pool = device_tensor({pages, kPageSize, lat}, bf, seed++);
  table = i32_device(perm, {T, pages_per_seq});
  lens = i32_device(std::vector<int32_t>(static_cast<size_t>(T), static_cast<int32_t>(kContext)), {T});
  // The new token of request b sits at position ctx - 1 (seq_lens counts it), in its last page.
  const int64_t pos = kContext - 1;
  std::vector<int32_t> slot_v(static_cast<size_t>(T));
  for (int64_t b = 0; b < T; ++b)
    slot_v[b] = static_cast<int32_t>(perm[b * pages_per_seq + pos / kPageSize] * kPageSize + pos % kPageSize);
  positions = i32_device(std::vector<int32_t>(static_cast<size_t>(T), static_cast<int32_t>(pos)), {T});
  slots = i32_device(slot_v, {T});

  resid0 = device_tensor({T, H}, f32, seed++), resid = Tensor::empty({T, H}, f32, dev);
  xb = Tensor::empty({T, H}, bf, dev);
  qkv = Tensor::empty({T, QL + lat}, bf, dev);
  cq = Tensor::empty({T, QL}, bf, dev), q = Tensor::empty({T, NH * qk}, bf, dev);
  attn = Tensor::empty({T, NH, d.v_head_dim}, bf, dev);
  ws = Tensor::empty({std::max<int64_t>(1, ops::mla_decode_workspace_bytes(T, d, kContext, bf))}, f8, dev);
  logits = Tensor::empty({T, E}, f32, dev), ids = Tensor::empty({T, K}, i32, dev), wts = Tensor::empty({T, K}, f32, dev);
  sgu = Tensor::empty({T, 2 * inter}, bf, dev), sh = Tensor::empty({T, inter}, bf, dev);
  // Masked layout [local experts, rows, hidden] with the counts on the device: what the low-latency
  // dispatch delivers and the decode graphs capture. max_m = count = 512 is the balanced best case.
  xe = device_tensor({G, M, H}, bf, seed++);
  counts = i32_device(std::vector<int32_t>(static_cast<size_t>(G), static_cast<int32_t>(M)), {G});
  // The same rows as the FP8 low-latency dispatch delivers them (its default: fp8 e4m3 with 1x128
  // scales, [G, H/128, M]); the model's masked kernels read them as they arrived. xq: this rank's
  // own 256 tokens cast to FP8, the dispatch kernel's cast done as a separate kernel here.
  xe8 = Tensor::empty({G, M, H}, f8, dev), xe8_scales = Tensor::empty({G, H / 128, M}, f32, dev);
  ops::cuda::quantize_fp8_masked(xe, counts, xe8, xe8_scales);
  xq = Tensor::empty({T, H}, f8, dev), xq_scales = Tensor::empty({H / 128, T}, f32, dev);
  gue = Tensor::empty({G, M, 2 * inter}, bf, dev), he = Tensor::empty({G, M, inter}, bf, dev);
  ye = Tensor::empty({G, M, H}, bf, dev);
  // Token t's j-th choice -> row (t * 2 + j / 4) of local expert j % 4: a bijection of the 256 x 8
  // choices onto the 4 x 512 rows, so the combine stand-in reads every expert row once.
  std::vector<int32_t> cs(static_cast<size_t>(T * K));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < K; ++j) cs[t * K + j] = static_cast<int32_t>((j % G) * M + t * (K / G) + j / G);
  combine_slots = i32_device(cs, {T, K});
  check(cudaStreamSynchronize(ops::cuda::current_stream()), "set-up");

  // Views the ops write through (non-const lvalues for the in-place calls).
  Tensor cq_a = qkv.slice(1, 0, QL), latent = qkv.slice(1, QL, QL + L), k_pe = qkv.slice(1, QL + L, QL + lat);
  Tensor q3 = q.reshape({T, NH, qk});
  Tensor attn2 = attn.reshape({T, NH * d.v_head_dim}), ye2 = ye.reshape({G * M, H});
  const double t = static_cast<double>(T), h = static_cast<double>(H), rows = static_cast<double>(G * M);
  auto add = [&](const std::string& name, const std::string& call, const std::string& shape, int block,
                 std::pair<double, double> cost, Ceil c, int reps, std::function<void()> f) {
    ops.push_back({name, call, shape, block, cost.first, cost.second, c, reps, std::move(f)});
  };
  // x, w, y by value: views sharing the members' storage (some, e.g. attn2, are locals here).
  auto lin = [&](const std::string& name, int block, Tensor x, Weight w, Tensor y) {
    const bool fp8 = w.is_block_fp8();
    add(name, "ops::linear", dims({x.size(0), w.rows(), w.cols()}), block,
        gemm_cost(x.size(0), w.rows(), w.cols(), dtype_size(x.dtype()), dtype_size(y.dtype()), fp8),
        fp8 ? Ceil::kFp8 : Ceil::kBf16, 20, [x, w, y]() mutable { ops::linear(x, w, y); });
  };
  // y += x W^T into the f32 residual (ops::linear_add: the GEMM's epilogue adds; y read and written).
  auto lin_add = [&](const std::string& name, int block, Tensor x, Weight w, Tensor y) {
    const bool fp8 = w.is_block_fp8();
    auto cost = gemm_cost(x.size(0), w.rows(), w.cols(), dtype_size(x.dtype()), 8, fp8);
    add(name, "ops::linear_add", dims({x.size(0), w.rows(), w.cols()}), block, cost, fp8 ? Ceil::kFp8 : Ceil::kBf16, 20,
        [x, w, y]() mutable { ops::linear_add(x, w, y); });
  };

  // Attention block: DeepseekV3GpuModel::Impl::body's input_layernorm, then attention() decoding.
  add("input_layernorm", "ops::rms_norm f32->bf16", dims({T, H}), 0, {0, t * h * 6 + h * 2}, Ceil::kMemory, 20,
      [this] { ops::rms_norm(resid, ln_in, eps, xb); });
  lin("q_a|kv_a_proj fused", 0, xb, qkv_a, qkv);
  add("q_a_layernorm", "ops::rms_norm bf16 strided", dims({T, QL}), 0, {0, t * QL * 4.0}, Ceil::kMemory, 20,
      [this, cq_a, mla_eps] { ops::rms_norm(cq_a, q_a_ln, mla_eps, cq); });
  lin("q_b_proj", 0, cq, q_b, q);
  add("kv_a_layernorm", "ops::rms_norm bf16 in place", dims({T, L}), 0, {0, t * L * 4.0}, Ceil::kMemory, 20,
      [this, latent, mla_eps]() mutable { ops::rms_norm(latent, kv_a_ln, mla_eps, latent); });
  add("rope q,k_pe + KV write", "ops::cuda::rope_kv_write", "256 tok into pages", 0,
      {0, t * NH * d.qk_rope_head_dim * 4.0 + t * lat * 4.0}, Ceil::kMemory, 20,
      [this, q3, latent, k_pe]() mutable {
        ops::cuda::rope_kv_write(q3, d.qk_nope_head_dim, latent, k_pe, positions, rope, slots, pool);
      });
  // The model passes max_seq_len = context_length + 1; at B = 256 both give one KV split.
  const double core_flops = t * kContext * NH * 2.0 * (lat + L), bmm_flops = 4.0 * t * NH * d.qk_nope_head_dim * L;
  const double mla_bytes = t * kContext * lat * 2.0 + 2.0 * NH * d.qk_nope_head_dim * L * 2 + t * NH * (qk + d.v_head_dim) * 2.0;
  add("MLA decode (W_UK, core, W_UV)", "ops::mla_decode_paged", "B256 ctx2000 128h", 0, {core_flops + bmm_flops, mla_bytes},
      Ceil::kBf16, 5, [this, q3]() mutable {
        ops::mla_decode_paged(q3, pool, table, lens, w_uk, w_uv, d, scale, attn, kContext, ws);
      });
  lin_add("o_proj (+= residual)", 0, attn2, o_proj, resid);

  // MoE block: body()'s post_attention_layernorm, bf16 (FP8 experts: the router, the shared expert
  // and the dispatch all read it), then moe(): router, gate, shared expert mlp(), routed experts.
  add("post_attention_layernorm", "ops::rms_norm f32->bf16", dims({T, H}), 1, {0, t * h * 6 + h * 2}, Ceil::kMemory, 20,
      [this] { ops::rms_norm(resid, ln_post, eps, xb); });
  lin("router (bf16 W, bf16 x)", 1, xb, router, logits);
  const ops::MoeGateParams gp = cfg.gate_params();
  add("noaux_tc gate", "ops::moe_gate", "256x256 -> top8", 1, {0, t * E * 4.0 + E * 4.0 + t * K * 8.0}, Ceil::kMemory, 20,
      [this, gp] { ops::moe_gate(logits, bias, gp, ids, wts); });
  Tensor sg = sgu.slice(1, 0, inter), su = sgu.slice(1, inter, 2 * inter);
  lin("shared gate|up_proj", 1, xb, sh_gate_up, sgu);
  add("shared silu*mul", "ops::silu_mul bf16 halves", dims({T, inter}), 1, {0, t * inter * 6.0}, Ceil::kMemory, 20,
      [this, sg, su] { ops::silu_mul(sg, su, sh); });
  lin_add("shared down_proj (+= residual)", 1, sh, sh_down, resid);
  // Routed experts as GpuEpExperts::run_experts runs a decode pass: the fused gate|up, SiLU over its
  // halves, down. Block 3: the masked kernels the model calls (rows < counts only) on the FP8 rows
  // the default dispatch delivers, plus the cast of this rank's tokens that dispatch makes; block 4:
  // cuBLASLt's masked GEMMs on bf16 rows (a bf16 dispatch), which compute every slab row (here
  // slab = count: their best case).
  const std::string eshape = "4x" + std::to_string(M) + " x ";
  Tensor ge = gue.slice(2, 0, inter), ue = gue.slice(2, inter, 2 * inter);
  add("dispatch's FP8 cast (256 tok)", "ops::quantize_fp8_per_token_group", dims({T, H}), 3, {0, t * h * 3.0},
      Ceil::kMemory, 20, [this] { ops::quantize_fp8_per_token_group(xb, xq, xq_scales); });
  add("experts gate|up_proj (fp8 rows)", "ops::grouped_masked_experts", eshape + dims({2 * inter, H}), 3,
      gemm_cost(rows, 2 * inter, h, 1, 2, true), Ceil::kFp8, 5,
      [this] { ops::grouped_masked_experts(xe8, counts, e_gate_up, t_gate_up, gue, xe8_scales); });
  add("experts silu*mul + down_proj", "ops::grouped_masked_silu_down", eshape + dims({H, inter}), 3,
      gemm_cost(rows, h, inter, 2, 2, true), Ceil::kFp8, 5,
      [this] { ops::grouped_masked_silu_down(gue, counts, e_down, t_down, he, ye); });
  add("experts gate|up_proj", "ops::grouped_linear_masked", eshape + dims({2 * inter, H}), 4,
      gemm_cost(rows, 2 * inter, h, 2, 2, true), Ceil::kFp8, 20,
      [this] { ops::grouped_linear_masked(xe, counts, e_gate_up, gue); });
  add("experts silu*mul", "ops::silu_mul_masked halves", eshape + std::to_string(inter), 4, {0, rows * inter * 6.0},
      Ceil::kMemory, 20, [this, ge, ue] { ops::silu_mul_masked(ge, ue, counts, he); });
  add("experts down_proj", "ops::grouped_linear_masked", eshape + dims({H, inter}), 4,
      gemm_cost(rows, h, inter, 2, 2, true), Ceil::kFp8, 20, [this] { ops::grouped_linear_masked(he, counts, e_down, ye); });
  // Block 5: the combine runs after the experts (run_moe), not with the rest of block 1.
  add("combine stand-in (+ residual)", "ops::moe_combine", "2048 rows -> 256", 5, {0, rows * h * 2 + t * h * 8},
      Ceil::kMemory, 20, [this, ye2]() mutable { ops::moe_combine(ye2, combine_slots, wts, resid); });
  combine = ops.back().f;

  // Reference, timed alone: the GEMV path run_experts took in every decode pass before the masked
  // kernels (31.9 ms on an H100 for these rows, 2026-12-05).
  add("ref: experts via GEMV", "ops::grouped_gemv_masked x2", "4x512 (old EP decode path)", 2,
      gemm_cost(rows, 3 * inter, h, 2, 2, true), Ceil::kFp8, 1, [this, ge, ue] {
        ops::grouped_gemv_masked(xe, counts, e_gate_up, t_gate_up, gue);
        ops::silu_mul_masked(ge, ue, counts, he);
        ops::grouped_gemv_masked(he, counts, e_down, t_down, ye);
      });
}

// ---- report ----

double bound_us(const Op& op, const Ceilings& c) {
  const double tc = op.ceil == Ceil::kFp8 ? c.fp8_tflops : op.ceil == Ceil::kBf16 ? c.bf16_tflops : 0;
  return std::max(tc > 0 ? op.flops / (tc * 1e6) : 0.0, op.bytes / (c.copy_tbs * 1e6));
}

// The layer's f32 residual on the host.
std::vector<float> download(const Tensor& t, cudaStream_t s) {
  check(cudaStreamSynchronize(s), "sync before download");
  std::vector<float> v(static_cast<size_t>(t.numel()));
  check(cudaMemcpy(v.data(), t.raw_data(), t.nbytes(), cudaMemcpyDeviceToHost), "download");
  return v;
}

int run(const std::string& config_path) {
  // The config first: a wrong path or file fails before any device work.
  auto cfg = model::load_model_config(config_path);
  if (!cfg.has_value()) fail(cfg.error().message());
  check_config(cfg.value());
  std::printf("layer_bench: one DeepSeek-V3 decode layer of one EP72 rank, one GPU (%s)\n", config_path.c_str());
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
  std::printf("BF16 GEMM 8192^3 (pdserve engine)              %8.1f TFLOP/s  (attention_bench uses the 989 datasheet)\n",
              c.bf16_tflops);

  Layer l(std::move(cfg.value()));
  l.build();
  const int splits = ops::cuda::mla_decode_num_splits(kTokens, l.d, kContext, DType::kBF16);
  std::printf("\n== work\n");
  std::printf("decode, %lld requests at context %lld; bf16 latent cache [%lld pages, %lld, %lld], page size %lld, "
              "pages shuffled; MLA core: %s, %d KV split(s)\n",
              (long long)kTokens, (long long)kContext, (long long)l.pages, (long long)kPageSize, (long long)l.d.latent_dim(),
              (long long)kPageSize,
              ops::cuda::mla::decode_core_wgmma_supported() ? "wgmma ping-pong, TMA tile loads (64-token pages)" : "mma.sync",
              splits);
  std::printf("MoE: %lld local experts x %lld rows (balanced) in the masked layout [4, 512, 7168] with the counts on\n"
              "the device (decode's layout: the low-latency dispatch's recv_x, capturable; max_m = count is the balanced\n"
              "best case): fp8 + scales (the FP8 dispatch) for the model's masked kernels, bf16 for cuBLASLt's;\n"
              "shared expert over the 256 tokens; masked kernel: %s\n",
              (long long)kLocalExperts, (long long)kRowsPerExpert,
              std::getenv("PDSERVE_MASKED_EXPERTS") ? std::getenv("PDSERVE_MASKED_EXPERTS") : "wgmma (default)");
  std::printf("no dispatch/combine across GPUs (one GPU): the expert input is a fixed slab standing in for the\n"
              "dispatch's recv_x; ops::moe_combine of the 2048 expert rows stands in for the combine\n");

  // Warm-up: one eager layer sizes the GEMM scratch and makes the cuBLASLt plans (nothing may grow
  // inside a capture), as the model's warm-up does before capturing its decode graphs.
  const cudaMemcpyKind d2d = cudaMemcpyDeviceToDevice;
  auto reset = [&] { check(cudaMemcpyAsync(l.resid.raw_data(), l.resid0.raw_data(), l.resid.nbytes(), d2d, s), "reset residual"); };
  reset();
  l.run_layer();
  check(cudaStreamSynchronize(s), "eager warm-up layer");

  // One more eager layer with the cuBLASLt experts: their plans too are made outside any capture.
  l.run_layer(4);
  check(cudaStreamSynchronize(s), "eager warm-up layer (cuBLASLt experts)");

  Graph attn_g, moe_g, layer_g, moe_lt_g, layer_lt_g;
  attn_g.capture(s, 1, [&] { l.run_block(0); });
  moe_g.capture(s, 1, [&] { l.run_moe(3); });
  layer_g.capture(s, 1, [&] { l.run_layer(3); });
  moe_lt_g.capture(s, 1, [&] { l.run_moe(4); });
  layer_lt_g.capture(s, 1, [&] { l.run_layer(4); });

  // Correctness: the same input through the eager ops and through the graph replay; and the layer
  // with the model's masked expert kernels against the one with cuBLASLt's GEMMs (W8A16 against
  // W8A8: they differ by the activations' FP8 rounding, a few percent of the experts' output).
  reset();
  l.run_layer(3);
  const std::vector<float> eager = download(l.resid, s);
  reset();
  layer_g.launch(s);
  const std::vector<float> graph = download(l.resid, s);
  reset();
  layer_lt_g.launch(s);
  const std::vector<float> lt = download(l.resid, s);
  const std::vector<float> input = download(l.resid0, s);
  double max_ref = 0, max_diff = 0, max_change = 0, max_lt = 0;
  size_t nonfinite = 0;
  for (size_t i = 0; i < eager.size(); ++i) {
    if (!std::isfinite(eager[i]) || !std::isfinite(graph[i]) || !std::isfinite(lt[i])) ++nonfinite;
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(eager[i])));
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(eager[i] - graph[i])));
    max_change = std::max(max_change, static_cast<double>(std::fabs(eager[i] - input[i])));
    max_lt = std::max(max_lt, static_cast<double>(std::fabs(lt[i] - graph[i])));
  }
  const double rel = max_ref > 0 ? max_diff / max_ref : 0, rel_lt = max_change > 0 ? max_lt / max_change : 0;
  std::printf("\n== correctness: layer output (f32 residual [256, 7168])\n");
  std::printf("eager ops vs one graph replay: max |eager - graph| / max |eager| = %.3g (max |eager| %.3g, max change by\n"
              "the layer %.3g, non-finite %zu)\n",
              rel, max_ref, max_change, nonfinite);
  std::printf("masked expert kernels vs cuBLASLt experts: max |diff| / max change by the layer = %.3g\n", rel_lt);
  if (nonfinite > 0 || rel > 1e-2 || !(max_change > 0)) fail("correctness check failed: graph replay differs from eager ops");
  if (rel_lt > 0.1) fail("correctness check failed: the masked expert kernels and cuBLASLt's GEMMs disagree");

  // Whole blocks: one graph each, and the eager launches of the same ops for comparison.
  const double attn_graph = attn_g.replay_ms(s, kLayerSamples) * 1e3, moe_graph = moe_g.replay_ms(s, kLayerSamples) * 1e3;
  const double layer_graph = layer_g.replay_ms(s, kLayerSamples) * 1e3;
  const double moe_lt_graph = moe_lt_g.replay_ms(s, kLayerSamples) * 1e3;
  const double layer_lt_graph = layer_lt_g.replay_ms(s, kLayerSamples) * 1e3;
  const double attn_eager = time_eager(s, [&] { l.run_block(0); }) * 1e3;
  const double moe_eager = time_eager(s, [&] { l.run_moe(3); }) * 1e3;
  const double layer_eager = time_eager(s, [&] { l.run_layer(3); }) * 1e3;
  const auto [nodes, kernels] = layer_g.nodes();

  // Each op alone. In-place ops repeated many times may drift their values; timing does not care,
  // and the correctness check above ran first.
  std::printf("\n== each op alone (graph of back-to-back calls, median of %d; inputs hot in L2)\n", kSamples);
  std::printf("bound = max(FLOPs / tensor-core ceiling, bytes / copy TB/s); FP8 ops against FP8 block-scaled, "
              "MLA and router against BF16\n\n");
  std::printf("%-30s %-30s %-22s %9s %8s %8s %9s %7s\n", "op", "pdserve call", "shape", "time us", "GFLOP", "MB", "bound us",
              "of bnd");
  std::printf("%s\n", std::string(130, '-').c_str());
  double sum[6] = {0, 0, 0, 0, 0, 0};
  bool failed = false;
  const std::pair<int, const char*> sections[] = {{0, "-- attention block"},
                                                  {1, "-- MoE block: router, gate, shared expert"},
                                                  {3, "-- MoE block: routed experts, the model's masked kernels"},
                                                  {4, "-- MoE block: routed experts, cuBLASLt masked GEMMs (slab = count)"},
                                                  {5, "-- MoE block: combine"},
                                                  {2, "-- references (not in the layer)"}};
  for (const auto& [b, title] : sections) {
    std::printf("%s\n", title);
    for (const Op& op : l.ops) {
      if (op.block != b) continue;
      try {
        const double us = time_graph(s, op.reps, op.f) * 1e3, bd = bound_us(op, c);
        sum[b] += us;
        std::printf("%-30s %-30s %-22s %9.1f %8.2f %8.2f %9.1f %6.0f%%\n", op.name.c_str(), op.call.c_str(), op.shape.c_str(), us,
                    op.flops / 1e9, op.bytes / 1e6, bd, 100.0 * bd / us);
      } catch (const std::exception& e) {
        std::printf("%-30s FAILED: %s\n", op.name.c_str(), e.what());
        failed = true;
      }
      std::fflush(stdout);
    }
  }

  const double moe_sum = sum[1] + sum[3] + sum[5], moe_lt_sum = sum[1] + sum[4] + sum[5];
  std::printf("\n== totals (us; graphs: median of %d replays)\n", kLayerSamples);
  std::printf("%-40s %12s %16s %16s\n", "", "sum of ops", "one CUDA graph", "eager launches");
  std::printf("%-40s %12.1f %16.1f %16.1f\n", "attention block", sum[0], attn_graph, attn_eager);
  std::printf("%-40s %12.1f %16.1f %16.1f\n", "MoE block (model's masked kernels)", moe_sum, moe_graph, moe_eager);
  std::printf("%-40s %12.1f %16.1f %16.1f\n", "layer (model's masked kernels)", sum[0] + moe_sum, layer_graph, layer_eager);
  std::printf("%-40s %12.1f %16.1f %16s\n", "MoE block (cuBLASLt experts)", moe_lt_sum, moe_lt_graph, "-");
  std::printf("%-40s %12.1f %16.1f %16s\n", "layer (cuBLASLt experts)", sum[0] + moe_lt_sum, layer_lt_graph, "-");
  std::printf("layer graph: %zu nodes, %zu kernels; page size %lld\n", nodes, kernels, (long long)kPageSize);
  std::printf("issue 5 goal: <= %.0f us per layer on an H100; SGLang published %.0f us decode compute per layer (EP72, H100)\n",
              kGoalUs, kSglangUs);
  std::printf("this card, one graph, model's kernels: %.2f x the goal, %.2f x SGLang's\n", layer_graph / kGoalUs,
              layer_graph / kSglangUs);
  std::printf("this card, one graph, cuBLASLt experts: %.2f x the goal, %.2f x SGLang's\n", layer_lt_graph / kGoalUs,
              layer_lt_graph / kSglangUs);

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
    std::fprintf(stderr, "layer_bench: %s\n", e.what());
    return 1;
  }
}
