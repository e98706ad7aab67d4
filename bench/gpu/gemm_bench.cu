// GEMM benchmark, one GPU, one run: the card's ceilings (device copy, cuBLASLt BF16 / FP8 GEMM,
// best of the heuristic's top algorithms) and then pdserve's linear and grouped expert GEMMs at
// DeepSeek-V3's shapes for one rank of the published deployments (decode: EP72 rank, 256 tokens,
// 4 local experts x 512 tokens; prefill: EP32 rank, 16,384 tokens, 9 local experts x ~14.5k).
//
// Our ops are timed as CUDA graphs of back-to-back calls (cudaEvents around one graph launch,
// median of 15 samples after warm-up), so host launch overhead does not hide small kernels; the
// raw cuBLASLt ceilings are timed eagerly (each call is milliseconds). Activations are bf16, as in
// the GPU model; "quant+gemm" rows include quantizing x to fp8.
#include <cublasLt.h>
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
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/quant.h"
#include "tensor/tensor.h"
#include "bench_util.cuh"

namespace {

using namespace pdserve;
using ops::cuda::check;
using namespace pdserve::bench;

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": " + cublasLtGetStatusName(s));
}

// ---- ceilings ----

// copy_tbs: bench_util.cuh

enum class LtKind { kBf16, kFp8Tensor, kFp8Block };
const char* lt_name(LtKind k) {
  return k == LtKind::kBf16 ? "BF16" : k == LtKind::kFp8Tensor ? "FP8 tensor-scaled, fast accum" : "FP8 block-scaled 1x128/128x128";
}

struct LtResult {
  double heuristic_ms = 0, best_ms = 0;
  int algos = 0;
};

// Raw cuBLASLt D[n x m] = A^T B (A: k x n, B: k x m, TN, bf16 output), every algorithm of the
// heuristic's top 8 timed; the ceiling is the best.
LtResult lt_gemm(cublasLtHandle_t h, cudaStream_t s, LtKind kind, int64_t m, int64_t n, int64_t k) {
  const bool fp8 = kind != LtKind::kBf16;
  const DType in = fp8 ? DType::kF8E4M3 : DType::kBF16;
  Tensor a = device_tensor({n, k}, in, 11, -0.05f, 0.05f), b = device_tensor({m, k}, in, 12);
  Tensor d = Tensor::empty({m, n}, DType::kBF16, Device::kCuda);
  Tensor ws = Tensor::empty({32 << 20}, DType::kF8E4M3, Device::kCuda);
  const int64_t kb4 = ((k / 128) + 3) / 4 * 4;
  Tensor sa = device_tensor({kind == LtKind::kFp8Block ? (n + 127) / 128 * kb4 : 1}, DType::kF32, 13, 1e-3f, 2e-3f);
  Tensor sb = device_tensor({kind == LtKind::kFp8Block ? (k / 128) * m : 1}, DType::kF32, 14, 1e-2f, 2e-2f);

  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  LtResult r;
  try {
    check_lt(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
    const int32_t opt = CUBLAS_OP_T, opn = CUBLAS_OP_N;
    check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opt, sizeof(opt)), "TRANSA");
    check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opn, sizeof(opn)), "TRANSB");
    if (fp8) {
      const void* pa = sa.raw_data();
      const void* pb = sb.raw_data();
      check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &pa, sizeof(pa)), "A scale");
      check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &pb, sizeof(pb)), "B scale");
    }
    if (kind == LtKind::kFp8Tensor) {
      const int8_t fast = 1;
      check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)), "FAST_ACCUM");
    }
    if (kind == LtKind::kFp8Block) {
      const int32_t ma = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, mb = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
      check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof(ma)), "A scale mode");
      check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof(mb)), "B scale mode");
    }
    const cudaDataType t = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    check_lt(cublasLtMatrixLayoutCreate(&la, t, k, n, k), "layout A");
    check_lt(cublasLtMatrixLayoutCreate(&lb, t, k, m, k), "layout B");
    check_lt(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, n, m, n), "layout D");
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const uint64_t wsb = 32 << 20;
    check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)), "ws");
    cublasLtMatmulHeuristicResult_t res[8] = {};
    int count = 0;
    check_lt(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, pref, 8, res, &count), "heuristic");
    if (count == 0) throw std::runtime_error("no algorithm");
    const float alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < count; ++i) {
      if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
      auto call = [&] {
        check_lt(cublasLtMatmul(h, desc, &alpha, a.raw_data(), la, b.raw_data(), lb, &beta, d.raw_data(), ld, d.raw_data(),
                                ld, &res[i].algo, ws.raw_data(), res[i].workspaceSize, s),
                 "cublasLtMatmul");
      };
      const double ms = time_eager(s, call);
      if (r.algos == 0) r.heuristic_ms = ms;
      r.best_ms = r.algos == 0 ? ms : std::min(r.best_ms, ms);
      ++r.algos;
    }
  } catch (...) {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    throw;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatmulDescDestroy(desc);
  return r;
}

