// MLA attention on one GPU for the published DeepSeek-V3 deployments' per-rank work (issue 5):
// - decode, EP72 rank: 256 requests at context 2000, 128 heads, bf16 latent cache in 64-token pages
//   (shuffled), absorbed form: the attention core alone, the W_UK / W_UV bmms alone (gemm_bf16,
//   used before, and absorb_bmm_bf16, used now), and the whole op with either;
// - a small-batch long-context decode, where split-KV has to fill the SMs;
// - prefill, EP32 rank: 4 prompts of 4096 tokens, causal: kv_b (fp8 block-scaled, dequantized to
//   bf16) expansion + flash attention.
// Each row reports time, achieved TFLOP/s and GB/s against the ceilings: 989 TFLOP/s dense bf16
// (H100/H200 SXM datasheet) and the device-to-device copy bandwidth measured in this run, and
// the fraction of the binding bound max(FLOPs / 989 T, bytes / copy BW) reached.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ops/attention.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/mla_kernels.h"

namespace {

using namespace pdserve;
using ops::cuda::check;
namespace mla = ops::cuda::mla;

constexpr double kPeakTflops = 989.0;
constexpr float kScale = 0.1352337788608801f;

// Deterministic uniform values in [-scale, scale) written on the device (no 600 MB host upload).
__global__ void fill_bf16(__nv_bfloat16* p, long long n, unsigned seed, float scale) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    unsigned x = static_cast<unsigned>(i) * 2654435761u ^ seed * 0x9E3779B9u;
    x ^= x >> 16, x *= 0x7feb352du, x ^= x >> 15, x *= 0x846ca68bu, x ^= x >> 16;
    p[i] = __float2bfloat16_rn((static_cast<float>(x >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale);
  }
}
__global__ void fill_u8(unsigned char* p, long long n, unsigned seed) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    unsigned x = static_cast<unsigned>(i) * 2654435761u ^ seed * 0x9E3779B9u;
    x ^= x >> 16, x *= 0x7feb352du, x ^= x >> 15;
    const unsigned char v = static_cast<unsigned char>(x);
    p[i] = (v & 0x7f) == 0x7f ? 0x3c : v;  // no NaN patterns
  }
}

Tensor random_device(const Shape& shape, DType dtype, unsigned seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, dtype, Device::kCuda);
  if (dtype == DType::kBF16)
    fill_bf16<<<1024, 256, 0, ops::cuda::current_stream()>>>(t.data<__nv_bfloat16>(), t.numel(), seed, scale);
  else if (dtype == DType::kF8E4M3)
    fill_u8<<<1024, 256, 0, ops::cuda::current_stream()>>>(t.data<unsigned char>(), t.numel(), seed);
  else
    throw std::runtime_error("random_device: bf16 or fp8");
  ops::cuda::check_launch("fill");
  return t;
}

Tensor i32_device(const std::vector<int32_t>& v, const Shape& shape) {
  Tensor h = Tensor::empty(shape, DType::kI32);
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  return h.to(Device::kCuda);
}

