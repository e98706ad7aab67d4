// Masked grouped expert GEMMs of EP decode, one GPU: the Hopper FP8 wgmma kernel
// (ops::cuda::grouped_gemm_masked_wgmma, column tiles 128 and 256, alone on fp8 x and behind
// ops::cuda::quantize_fp8_masked on bf16 x) and the mma.sync kernel (ops::cuda::grouped_gemm_masked_tc),
// neither used by the model yet, against the CUDA-core GEMV the EP experts run today
// (ops::grouped_gemv_masked) and cuBLASLt's masked grouped GEMMs (ops::grouped_linear_masked: every
// expert over all T_cap rows), at DeepSeek-V3's expert shapes: gate|up fused (N = 4096, K = 7168)
// and down (N = 7168, K = 2048), fp8 e4m3 experts with 128x128 block scales, y bf16. Cases: 4
// experts x 512 rows (T_cap 512: EP72, 256 tokens per rank), 32 x 64 and 32 x 8 (T_cap 2048: EP8
// at 256 and 32 requests per GPU).
//
// x is fp8 with per-row 128-column scales for the fp8 kernels and the GEMV (the low-latency
// dispatch's layout); the "quantize + wgmma" row and grouped_linear_masked take bf16 x (the latter
// quantizes internally; that pass is in its time). Each op is timed as a CUDA graph of back-to-back
// calls (cudaEvents around one graph launch, median of 15 samples after warm-up), as gemm_bench's
// time_graph. TFLOP/s counts the rows present (2 * rows * N * K); "of FP8" is that rate over the
// FP8 ceiling measured in the same run (pdserve's block-scaled FP8 GEMM engine, cuBLASLt, at
// 8192^3, as layer_bench measures it); weight GB/s is the bytes of the experts' weights over the
// time (every expert has rows here, so each weight is read at least once by every op).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/linear.h"
#include "ops/grouped_gemm.h"
#include "ops/quant.h"
#include "tensor/tensor.h"
#include "bench_util.cuh"