struct Ceilings {
  double copy_tbs = 0, bf16_tflops = 0, fp8_block_tflops = 0;
};

// ---- our ops ----

struct Row {
  std::string op;
  std::string shape;
  const char* weights;
  double us, flops, bytes;
  bool bf16_compute;
};

void print_row_header() {
  std::printf("\n%-30s %-26s %-5s %10s %9s %8s %10s %8s\n", "op", "shape (M x N x K)", "W", "time us", "TFLOP/s",
              "TB/s", "roofln us", "% roof");
  std::printf("%s\n", std::string(113, '-').c_str());
}

void print_row(const Row& r, const Ceilings& c) {
  const double tflops = r.flops / (r.us * 1e-6) / 1e12, tbs = r.bytes / (r.us * 1e-6) / 1e12;
  const double ceil_flops = (r.bf16_compute ? c.bf16_tflops : c.fp8_block_tflops) * 1e12;
  const double roof_us = std::max(ceil_flops > 0 ? r.flops / ceil_flops : 0.0, r.bytes / (c.copy_tbs * 1e12)) * 1e6;
  std::printf("%-30s %-26s %-5s %10.1f %9.1f %8.2f %10.1f %7.0f%%\n", r.op.c_str(), r.shape.c_str(), r.weights, r.us,
              tflops, tbs, roof_us, 100.0 * roof_us / r.us);
  std::fflush(stdout);
}

void print_failure(const std::string& op, const std::exception& e) {
  std::printf("%-30s FAILED: %s\n", op.c_str(), e.what());
  std::fflush(stdout);
}

std::string mnk(int64_t m, int64_t n, int64_t k) {
  return std::to_string(m) + " x " + std::to_string(n) + " x " + std::to_string(k);
}

int reps_for(int64_t m) { return m <= 1024 ? 20 : 3; }

void bench_linear(cudaStream_t s, const Ceilings& c, const std::string& name, int64_t m, int64_t n, int64_t k, DType wdt) {
  try {
    Weight w = device_weight(n, k, wdt, 21);
    Tensor x = device_tensor({m, k}, DType::kBF16, 22), y = Tensor::empty({m, n}, DType::kBF16, Device::kCuda);
    const double ms = time_graph(s, reps_for(m), [&] { ops::linear(x, w, y); });
    const double bytes = static_cast<double>(w.weight.nbytes()) + 2.0 * m * k + 2.0 * m * n;
    print_row({name, mnk(m, n, k), wdt == DType::kBF16 ? "bf16" : "fp8", ms * 1e3, 2.0 * m * n * k, bytes, wdt == DType::kBF16}, c);
  } catch (const std::exception& e) {
    print_failure(name, e);
  }
}