// Mean time of one call over `iters` back-to-back calls, after warm-up, in microseconds.
template <class F>
double time_us(F&& f, int iters = 20) {
  cudaStream_t s = ops::cuda::current_stream();
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  check(cudaEventRecord(a, s), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) f();
  check(cudaEventRecord(b, s), "cudaEventRecord");
  check(cudaEventSynchronize(b), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms * 1000.0 / iters;
}

// Prints one table row; copy_gbs is the device copy bandwidth measured at the start of the run.
void row(double copy_gbs, const std::string& name, double us, double flops, double bytes) {
  const double tflops = flops / us * 1e-6, gbs = bytes / us * 1e-3;
  const double bound_us = std::max(flops / (kPeakTflops * 1e6), bytes / (copy_gbs * 1e3));
  std::printf("| %-44s | %9.1f | %7.1f | %5.1f%% | %7.0f | %5.1f%% | %9.1f | %5.1f%% (%s) |\n", name.c_str(), us,
              tflops, 100.0 * tflops / kPeakTflops, gbs, 100.0 * gbs / copy_gbs, bound_us, 100.0 * bound_us / us,
              flops / (kPeakTflops * 1e6) > bytes / (copy_gbs * 1e3) ? "TC" : "HBM");
}

double measure_copy_gbs() {
  const size_t bytes = size_t(1) << 30;
  Tensor a = Tensor::empty({int64_t(bytes / 4)}, DType::kF32, Device::kCuda);
  Tensor b = Tensor::empty({int64_t(bytes / 4)}, DType::kF32, Device::kCuda);
  const double us = time_us([&] {
    check(cudaMemcpyAsync(b.raw_data(), a.raw_data(), bytes, cudaMemcpyDeviceToDevice, ops::cuda::current_stream()),
          "cudaMemcpyAsync");
  }, 10);
  return 2.0 * bytes / us * 1e-3;  // read + write
}

void bench_decode(double copy_gbs, int64_t batch, int64_t ctx, int64_t page_size, bool components) {
  const ops::MlaDims d;  // DeepSeek-V3: 128 heads, nope 128, rope 64, v 128, kv_lora_rank 512
  const int64_t h = d.num_heads, pages_per_seq = (ctx + page_size - 1) / page_size;
  const int64_t num_pages = batch * pages_per_seq;
  std::vector<int32_t> perm(static_cast<size_t>(num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(1));
  const Tensor table = i32_device(perm, {batch, pages_per_seq});
  const Tensor lens = i32_device(std::vector<int32_t>(static_cast<size_t>(batch), static_cast<int32_t>(ctx)), {batch});
  const Tensor pool = random_device({num_pages, page_size, d.latent_dim()}, DType::kBF16, 1);
  const Tensor q = random_device({batch, h, d.qk_head_dim()}, DType::kBF16, 2);
  const Tensor w_uk = random_device({h, d.qk_nope_head_dim, d.kv_lora_rank}, DType::kBF16, 3, 0.09f);
  const Tensor w_uv = random_device({h, d.v_head_dim, d.kv_lora_rank}, DType::kBF16, 4, 0.09f);
  Tensor out = Tensor::empty({batch, h, d.v_head_dim}, DType::kBF16, Device::kCuda);
  const int64_t ws_bytes = ops::mla_decode_workspace_bytes(batch, d, ctx, DType::kBF16);
  const Tensor ws = Tensor::empty({(ws_bytes + 3) / 4}, DType::kF32, Device::kCuda);
  const int splits = ops::cuda::mla_decode_num_splits(batch, d, ctx, DType::kBF16);

  const double kv_bytes = double(batch) * ctx * d.latent_dim() * 2;
  const double core_flops = double(batch) * ctx * h * 2.0 * (d.latent_dim() + d.kv_lora_rank);
  const double bmm_flops = 2.0 * 2.0 * batch * h * d.qk_nope_head_dim * d.kv_lora_rank;
  const double w_bytes = 2.0 * h * d.qk_nope_head_dim * d.kv_lora_rank * 2;
  const double act_bytes = double(batch) * h * (d.qk_head_dim() + d.v_head_dim) * 2;
  const std::string tag = "B " + std::to_string(batch) + " ctx " + std::to_string(ctx) + " split " + std::to_string(splits);

  if (components) {
    // The same buffers mla_decode_paged uses, for the core and the bmms timed alone.
    Tensor q_abs = random_device({batch, h, d.latent_dim()}, DType::kBF16, 5);
    Tensor o_lat = Tensor::empty({batch, h, d.kv_lora_rank}, DType::kBF16, Device::kCuda);
    Tensor o_part, lse;
    if (splits > 1) {
      o_part = Tensor::empty({batch, splits, h, d.kv_lora_rank}, DType::kF32, Device::kCuda);
      lse = Tensor::empty({batch, splits, h}, DType::kF32, Device::kCuda);
    }
    mla::DecodeCoreArgs c;
    c.q_abs = q_abs.raw_data();
    c.pool = pool.raw_data();
    c.page_size = static_cast<int>(page_size);
    c.pool_pages = num_pages;  // 64-token pages: the wgmma core loads tiles with TMA
    c.page_table = table.data<int32_t>();
    c.page_table_stride = pages_per_seq;
    c.seq_lens = lens.data<int32_t>();
    c.batch = static_cast<int>(batch);
    c.heads = static_cast<int>(h);
    c.num_splits = splits;
    c.scale = kScale;
    c.o_lat = o_lat.raw_data();
    c.o_part = splits > 1 ? o_part.data<float>() : nullptr;
    c.lse_part = splits > 1 ? lse.data<float>() : nullptr;
    cudaStream_t s = ops::cuda::current_stream();
    const double core_us = time_us([&] {
      mla::decode_core(c, s);
      if (splits > 1) mla::decode_combine(c.o_part, c.lse_part, c.o_lat, c.batch, c.heads, splits, s);
    });
    row(copy_gbs, "decode core mma.sync (" + tag + ")", core_us, core_flops, kv_bytes + act_bytes);
    if (mla::decode_core_wgmma_supported()) {
      const double wg_us = time_us([&] {
        mla::decode_core_wgmma(c, s);
        if (splits > 1) mla::decode_combine(c.o_part, c.lse_part, c.o_lat, c.batch, c.heads, splits, s);
      });
      row(copy_gbs, "decode core wgmma (" + tag + ")", wg_us, core_flops, kv_bytes + act_bytes);
      const double one_us = time_us([&] {
        mla::decode_core_wgmma_one_schedule(c, s);
        if (splits > 1) mla::decode_combine(c.o_part, c.lse_part, c.o_lat, c.batch, c.heads, splits, s);
      });
      row(copy_gbs, "  wgmma core, TMA, one schedule (no ping-pong)", one_us, core_flops, kv_bytes + act_bytes);
      mla::DecodeCoreArgs c_copies = c;
      c_copies.pool_pages = 0;  // the same kernel with per-thread cp.async tile loads
      const double cp_us = time_us([&] {
        mla::decode_core_wgmma(c_copies, s);
        if (splits > 1) mla::decode_combine(c.o_part, c.lse_part, c.o_lat, c.batch, c.heads, splits, s);
      });
      row(copy_gbs, "  wgmma core, cp.async tile loads", cp_us, core_flops, kv_bytes + act_bytes);
      // Where the time goes: the same kernel (cp.async loads) with phases switched off (its outputs
      // are then wrong).
      const std::pair<int, const char*> phases[] = {{1, "loads only"}, {2 | 4, "MMAs only"}, {1 | 2, "loads + QK"},
                                                    {1 | 4, "loads + PV"}};
      for (const auto& ph : phases) {
        const int mask = ph.first;  // a plain local: lambdas capture structured bindings only from C++20
        const double us = time_us([&] { mla::decode_core_wgmma_phases(c, s, mask); });
        std::printf("|   wgmma core, %-30s | %9.1f |\n", ph.second, us);
      }
      const std::pair<int, const char*> pp_phases[] = {{2 | 4, "MMAs + softmax"}, {1, "loads + softmax"},
                                                       {1 | 2, "loads + QK"}, {1 | 4, "loads + PV"}, {2, "QK only"},
                                                       {0, "softmax + barriers only"}};
      for (const auto& ph : pp_phases) {
        const int mask = ph.first;
        const double us = time_us([&] { mla::decode_core_pingpong_phases(c, s, mask); });
        std::printf("|   ping-pong core, %-26s | %9.1f |\n", ph.second, us);
      }
      // One head block instead of two: each sequence's KV is then read by one CTA, not two. If
      // the loads take half as long, the second block's read costs HBM bandwidth (no L2 reuse),
      // and sharing one read between the two blocks (a cluster) is the next lever.
      mla::DecodeCoreArgs c64 = c;
      c64.heads = 64;
      const double one_block_us = time_us([&] { mla::decode_core_wgmma_phases(c64, s, 7); });
      const double one_block_loads_us = time_us([&] { mla::decode_core_wgmma_phases(c64, s, 1); });
      const double one_block_pp_us = time_us([&] { mla::decode_core_wgmma(c64, s); });
      std::printf("|   wgmma core, 64 heads (one block per seq)    | %9.1f |\n", one_block_us);
      std::printf("|   ping-pong core, 64 heads                    | %9.1f |\n", one_block_pp_us);
      std::printf("|   wgmma core, 64 heads, loads only            | %9.1f |\n", one_block_loads_us);
    }
    // The two absorption bmms alone, each on the kernel mla_decode_paged used before (gemm_bf16, the
    // q_pe copy a separate kernel not timed here) and on the one it uses now (absorb_bmm_bf16, the
    // q_pe copy in the W_UK launch). Bytes: what each must move at least (operands read once,
    // output written once); "of BW" is against the device copy rate measured in this run.
    const int b = static_cast<int>(batch), hh = static_cast<int>(h), r = static_cast<int>(d.kv_lora_rank);
    const int nope = static_cast<int>(d.qk_nope_head_dim), v = static_cast<int>(d.v_head_dim);
    const int rope = static_cast<int>(d.qk_rope_head_dim);
    const mla::Operand a_q{q.raw_data(), mla::Elem::kBF16, d.qk_head_dim(), h * d.qk_head_dim()};
    const mla::Operand b_uk{w_uk.raw_data(), mla::Elem::kBF16, int64_t(nope) * r, r};
    const mla::Output c_qabs{q_abs.raw_data(), mla::Elem::kBF16, d.latent_dim(), h * d.latent_dim()};
    const mla::Operand a_lat{o_lat.raw_data(), mla::Elem::kBF16, r, int64_t(hh) * r};
    const mla::Operand b_uv{w_uv.raw_data(), mla::Elem::kBF16, int64_t(v) * r, r};
    const mla::Output c_out{out.raw_data(), mla::Elem::kBF16, v, int64_t(hh) * v};
    const double uk_bytes = w_bytes / 2 + double(batch) * h * (nope + r) * 2;
    const double qpe_bytes = 2.0 * batch * h * rope * 2;  // q_pe read + written into q_abs
    const double uv_bytes = w_bytes / 2 + double(batch) * h * (r + v) * 2;
    const double uk_old = time_us([&] { mla::gemm_bf16(a_q, b_uk, true, c_qabs, b, r, nope, hh, s); });
    row(copy_gbs, "  W_UK bmm, gemm_bf16 (before; q_pe apart)", uk_old, bmm_flops / 2, uk_bytes);
    const double uk_new = time_us([&] {
      if (!mla::absorb_bmm_bf16(a_q, b_uk, true, c_qabs, b, r, nope, hh, rope, s))
        throw std::runtime_error("absorb_bmm_bf16 declined W_UK");
    });
    row(copy_gbs, "  W_UK bmm + q_pe, absorb_bmm_bf16 (now)", uk_new, bmm_flops / 2, uk_bytes + qpe_bytes);
    const double uk_new_only = time_us([&] { mla::absorb_bmm_bf16(a_q, b_uk, true, c_qabs, b, r, nope, hh, 0, s); });
    row(copy_gbs, "  W_UK bmm alone, absorb_bmm_bf16", uk_new_only, bmm_flops / 2, uk_bytes);
    const double uv_old = time_us([&] { mla::gemm_bf16(a_lat, b_uv, false, c_out, b, v, r, hh, s); });
    row(copy_gbs, "  W_UV bmm, gemm_bf16 (before)", uv_old, bmm_flops / 2, uv_bytes);
    const double uv_new = time_us([&] {
      if (!mla::absorb_bmm_bf16(a_lat, b_uv, false, c_out, b, v, r, hh, 0, s))
        throw std::runtime_error("absorb_bmm_bf16 declined W_UV");
    });
    row(copy_gbs, "  W_UV bmm, absorb_bmm_bf16 (now)", uv_new, bmm_flops / 2, uv_bytes);
    const double both_us = time_us([&] {
      mla::absorb_bmm_bf16(a_q, b_uk, true, c_qabs, b, r, nope, hh, rope, s);
      mla::absorb_bmm_bf16(a_lat, b_uv, false, c_out, b, v, r, hh, 0, s);
    });
    row(copy_gbs, "  both bmms + q_pe, absorb_bmm_bf16", both_us, bmm_flops, uk_bytes + qpe_bytes + uv_bytes);
    std::printf("|   bmms: before %.1f us (gemm_bf16, without the q_pe copy), now %.1f us (%.1f + %.1f) |\n",
                uk_old + uv_old, uk_new + uv_new, uk_new, uv_new);
  }
  // The whole op, bmms on gemm_bf16 + convert_rows (PDSERVE_MLA_BMM=gemm, read per call) and as it
  // runs by default (absorb_bmm_bf16).
  setenv("PDSERVE_MLA_BMM", "gemm", 1);
  const double before_us = time_us([&] {
    ops::mla_decode_paged(q, pool, table, lens, w_uk, w_uv, d, kScale, out, ctx, ws);
  });
  unsetenv("PDSERVE_MLA_BMM");
  row(copy_gbs, "decode + old bmms (" + tag + ")", before_us, core_flops + bmm_flops,
      kv_bytes + w_bytes + act_bytes);
  const double full_us = time_us([&] {
    ops::mla_decode_paged(q, pool, table, lens, w_uk, w_uv, d, kScale, out, ctx, ws);
  });
  row(copy_gbs, "decode + bmms (" + tag + ")", full_us, core_flops + bmm_flops, kv_bytes + w_bytes + act_bytes);
}

void bench_prefill(double copy_gbs, int64_t seqs, int64_t len) {
  const ops::MlaDims d;
  const int64_t h = d.num_heads, t = seqs * len;
  std::vector<int32_t> cu(static_cast<size_t>(seqs + 1));
  for (int64_t i = 0; i <= seqs; ++i) cu[i] = static_cast<int32_t>(i * len);
  const Tensor cu_d = i32_device(cu, {seqs + 1});
  const Tensor q = random_device({t, h, d.qk_head_dim()}, DType::kBF16, 11);
  const Tensor latent = random_device({t, d.latent_dim()}, DType::kBF16, 12);
  const int64_t kv_rows = h * (d.qk_nope_head_dim + d.v_head_dim);
  Weight kv_b{random_device({kv_rows, d.kv_lora_rank}, DType::kF8E4M3, 13), Tensor()};
  {
    Tensor s = Tensor::empty({kv_rows / 128, d.kv_lora_rank / 128}, DType::kF32);
    for (int64_t i = 0; i < s.numel(); ++i) s.data<float>()[i] = 2e-4f;
    kv_b.scale_inv = s.to(Device::kCuda);
  }
  Tensor out = Tensor::empty({t, h, d.v_head_dim}, DType::kBF16, Device::kCuda);
  const int64_t ws_bytes = ops::mla_prefill_workspace_bytes(t, t, d, DType::kBF16, DType::kBF16);
  const Tensor ws = Tensor::empty({(ws_bytes + 3) / 4}, DType::kF32, Device::kCuda);
  const std::string tag = std::to_string(seqs) + " x " + std::to_string(len) + " causal";
  cudaStream_t s = ops::cuda::current_stream();

  const double gemm_flops = 2.0 * t * d.kv_lora_rank * kv_rows;
  Tensor kv = Tensor::empty({t, kv_rows}, DType::kBF16, Device::kCuda);
  mla::Operand b_kvb{kv_b.weight.raw_data(), mla::Elem::kFP8, 0, d.kv_lora_rank, kv_b.scale_inv.data<float>(),
                     d.kv_lora_rank / 128};
  const double gemm_us = time_us([&] {
    mla::gemm_bf16({latent.raw_data(), mla::Elem::kBF16, 0, d.latent_dim()}, b_kvb, false,
                   {kv.raw_data(), mla::Elem::kBF16, 0, kv_rows}, static_cast<int>(t), static_cast<int>(kv_rows),
                   static_cast<int>(d.kv_lora_rank), 1, s);
  }, 5);
  row(copy_gbs, "  kv_b GEMM, mla gemm_bf16 (fp8 w in-loader)", gemm_us, gemm_flops,
      t * d.latent_dim() * 2.0 + kv_rows * d.kv_lora_rank + t * kv_rows * 2.0);
  // What mla_prefill_varlen runs: cuBLASLt bf16 GEMM (ops/cuda/linear.h) on a dense latent copy and
  // a bf16 kv_b (the conversions are a few tens of microseconds, included in "prefill total").
  {
    const Tensor x = random_device({t, d.kv_lora_rank}, DType::kBF16, 14);
    const Weight w{random_device({kv_rows, d.kv_lora_rank}, DType::kBF16, 15, 0.05f), Tensor()};
    const double lt_us = time_us([&] { ops::cuda::linear(x, w, kv); }, 5);
    row(copy_gbs, "  kv_b GEMM, cuBLASLt bf16 (used)", lt_us, gemm_flops,
        t * d.kv_lora_rank * 2.0 + kv_rows * d.kv_lora_rank * 2.0 + t * kv_rows * 2.0);
  }

  const double pairs = double(seqs) * len * (len + 1) / 2.0;
  const double attn_flops = pairs * h * 2.0 * (d.qk_head_dim() + d.v_head_dim);
  mla::PrefillArgs p;
  p.cu_q = cu_d.data<int32_t>();
  p.cu_kv = cu_d.data<int32_t>();
  p.num_seqs = static_cast<int>(seqs);
  p.max_q_len = static_cast<int>(len);
  p.heads = static_cast<int>(h);
  p.scale = kScale;
  p.q = q.raw_data();
  p.q_type = mla::Elem::kBF16;
  p.q_row = h * d.qk_head_dim();
  p.q_head = d.qk_head_dim();
  p.kv = kv.raw_data();
  p.k_pe = static_cast<const char*>(latent.raw_data()) + d.kv_lora_rank * 2;
  p.k_pe_type = mla::Elem::kBF16;
  p.k_pe_row = d.latent_dim();
  p.out = out.raw_data();
  p.out_type = mla::Elem::kBF16;
  p.nope = 128;
  p.rope = 64;
  p.v = 128;
  const double attn_bytes = t * kv_rows * 2.0 + t * h * (192 + 128) * 2.0;
  const double attn_us = time_us([&] { mla::prefill_flash(p, s); }, 5);
  row(copy_gbs, "  flash attention (" + tag + ")", attn_us, attn_flops, attn_bytes);
  // The two prefill kernels side by side (prefill_flash above runs the one PDSERVE_MLA_PREFILL or
  // the default picks): mma.sync FlashAttention-2 and the Hopper wgmma kernel, same inputs.
  {
    const double f2_us = time_us([&] { mla::prefill_flash2(p, s); }, 5);
    row(copy_gbs, "  flash2 mma.sync (" + tag + ")", f2_us, attn_flops, attn_bytes);
    Tensor out_f2 = Tensor::empty({t, h, d.v_head_dim}, DType::kBF16, Device::kCuda);
    check(cudaMemcpyAsync(out_f2.raw_data(), out.raw_data(), out.nbytes(), cudaMemcpyDeviceToDevice, s), "copy");
    if (mla::prefill_flash_wgmma_applies(p)) {
      const double wg_us = time_us([&] { mla::prefill_flash_wgmma_launch_version(p, s, 1); }, 5);
      row(copy_gbs, "  wgmma (" + tag + ")", wg_us, attn_flops, attn_bytes);
      // Agreement on the last 256 tokens (the longest rows), all heads: max |wgmma - flash2| / max |flash2|.
      const auto last_rows = [&](const Tensor& dev) {
        Tensor host = Tensor::empty({256, h, d.v_head_dim}, DType::kBF16);
        check(cudaMemcpy(host.raw_data(), static_cast<const char*>(dev.raw_data()) + (dev.nbytes() - host.nbytes()),
                         host.nbytes(), cudaMemcpyDeviceToHost),
              "cudaMemcpy");
        return host.to_f32();
      };
      const Tensor b = last_rows(out_f2);
      const auto agreement = [&](const char* what, double us) {
        const Tensor a = last_rows(out);
        double num = 0, den = 0;
        bool nan = false;
        for (int64_t i = 0; i < b.numel(); ++i) {
          const double x = a.data<float>()[i], y = b.data<float>()[i];
          nan = nan || std::isnan(x);
          num = std::max(num, std::abs(x - y));
          den = std::max(den, std::abs(y));
        }
        std::printf("|   %s / flash2: %.2fx faster; last 256 tokens max|diff|/max %.2e%s; default kernel: %s v%d\n", what,
                    f2_us / us, num / std::max(den, 1e-30), nan ? " (NaN!)" : "",
                    mla::kPrefillDefault == mla::PrefillKernel::kWgmma ? "wgmma" : "flash2",
                    mla::kPrefillWgmmaVersionDefault);
      };
      agreement("wgmma", wg_us);
      // Version 2 (PDSERVE_MLA_PREFILL=wgmma2), then its changes alone and in part (flags of
      // prefill_flash_wgmma_launch_flags: 1 Q in registers, 2 staggered warpgroups, 4 a fourth KV
      // stage in Q's memory, 8 the L2-friendly CTA order), to see which ones pay.
      const double v2_us = time_us([&] { mla::prefill_flash_wgmma_launch_version(p, s, 2); }, 5);
      row(copy_gbs, "  wgmma2 (" + tag + ")", v2_us, attn_flops, attn_bytes);
      agreement("wgmma2", v2_us);
      const std::pair<int, const char*> pieces[] = {{1, "Q in regs"},
                                                    {2, "stagger"},
                                                    {8, "L2 order"},
                                                    {3, "Q in regs + stagger"},
                                                    {11, "Q in regs + stagger + L2 order"},
                                                    {7, "Q regs + stagger + 4 stages"},
                                                    {13, "Q regs + 4 stages + L2 order"},
                                                    {9, "Q in regs + L2 order"},
                                                    {15, "Q regs + stagger + 4 st + L2"},
                                                    {21, "Q regs + 4 stages + S overlap"},
                                                    {29, "Q regs + 4 st + S overlap + L2"}};
      for (const auto& piece : pieces) {
        const int flags = piece.first;
        const char* what = piece.second;
        const double us = time_us([&] { mla::prefill_flash_wgmma_launch_flags(p, s, flags); }, 5);
        row(copy_gbs, "    flags " + std::to_string(flags) + ": " + what, us, attn_flops, attn_bytes);
      }
    } else {
      std::printf("|   wgmma prefill kernel does not apply on this device\n");
    }
  }

  const double full_us = time_us([&] {
    ops::mla_prefill_varlen(q, latent, kv_b, d, cu_d, cu_d, len, kScale, out, ws);
  }, 5);
  row(copy_gbs, "prefill total (" + tag + ")", full_us, gemm_flops + attn_flops,
      t * d.latent_dim() * 2.0 + kv_rows * d.kv_lora_rank + 2 * t * kv_rows * 2.0 + t * h * (192 + 128) * 2.0);
}

}  // namespace

int main() {
  try {
    int dev = 0;
    cudaDeviceProp prop{};
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
    const double copy_gbs = measure_copy_gbs();
    std::printf("MLA attention benchmark on %s (%d SMs, %.0f MiB L2)\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize / 1048576.0);
    std::printf("ceilings: %.0f TFLOP/s dense bf16 (datasheet); device copy %.0f GB/s (read + write, measured now)\n\n",
                kPeakTflops, copy_gbs);
    std::printf("| %-44s | %9s | %7s | %6s | %7s | %6s | %9s | %-13s |\n", "op", "time (us)", "TFLOP/s", "of TC",
                "GB/s", "of BW", "bound(us)", "of bound");
    std::printf("|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(11, '-').c_str(),
                std::string(9, '-').c_str(), std::string(8, '-').c_str(), std::string(9, '-').c_str(),
                std::string(8, '-').c_str(), std::string(11, '-').c_str(), std::string(15, '-').c_str());
    bench_decode(copy_gbs, 256, 2000, 64, true);   // EP72 decode rank (LMSYS 96 x H100)
    bench_decode(copy_gbs, 16, 8192, 64, false);   // small batch, long context: split-KV
    bench_prefill(copy_gbs, 4, 4096);              // EP32 prefill rank: 16,384 tokens
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