namespace {

using namespace pdserve;
using ops::cuda::check;
using namespace pdserve::bench;

// ---- cases ----

struct Case {
  int64_t groups, rows_each, t_cap;
};
struct GemmShape {
  const char* name;
  int64_t n, k;
};

double g_fp8_ceiling_tflops = 0;  // measured at the start of the run

void print_row(const char* op, double us, double flops, double weight_bytes) {
  const double tflops = flops / (us * 1e-6) / 1e12;
  std::printf("  %-40s %12.1f us %9.1f TFLOP/s %6.1f%% of FP8 %9.1f GB/s weights\n", op, us, tflops,
              g_fp8_ceiling_tflops > 0 ? 100.0 * tflops / g_fp8_ceiling_tflops : 0.0, weight_bytes / (us * 1e-6) / 1e9);
  std::fflush(stdout);
}

// The FP8 ceiling: pdserve's block-scaled FP8 GEMM engine (cuBLASLt) at 8192^3 on pre-quantized x,
// as layer_bench's measure_ceilings (the H100 of 2026-12-05 gave 1296.5 TFLOP/s).
double fp8_ceiling_tflops(cudaStream_t s) {
  const int64_t m = 8192, n = 8192, k = 8192;
  const Tensor x = device_tensor({m, k}, DType::kBF16, 901);
  Tensor y = Tensor::empty({m, n}, DType::kBF16, Device::kCuda);
  Tensor q = Tensor::empty({m, k}, DType::kF8E4M3, Device::kCuda), sc = Tensor::empty({k / 128, m}, DType::kF32, Device::kCuda);
  ops::quantize_fp8_per_token_group(x, q, sc);
  const Weight w = device_weight(n, k, DType::kF8E4M3, 902);
  const ops::cuda::detail::Fp8Operand a{q.data<uint8_t>(), sc.data<float>(), m, k};
  const double ms = time_eager(s, [&] { ops::cuda::detail::fp8_gemm(a, w, y.raw_data(), DType::kBF16, n); });
  check(cudaStreamSynchronize(s), "ceiling");
  return 2.0 * m * n * k / (ms * 1e-3) / 1e12;
}

void bench_case(cudaStream_t s, const Case& c, const GemmShape& sh) {
  std::printf("\n%s: %lld experts x %lld rows (T_cap %lld), N %lld, K %lld\n", sh.name, static_cast<long long>(c.groups),
              static_cast<long long>(c.rows_each), static_cast<long long>(c.t_cap), static_cast<long long>(sh.n),
              static_cast<long long>(sh.k));
  std::vector<Weight> experts;
  for (int64_t g = 0; g < c.groups; ++g) {
    Weight w;
    w.weight = device_tensor({sh.n, sh.k}, DType::kF8E4M3, 100 + static_cast<uint64_t>(g));
    w.scale_inv = device_tensor({sh.n / 128, sh.k / 128}, DType::kF32, 200 + static_cast<uint64_t>(g), 1e-4f, 2e-4f);
    experts.push_back(w);
  }
  const Tensor table = ops::expert_pointer_table(experts);
  const Tensor xq = device_tensor({c.groups, c.t_cap, sh.k}, DType::kF8E4M3, 1);
  const Tensor xs = device_tensor({c.groups, sh.k / 128, c.t_cap}, DType::kF32, 2, 1e-3f, 2e-3f);
  Tensor cnt = Tensor::empty({c.groups}, DType::kI32);
  for (int64_t g = 0; g < c.groups; ++g) cnt.data<int32_t>()[g] = static_cast<int32_t>(c.rows_each);
  const Tensor cd = cnt.to(Device::kCuda);
  Tensor y = Tensor::empty({c.groups, c.t_cap, sh.n}, DType::kBF16, Device::kCuda);

  const double rows = static_cast<double>(c.groups * c.rows_each);
  const double flops = 2.0 * rows * static_cast<double>(sh.n) * static_cast<double>(sh.k);
  const double wbytes = static_cast<double>(c.groups) * static_cast<double>(sh.n) * static_cast<double>(sh.k);
  auto run = [&](const char* op, int reps, const std::function<void()>& f) {
    try {
      print_row(op, time_graph(s, reps, f) * 1e3, flops, wbytes);
    } catch (const std::exception& e) {
      std::printf("  %-40s FAILED: %s\n", op, e.what());
      std::fflush(stdout);
    }
  };
  // Column tiles 128 and 256 (the public call takes 256 where N allows). The 2- and 4-CTA cluster
  // variants sharing x or W by TMA multicast measured 1.3-2x slower (docs/perf/kernels.md).
  run("grouped_gemm_masked_wgmma BN128 (fp8 x)", 10,
      [&] { ops::cuda::detail::grouped_gemm_masked_wgmma_bn(xq, xs, cd, experts, table, y, 128); });
  run("grouped_gemm_masked_wgmma BN256 (fp8 x)", 10,
      [&] { ops::cuda::detail::grouped_gemm_masked_wgmma_bn(xq, xs, cd, experts, table, y, 256); });
  {
    // bf16 rows of the same layout: quantize_fp8_masked (counted rows only), then the GEMM.
    const Tensor xb = device_tensor({c.groups, c.t_cap, sh.k}, DType::kBF16, 4);
    Tensor q = Tensor::empty({c.groups, c.t_cap, sh.k}, DType::kF8E4M3, Device::kCuda);
    Tensor qs = Tensor::empty({c.groups, sh.k / 128, c.t_cap}, DType::kF32, Device::kCuda);
    run("quantize_fp8_masked + wgmma (public) (bf16)", 10, [&] {
      ops::cuda::quantize_fp8_masked(xb, cd, q, qs);
      ops::cuda::grouped_gemm_masked_wgmma(q, qs, cd, experts, table, y);
    });
    // The quantizer alone: memory-bound, so its row shows bytes (bf16 read, fp8 + scales written).
    const double qbytes = rows * static_cast<double>(sh.k) * (2.0 + 1.0 + 4.0 / 128.0);
    try {
      const double us = time_graph(s, 10, [&] { ops::cuda::quantize_fp8_masked(xb, cd, q, qs); }) * 1e3;
      std::printf("  %-40s %12.1f us %9.1f GB/s (bf16 in, fp8 + scales out)\n", "quantize_fp8_masked alone (bf16 x)", us,
                  qbytes / (us * 1e-6) / 1e9);
    } catch (const std::exception& e) {
      std::printf("  %-40s FAILED: %s\n", "quantize_fp8_masked alone (bf16 x)", e.what());
    }
    std::fflush(stdout);
  }
  if (sh.n == 4096) {
    // The activation between gate|up and down: SiLU(gate) * up of the [G, T_cap, N] bf16 gate|up
    // output (halves of n = N / 2), quantized per 128 columns for the down GEMM. Fused
    // (silu_mul_quant_fp8_masked) against silu_mul_masked into bf16 then quantize_fp8_masked.
    // Memory-bound: bytes are bf16 gate|up read, fp8 + scales written (the fused op's traffic).
    const int64_t half = sh.n / 2;
    const Tensor fused = device_tensor({c.groups, c.t_cap, sh.n}, DType::kBF16, 5);
    const Tensor gate = fused.slice(2, 0, half), up = fused.slice(2, half, sh.n);
    Tensor act = Tensor::empty({c.groups, c.t_cap, half}, DType::kBF16, Device::kCuda);
    Tensor q = Tensor::empty({c.groups, c.t_cap, half}, DType::kF8E4M3, Device::kCuda);
    Tensor qs = Tensor::empty({c.groups, half / 128, c.t_cap}, DType::kF32, Device::kCuda);
    const double abytes = rows * static_cast<double>(half) * (4.0 + 1.0 + 4.0 / 128.0);
    auto run_bytes = [&](const char* op, const std::function<void()>& f) {
      try {
        const double us = time_graph(s, 10, f) * 1e3;
        std::printf("  %-40s %12.1f us %9.1f GB/s (bf16 gate|up in, fp8 + scales out)\n", op, us, abytes / (us * 1e-6) / 1e9);
      } catch (const std::exception& e) {
        std::printf("  %-40s FAILED: %s\n", op, e.what());
      }
      std::fflush(stdout);
    };
    run_bytes("silu_mul_quant_fp8_masked (fused)", [&] { ops::cuda::silu_mul_quant_fp8_masked(gate, up, cd, q, qs); });
    run_bytes("silu_mul_masked + quantize_fp8_masked", [&] {
      ops::cuda::silu_mul_masked(gate, up, cd, act);
      ops::cuda::quantize_fp8_masked(act, cd, q, qs);
    });
  }
  run("grouped_gemm_masked_tc (fp8 x)", 10, [&] { ops::cuda::grouped_gemm_masked_tc(xq, cd, experts, table, y, xs); });
  // Milliseconds to tens of milliseconds per GEMV call here: one call per graph.
  run("grouped_gemv_masked (fp8 x)", 1, [&] { ops::grouped_gemv_masked(xq, cd, experts, table, y, xs); });
  const Tensor xb = device_tensor({c.groups, c.t_cap, sh.k}, DType::kBF16, 3);
  run("grouped_linear_masked (bf16 x)", 2, [&] { ops::grouped_linear_masked(xb, cd, experts, y); });
}

int run() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  std::printf("device: %s, %d SMs, %.1f GiB, L2 %d MiB, CUDA runtime %d, driver %d\n", p.name, p.multiProcessorCount,
              p.totalGlobalMem / 1073741824.0, p.l2CacheSize >> 20, rt, drv);
  std::printf("median of %d CUDA-graph replays; y bf16; TFLOP/s over the rows present, GB/s over the experts' "
              "weights\n",
              kSamples);
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  ops::cuda::set_current_stream(s);
  g_fp8_ceiling_tflops = fp8_ceiling_tflops(s);
  std::printf("FP8 ceiling (block-scaled FP8 GEMM 8192^3, pdserve engine, this run): %.1f TFLOP/s\n", g_fp8_ceiling_tflops);
  const std::vector<Case> cases = {{4, 512, 512}, {32, 64, 2048}, {32, 8, 2048}};
  const std::vector<GemmShape> shapes = {{"experts gate|up", 4096, 7168}, {"experts down", 7168, 2048}};
  for (const Case& c : cases)
    for (const GemmShape& sh : shapes) bench_case(s, c, sh);
  ops::cuda::set_current_stream(cudaStreamPerThread);
  check(cudaStreamDestroy(s), "cudaStreamDestroy");
  return 0;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "grouped_masked_bench: %s\n", e.what());
    return 1;
  }
}