void bench_quant(cudaStream_t s, const Ceilings& c, int64_t m, int64_t k) {
  const std::string name = "fp8 quantize (bf16 x)";
  try {
    Tensor x = device_tensor({m, k}, DType::kBF16, 23);
    Tensor q = Tensor::empty({m, k}, DType::kF8E4M3, Device::kCuda), sc = Tensor::empty({k / 128, m}, DType::kF32, Device::kCuda);
    const double ms = time_graph(s, reps_for(m), [&] { ops::quantize_fp8_per_token_group(x, q, sc); });
    print_row({name, std::to_string(m) + " x " + std::to_string(k), "-", ms * 1e3, 0.0, 3.0 * m * k + 4.0 * m * k / 128, false}, c);
  } catch (const std::exception& e) {
    print_failure(name, e);
  }
}

std::vector<Weight> experts(int64_t g, int64_t n, int64_t k, uint64_t seed) {
  std::vector<Weight> out;
  for (int64_t i = 0; i < g; ++i) out.push_back(device_weight(n, k, DType::kF8E4M3, seed + static_cast<uint64_t>(i)));
  return out;
}

void bench_masked(cudaStream_t s, const Ceilings& c, const std::string& name, int64_t g, int64_t max_m, int32_t count,
                  int64_t n, int64_t k) {
  try {
    const std::vector<Weight> w = experts(g, n, k, 31);
    Tensor x = device_tensor({g, max_m, k}, DType::kBF16, 32), y = Tensor::empty({g, max_m, n}, DType::kBF16, Device::kCuda);
    Tensor cnt = Tensor::empty({g}, DType::kI32);
    for (int64_t i = 0; i < g; ++i) cnt.data<int32_t>()[i] = count;
    Tensor cd = cnt.to(Device::kCuda);
    const double ms = time_graph(s, reps_for(max_m), [&] { ops::grouped_linear_masked(x, cd, w, y); });
    const double rows = static_cast<double>(g) * count;
    const double bytes = g * static_cast<double>(w[0].weight.nbytes()) + 2.0 * rows * k + 2.0 * g * max_m * n;
    print_row({name, std::to_string(g) + "x[" + std::to_string(count) + "/" + std::to_string(max_m) + "] x " +
                         std::to_string(n) + " x " + std::to_string(k),
               "fp8", ms * 1e3, 2.0 * rows * n * k, bytes, false},
              c);
  } catch (const std::exception& e) {
    print_failure(name, e);
  }
}

void bench_contiguous(cudaStream_t s, const Ceilings& c, const std::string& name, int64_t g, int64_t rows_each, int64_t n,
                      int64_t k) {
  try {
    const std::vector<Weight> w = experts(g, n, k, 41);
    const int64_t m = g * rows_each;
    Tensor x = device_tensor({m, k}, DType::kBF16, 42), y = Tensor::empty({m, n}, DType::kBF16, Device::kCuda);
    std::vector<int64_t> offsets;
    for (int64_t i = 0; i <= g; ++i) offsets.push_back(i * rows_each);
    const double ms = time_graph(s, 1, [&] { ops::grouped_linear_contiguous(x, offsets, w, y); });
    const double bytes = g * static_cast<double>(w[0].weight.nbytes()) + 2.0 * m * (k + n);
    print_row({name, std::to_string(g) + "x" + std::to_string(rows_each) + " x " + std::to_string(n) + " x " + std::to_string(k),
               "fp8", ms * 1e3, 2.0 * m * n * k, bytes, false},
              c);
  } catch (const std::exception& e) {
    print_failure(name, e);
  }
}

int run() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  std::printf("device: %s, %d SMs, %.1f GiB, L2 %d MiB, CUDA runtime %d, driver %d, cuBLASLt %zu\n", p.name,
              p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.l2CacheSize >> 20, rt, drv, cublasLtGetVersion());

  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  ops::cuda::set_current_stream(s);
  cublasLtHandle_t h = nullptr;
  check_lt(cublasLtCreate(&h), "cublasLtCreate");

  Ceilings c;
  std::printf("\n== ceilings (median of %d; cuBLASLt: heuristic's first algorithm / best of its top 8)\n", kSamples);
  try {
    c.copy_tbs = copy_tbs(s);
    std::printf("device-to-device copy, 1 GiB (read + write)        %8.2f TB/s\n", c.copy_tbs);
  } catch (const std::exception& e) {
    print_failure("copy", e);
  }
  struct Shape3 {
    int64_t m, n, k;
  };
  const std::vector<std::pair<LtKind, Shape3>> ceil_runs = {
      {LtKind::kBf16, {8192, 8192, 8192}},        {LtKind::kFp8Tensor, {8192, 8192, 8192}},
      {LtKind::kFp8Block, {8192, 8192, 8192}},    {LtKind::kFp8Block, {16384, 4096, 7168}},
      {LtKind::kFp8Block, {16384, 7168, 2048}},   {LtKind::kFp8Block, {16384, 24576, 1536}},
      {LtKind::kFp8Block, {256, 7168, 16384}},    {LtKind::kFp8Block, {512, 4096, 7168}}};
  for (const auto& [kind, sh] : ceil_runs) {
    try {
      const LtResult r = lt_gemm(h, s, kind, sh.m, sh.n, sh.k);
      const double f = 2.0 * sh.m * sh.n * sh.k / 1e12;
      std::printf("cuBLASLt %-32s %-22s %7.1f / %7.1f TFLOP/s (%d algos)\n", lt_name(kind), mnk(sh.m, sh.n, sh.k).c_str(),
                  f / (r.heuristic_ms * 1e-3), f / (r.best_ms * 1e-3), r.algos);
      const double best = f / (r.best_ms * 1e-3);
      if (kind == LtKind::kBf16) c.bf16_tflops = std::max(c.bf16_tflops, best);
      if (kind == LtKind::kFp8Block && sh.m >= 8192) c.fp8_block_tflops = std::max(c.fp8_block_tflops, best);
    } catch (const std::exception& e) {
      print_failure(std::string("cuBLASLt ") + lt_name(kind), e);
    }
    std::fflush(stdout);
  }
  std::printf("ceilings used below: copy %.2f TB/s, BF16 %.0f TFLOP/s, FP8 block-scaled %.0f TFLOP/s (best large shape)\n",
              c.copy_tbs, c.bf16_tflops, c.fp8_block_tflops);
  cublasLtDestroy(h);

  std::printf("\n== pdserve GEMMs, DeepSeek-V3 per-rank shapes (bf16 x and y; fp8 rows include quantizing x)\n");
  std::printf("roofline = max(FLOPs / GEMM ceiling, (weights + x + y bytes) / copy TB/s)\n");
  print_row_header();
  struct Dense {
    const char* name;
    int64_t n, k;
  };
  const std::vector<Dense> dense = {{"q_a_proj", 1536, 7168}, {"q_b_proj", 24576, 1536}, {"kv_a_proj_with_mqa", 576, 7168},
                                    {"o_proj", 7168, 16384}};
  for (int64_t m : {int64_t{256}, int64_t{16384}}) {
    const std::string phase = m == 256 ? "decode " : "prefill ";
    for (const Dense& d : dense) bench_linear(s, c, phase + d.name, m, d.n, d.k, DType::kF8E4M3);
    for (const Dense& d : dense) bench_linear(s, c, phase + d.name, m, d.n, d.k, DType::kBF16);
    bench_quant(s, c, m, 7168);
  }
  bench_masked(s, c, "decode experts gate_up (masked)", 4, 512, 512, 4096, 7168);
  bench_masked(s, c, "decode experts down (masked)", 4, 512, 512, 7168, 2048);
  bench_masked(s, c, "decode gate_up, max_m 4x count", 4, 2048, 512, 4096, 7168);
  bench_linear(s, c, "decode shared expert gate_up", 256, 4096, 7168, DType::kF8E4M3);
  bench_linear(s, c, "decode shared expert down", 256, 7168, 2048, DType::kF8E4M3);
  bench_contiguous(s, c, "prefill experts gate_up (contig)", 9, 14563, 4096, 7168);
  bench_contiguous(s, c, "prefill experts down (contig)", 9, 14563, 7168, 2048);

  ops::cuda::set_current_stream(cudaStreamPerThread);
  check(cudaStreamDestroy(s), "cudaStreamDestroy");
  return 0;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gemm_bench: %s\n", e.what());
    return 1;
  }
}
