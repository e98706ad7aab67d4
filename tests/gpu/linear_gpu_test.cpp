// CUDA linear (cuBLASLt bf16 and block-scaled FP8) and the grouped expert GEMMs against the CPU
// reference, on fresh random inputs with outputs poisoned (NaN) before every run.
//
// Error bounds, all as max |gpu - ref| / max |ref|:
// - bf16 weights: 1e-2. x is rounded to bf16 (2^-9 relative) when given in f32, and a bf16 y is
//   rounded once more; accumulation is f32 on the tensor cores.
// - fp8 weights, against the CPU W8A8 emulation (x quantized by the CPU reference quantizer and
//   dequantized, then an f32 GEMM with the same fp8 weight): 5e-3. Only the summation order, the
//   tensor cores' accumulation inside each 128-wide K block and the bf16 rounding of y differ, so
//   a scale read from the wrong row or block (they differ up to 1000x here) fails at once.
// - fp8 weights, W8A8 against the CPU's W8A16 (DeepSeek's gemm_impl="bf16"): 6e-2. e4m3 keeps 3
//   mantissa bits, so every activation carries ~2.6% rms rounding error; over millions of outputs
//   the largest error reaches ~3% of max |ref|.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/cuda_common.h"
#include "ops/grouped_gemm.h"
#include "ops/linear.h"
#include "ops/quant.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

constexpr double kBf16Bound = 1e-2;
constexpr double kFp8EmulatedBound = 5e-3;
constexpr double kFp8VsW8A16Bound = 6e-2;

// x [m, k]: rows and 128-groups of different magnitudes (2^-5 .. 2^5 times 1..3).
Tensor varied_x(int64_t m, int64_t k, uint64_t seed) {
  Tensor x = Tensor::empty({m, k}, DType::kF32);
  Lcg rng{seed};
  float* p = x.data<float>();
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < k; ++c)
      p[r * k + c] = rng.next() * std::ldexp(1.0f, static_cast<int>(r % 11) - 5) * static_cast<float>(1 + (c / 128) % 3);
  return x;
}

Weight to_bf16_weight(const Tensor& w) {
  Weight out{Tensor::empty(w.shape(), DType::kBF16), Tensor()};
  convert_from_f32(DType::kBF16, w.data<float>(), out.weight.raw_data(), static_cast<size_t>(w.numel()));
  return out;
}

Tensor as_dtype(const Tensor& f32, DType dt) {
  if (dt == DType::kF32) return f32.clone();
  Tensor out = Tensor::empty(f32.shape(), dt);
  convert_from_f32(dt, f32.data<float>(), out.raw_data(), static_cast<size_t>(f32.numel()));
  return out;
}

// The activations the GPU's W8A8 path multiplies: CPU-quantized, then dequantized to f32.
Tensor w8a8_activations(const Tensor& x) {
  const int64_t m = x.size(0), k = x.size(1), groups = (k + 127) / 128;
  Tensor q = Tensor::empty({m, k}, DType::kF8E4M3), s = Tensor::empty({groups, m}, DType::kF32);
  ops::quantize_fp8_per_token_group(x, q, s);
  Tensor out = Tensor::empty({m, k}, DType::kF32);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < k; ++c)
      out.data<float>()[r * k + c] = fp8e4m3_to_f32(q.data<uint8_t>()[r * k + c]) * s.data<float>()[(c / 128) * m + r];
  return out;
}

Tensor cpu_linear(const Tensor& x_f32, const Weight& w) {
  Tensor y = Tensor::empty({x_f32.size(0), w.rows()}, DType::kF32);
  ops::linear(x_f32, w, y);
  return y;
}

Tensor gpu_linear(const Tensor& x_host, DType y_dtype, const Weight& w_dev) {
  Tensor xd = x_host.to(Device::kCuda);
  Tensor yd = poisoned_device({x_host.size(0), w_dev.rows()}, y_dtype);
  ops::linear(xd, w_dev, yd);
  return yd.to(Device::kCpu).to_f32();
}

struct Case {
  int64_t m;
  DType x_dtype, y_dtype;
};
// Every m of interest, each with a different pairing of activation / output dtypes.
const std::vector<Case> kCases = {{1, DType::kF32, DType::kF32},
                                  {7, DType::kBF16, DType::kBF16},
                                  {128, DType::kF32, DType::kBF16},
                                  {512, DType::kBF16, DType::kF32}};

std::string label(const Case& c, int64_t n, int64_t k) {
  return "m=" + std::to_string(c.m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) + " x " +
         dtype_name(c.x_dtype) + " y " + dtype_name(c.y_dtype);
}

// DeepSeek-V3's projections: q_a, q_b, kv_a, o_proj-like (7168 x 2048 = expert down), expert gate_up.
const std::vector<std::pair<int64_t, int64_t>> kV3Shapes = {{1536, 7168}, {24576, 1536}, {576, 7168}, {7168, 2048}, {4096, 7168}};

void check_shape_all_paths(int64_t n, int64_t k, const std::vector<Case>& cases, uint64_t seed) {
  const Tensor master = master_weight(n, k, seed);
  const Weight wb = to_bf16_weight(master), wf = to_fp8_weight(master);
  const Weight wb_dev = wb.to(Device::kCuda), wf_dev = wf.to(Device::kCuda);
  for (const Case& c : cases) {
    const std::string what = label(c, n, k);
    const Tensor x = as_dtype(varied_x(c.m, k, seed + static_cast<uint64_t>(c.m)), c.x_dtype);
    const Tensor x32 = x.to_f32();  // what the CPU reference multiplies (bf16 x: the same rounded values)

    const Tensor ref_b = cpu_linear(x32, wb);
    EXPECT_LT(rel_max_err(gpu_linear(x, c.y_dtype, wb_dev), ref_b), kBf16Bound) << "bf16 W, " << what;

    if (n % 16 != 0) {
      // cuBLASLt's block-scaled FP8 kernels need out-features divisible by 16 (all of DeepSeek-V3's
      // are); the op refuses others up front with a clear error instead of failing inside cuBLASLt.
      EXPECT_THROW(gpu_linear(x, c.y_dtype, wf_dev), std::invalid_argument) << what;
      continue;
    }
    const Tensor got_f = gpu_linear(x, c.y_dtype, wf_dev);
    EXPECT_LT(rel_max_err(got_f, cpu_linear(w8a8_activations(x), wf)), kFp8EmulatedBound) << "fp8 W vs W8A8 emulation, " << what;
    EXPECT_LT(rel_max_err(got_f, cpu_linear(x32, wf)), kFp8VsW8A16Bound) << "fp8 W vs W8A16, " << what;
  }
}

TEST(LinearGpu, DeepSeekV3Shapes) {
  uint64_t seed = 100;
  for (auto [n, k] : kV3Shapes) check_shape_all_paths(n, k, kCases, seed += 17);
}

// Shapes off the fast path: m not a multiple of 16 around the tail split, n not a multiple of 16
// (staged output), K/128 not a multiple of 4 (padded weight scales: k = 256, 384), a partial last
// 128-row weight block.
// linear_add: y += x W^T on the device equals the CPU's product plus y, through the GEMMs that
// write y directly (cuBLASLt beta = 1) and the staged 16-row tail (an adding copy): m 1, 7, 128,
// 133, fp8 and bf16 weights, x f32 and bf16.
TEST(LinearGpu, LinearAddAccumulatesIntoY) {
  const int64_t n = 576, k = 1536;
  const Tensor master = master_weight(n, k, 91);
  const Weight wb = to_bf16_weight(master), wf = to_fp8_weight(master);
  for (const Weight* w : {&wb, &wf}) {
    const Weight wd = w->to(Device::kCuda);
    for (int64_t m : {int64_t{1}, int64_t{7}, int64_t{128}, int64_t{133}}) {
      for (DType xt : {DType::kF32, DType::kBF16}) {
        const std::string what = std::string(dtype_name(w->weight.dtype())) + " W, m=" + std::to_string(m) + " x " + dtype_name(xt);
        const Tensor x = as_dtype(varied_x(m, k, 92 + static_cast<uint64_t>(m)), xt);
        const Tensor y0 = random_host({m, n}, 93, 4.0f);
        // Reference: the GPU's own linear (checked against the CPU above) plus y0, in f32.
        const Tensor prod = gpu_linear(x, DType::kF32, wd);
        Tensor want = y0.clone();
        for (int64_t i = 0; i < m * n; ++i) want.data<float>()[i] += prod.data<float>()[i];
        Tensor yd = y0.to(Device::kCuda);
        ops::linear_add(x.to(Device::kCuda), wd, yd);
        EXPECT_LT(rel_max_err(yd.to(Device::kCpu), want), 1e-6) << what;
      }
    }
    Tensor ybf = poisoned_device({4, n}, DType::kBF16);
    EXPECT_THROW(ops::linear_add(as_dtype(varied_x(4, k, 1), DType::kF32).to(Device::kCuda), wd, ybf), std::invalid_argument);
  }
}

TEST(LinearGpu, AwkwardShapes) {
  const std::vector<Case> cases = {{15, DType::kF32, DType::kF32}, {16, DType::kBF16, DType::kBF16},
                                   {17, DType::kBF16, DType::kF32}, {45, DType::kF32, DType::kBF16}};
  check_shape_all_paths(100, 256, cases, 7);  // odd n: bf16 path; fp8 refused
  check_shape_all_paths(112, 256, cases, 10);  // K/128 = 2: padded weight scales
  check_shape_all_paths(208, 384, cases, 8);   // K/128 = 3, partial last 128-row block
  check_shape_all_paths(130, 640, cases, 9);
}

TEST(LinearGpu, F32WeightsAndEmptyShapes) {
  const Tensor w = master_weight(70, 50, 3);
  const Weight wd = Weight{w, Tensor()}.to(Device::kCuda);
  const Tensor x = varied_x(9, 50, 4);
  EXPECT_LT(rel_max_err(gpu_linear(x, DType::kF32, wd), cpu_linear(x, Weight{w, Tensor()})), 1e-5);

  // m = 0 does nothing; k = 0 writes zeros.
  const Weight wb = to_bf16_weight(master_weight(64, 128, 5)).to(Device::kCuda);
  Tensor x0 = Tensor::empty({0, 128}, DType::kBF16, Device::kCuda), y0 = Tensor::empty({0, 64}, DType::kBF16, Device::kCuda);
  ops::linear(x0, wb, y0);
  const Weight wk0 = to_bf16_weight(Tensor::empty({8, 0}, DType::kF32)).to(Device::kCuda);
  Tensor xk = Tensor::empty({3, 0}, DType::kF32, Device::kCuda), yk = poisoned_device({3, 8});
  ops::linear(xk, wk0, yk);
  const Tensor yk_host = yk.to(Device::kCpu);
  for (int64_t i = 0; i < yk_host.numel(); ++i) EXPECT_EQ(yk_host.data<float>()[i], 0.0f);

  // fp8 with K % 128 != 0 is refused with a clear error.
  const Weight bad = to_fp8_weight(master_weight(32, 100, 6)).to(Device::kCuda);
  Tensor xb = Tensor::empty({2, 100}, DType::kF32, Device::kCuda), yb = Tensor::empty({2, 32}, DType::kF32, Device::kCuda);
  EXPECT_THROW(ops::linear(xb, bad, yb), std::invalid_argument);
}

// ---- grouped GEMMs ----

struct Experts {
  std::vector<Weight> host, dev;
};

Experts make_experts(int64_t count, int64_t n, int64_t k, bool fp8, uint64_t seed) {
  Experts e;
  for (int64_t g = 0; g < count; ++g) {
    const Tensor m = master_weight(n, k, seed + static_cast<uint64_t>(g) * 101);
    e.host.push_back(fp8 ? to_fp8_weight(m) : to_bf16_weight(m));
    e.dev.push_back(e.host.back().to(Device::kCuda));
  }
  return e;
}

void check_contiguous(const Experts& e, const std::vector<int64_t>& offsets, DType x_dtype, DType y_dtype, bool fp8) {
  const int64_t m = offsets.back(), k = e.host[0].cols(), n = e.host[0].rows();
  const std::string what = std::string(fp8 ? "fp8" : "bf16") + " experts n=" + std::to_string(n) + " k=" + std::to_string(k) +
                           " M=" + std::to_string(m) + " x " + dtype_name(x_dtype) + " y " + dtype_name(y_dtype);
  const Tensor x = as_dtype(varied_x(m, k, 77 + static_cast<uint64_t>(m)), x_dtype);
  const Tensor x32 = x.to_f32();
  Tensor ref = Tensor::empty({m, n}, DType::kF32);
  ops::grouped_linear_contiguous(fp8 ? w8a8_activations(x) : x32, offsets, e.host, ref);

  Tensor xd = x.to(Device::kCuda), yd = poisoned_device({m, n}, y_dtype);
  ops::grouped_linear_contiguous(xd, offsets, e.dev, yd);
  const Tensor got = yd.to(Device::kCpu).to_f32();
  EXPECT_LT(rel_max_err(got, ref), fp8 ? kFp8EmulatedBound : kBf16Bound) << what;

  // Equal to one GPU linear per expert (same quantizer, same cuBLASLt plan per row count).
  for (size_t g = 0; g + 1 < offsets.size(); ++g) {
    const int64_t r0 = offsets[g], r1 = offsets[g + 1];
    if (r0 == r1) continue;
    Tensor xs = x.slice(0, r0, r1).clone();
    const Tensor one = gpu_linear(xs, y_dtype, e.dev[g]);
    const Tensor part = got.slice(0, r0, r1).clone();
    EXPECT_LT(rel_max_err(part, one), 1e-6) << what << " expert " << g;
  }
}

TEST(GroupedGemmGpu, ContiguousMatchesLoopOfLinear) {
  for (bool fp8 : {true, false}) {
    const Experts small = make_experts(4, 256, 512, fp8, 11);
    check_contiguous(small, {0, 37, 37, 200, 517}, DType::kF32, DType::kF32, fp8);
    check_contiguous(small, {0, 0, 16, 17, 64}, DType::kBF16, DType::kBF16, fp8);
    const Experts v3 = make_experts(3, 4096, 7168, fp8, 12);  // V3 gate_up
    check_contiguous(v3, {0, 100, 100, 300}, DType::kBF16, DType::kBF16, fp8);
  }
}

void check_masked(const Experts& e, int64_t max_m, const std::vector<int32_t>& counts, DType x_dtype, DType y_dtype,
                  bool fp8) {
  const int64_t groups = static_cast<int64_t>(e.host.size()), k = e.host[0].cols(), n = e.host[0].rows();
  const std::string what = std::string(fp8 ? "fp8" : "bf16") + " experts n=" + std::to_string(n) + " k=" + std::to_string(k) +
                           " max_m=" + std::to_string(max_m) + " x " + dtype_name(x_dtype) + " y " + dtype_name(y_dtype);
  // Rows past each count hold NaN: the op must not read them.
  Tensor x32 = varied_x(groups * max_m, k, 99 + static_cast<uint64_t>(max_m)).reshape({groups, max_m, k});
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r = std::clamp<int64_t>(counts[g], 0, max_m); r < max_m; ++r)
      for (int64_t c = 0; c < k; ++c) x32.data<float>()[(g * max_m + r) * k + c] = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = as_dtype(x32, x_dtype);
  Tensor cnt = Tensor::empty({groups}, DType::kI32);
  for (int64_t g = 0; g < groups; ++g) cnt.data<int32_t>()[g] = counts[g];

  Tensor xin = x.to_f32();
  if (fp8) {  // the W8A8 emulation, group by group over the valid rows
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c = std::clamp<int64_t>(counts[g], 0, max_m);
      if (c == 0) continue;
      const Tensor deq = w8a8_activations(x.select(g).slice(0, 0, c).clone());
      std::memcpy(xin.data<float>() + g * max_m * k, deq.data<float>(), deq.nbytes());
    }
  }
  Tensor ref = Tensor::empty({groups, max_m, n}, DType::kF32);
  ops::grouped_linear_masked(xin, cnt, e.host, ref);

  Tensor xd = x.to(Device::kCuda), cd = cnt.to(Device::kCuda), yd = poisoned_device({groups, max_m, n}, y_dtype);
  ops::grouped_linear_masked(xd, cd, e.dev, yd);
  const Tensor got = yd.to(Device::kCpu).to_f32();
  EXPECT_LT(rel_max_err(got, ref), fp8 ? kFp8EmulatedBound : kBf16Bound) << what;
  for (int64_t g = 0; g < groups; ++g) {
    int64_t nonzero = 0;
    for (int64_t r = std::clamp<int64_t>(counts[g], 0, max_m); r < max_m; ++r)
      for (int64_t c = 0; c < n; ++c) nonzero += got.data<float>()[(g * max_m + r) * n + c] != 0.0f;
    EXPECT_EQ(nonzero, 0) << what << ": group " << g << " has non-zero values past its count";
  }
}

TEST(GroupedGemmGpu, MaskedMatchesCpuAndZeroesPastCounts) {
  for (bool fp8 : {true, false}) {
    const Experts small = make_experts(6, 192, 256, fp8, 21);
    check_masked(small, 40, {0, 5, 40, 17, 99, -3}, DType::kF32, DType::kF32, fp8);
    check_masked(small, 64, {64, 1, 0, 33, 16, 63}, DType::kBF16, DType::kBF16, fp8);
    const Experts v3 = make_experts(2, 4096, 7168, fp8, 22);
    check_masked(v3, 128, {128, 33}, DType::kBF16, DType::kBF16, fp8);
  }
}

// The decode path inside a CUDA graph: capture once, then replay with new counts and inputs; the
// replay must equal an eager call on the same inputs exactly.
TEST(GroupedGemmGpu, MaskedAndLinearReplayFromCudaGraph) {
  cudaStream_t stream = nullptr;
  ops::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  ops::cuda::set_current_stream(stream);
  const Experts e = make_experts(4, 256, 512, true, 31);
  const Weight dense = to_fp8_weight(master_weight(384, 512, 32)).to(Device::kCuda);
  const int64_t max_m = 45, groups = 4, k = 512, n = 256;  // 45: main GEMM + staged tail in the graph
  Tensor xd = as_dtype(varied_x(groups * max_m, k, 5), DType::kBF16).reshape({groups, max_m, k}).to(Device::kCuda);
  Tensor cnt = Tensor::empty({groups}, DType::kI32);
  for (int64_t g = 0; g < groups; ++g) cnt.data<int32_t>()[g] = static_cast<int32_t>(10 * g + 3);
  Tensor cd = cnt.to(Device::kCuda);
  Tensor yd = poisoned_device({groups, max_m, n}, DType::kBF16);
  Tensor x2 = xd.reshape({groups * max_m, k}), y2 = poisoned_device({groups * max_m, 384}, DType::kBF16);

  // The host-to-device copies above ran on the legacy stream; this stream does not wait for it.
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  auto forward = [&] {
    ops::grouped_linear_masked(xd, cd, e.dev, yd);
    ops::linear(x2, dense, y2);
  };
  forward();  // first call per shape: plans and scratch
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ops::cuda::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  forward();
  ops::cuda::check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  ops::cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");

  // New inputs and counts, written in place; replay.
  Tensor x_new = as_dtype(varied_x(groups * max_m, k, 6), DType::kBF16);
  ops::cuda::check(cudaMemcpy(xd.raw_data(), x_new.raw_data(), x_new.nbytes(), cudaMemcpyHostToDevice), "copy x");
  for (int64_t g = 0; g < groups; ++g) cnt.data<int32_t>()[g] = static_cast<int32_t>(max_m - 7 * g);
  ops::cuda::check(cudaMemcpy(cd.raw_data(), cnt.raw_data(), cnt.nbytes(), cudaMemcpyHostToDevice), "copy counts");
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  ops::cuda::check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  const Tensor y_graph = yd.to(Device::kCpu).to_f32(), y2_graph = y2.to(Device::kCpu).to_f32();

  forward();
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  EXPECT_EQ(rel_max_err(y_graph, yd.to(Device::kCpu).to_f32()), 0.0);
  EXPECT_EQ(rel_max_err(y2_graph, y2.to(Device::kCpu).to_f32()), 0.0);

  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  ops::cuda::set_current_stream(cudaStreamPerThread);
  cudaStreamDestroy(stream);
}

// grouped_gemv_masked: rows < count against the CPU op (no activation quantization: the GEMV reads
// x in f32, or fp8 rows with their scales exactly as given, so the only differences are FMA order: 1e-5 of max|ref| for f32 output, one bf16
// rounding (4e-3) for bf16 output); rows past a count and experts with no rows stay untouched.
void check_gemv(const Experts& e, int64_t max_m, const std::vector<int32_t>& counts, DType x_dtype, DType y_dtype) {
  const int64_t groups = static_cast<int64_t>(e.host.size()), k = e.host[0].cols(), n = e.host[0].rows();
  const std::string what = std::string(dtype_name(e.host[0].weight.dtype())) + " experts n=" + std::to_string(n) +
                           " k=" + std::to_string(k) + " max_m=" + std::to_string(max_m) + " x " + dtype_name(x_dtype) +
                           " y " + dtype_name(y_dtype);
  Tensor x32 = varied_x(groups * max_m, k, 7 + static_cast<uint64_t>(max_m)).reshape({groups, max_m, k});
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r = std::clamp<int64_t>(counts[g], 0, max_m); r < max_m; ++r)
      for (int64_t c = 0; c < k; ++c) x32.data<float>()[(g * max_m + r) * k + c] = std::numeric_limits<float>::quiet_NaN();
  Tensor cnt = Tensor::empty({groups}, DType::kI32);
  for (int64_t g = 0; g < groups; ++g) cnt.data<int32_t>()[g] = counts[g];
  Tensor ref = Tensor::empty({groups, max_m, n}, DType::kF32);
  Tensor x, scales;
  if (x_dtype == DType::kF8E4M3) {
    // FP8 rows as the low-latency dispatch delivers them: per group, quantize_fp8_per_token_group's
    // q [max_m, K] and scales [K/128, max_m] (NaN rows past a count give NaN scales: never read).
    const int64_t kb = (k + 127) / 128;
    x = Tensor::empty({groups, max_m, k}, DType::kF8E4M3);
    scales = Tensor::empty({groups, kb, max_m}, DType::kF32);
    for (int64_t g = 0; g < groups; ++g) {
      Tensor q = x.select(g), s = scales.select(g);
      ops::quantize_fp8_per_token_group(x32.select(g), q, s);
    }
    ops::grouped_gemv_masked(x, cnt, e.host, Tensor(), ref, scales);
  } else {
    x = as_dtype(x32, x_dtype);
    ops::grouped_gemv_masked(x.to_f32(), cnt, e.host, Tensor(), ref);
  }

  const Tensor table = ops::expert_pointer_table(e.dev);
  Tensor xd = x.to(Device::kCuda), cd = cnt.to(Device::kCuda), yd = poisoned_device({groups, max_m, n}, y_dtype);
  ops::grouped_gemv_masked(xd, cd, e.dev, table, yd, scales.defined() ? scales.to(Device::kCuda) : Tensor());
  const Tensor got = yd.to(Device::kCpu).to_f32();
  double num = 0, den = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = std::clamp<int64_t>(counts[g], 0, max_m);
    for (int64_t r = 0; r < max_m; ++r)
      for (int64_t col = 0; col < n; ++col) {
        const float v = got.data<float>()[(g * max_m + r) * n + col];
        if (r >= c) {
          ASSERT_TRUE(std::isnan(v)) << what << ": group " << g << " row " << r << " past its count was written";
          continue;
        }
        const float w = ref.data<float>()[(g * max_m + r) * n + col];
        num = std::max(num, static_cast<double>(std::abs(v - w)));
        den = std::max(den, static_cast<double>(std::abs(w)));
      }
  }
  EXPECT_LT(num / std::max(den, 1e-30), y_dtype == DType::kBF16 ? 4e-3 : 1e-5) << what;
}

TEST(GroupedGemmGpu, GemvMaskedMatchesCpuAndSkipsEmptyRows) {
  for (bool fp8 : {true, false}) {
    const Experts small = make_experts(6, 192, 256, fp8, 31);
    check_gemv(small, 40, {0, 5, 40, 17, 99, -3}, DType::kF32, DType::kF32);
    check_gemv(small, 3, {1, 0, 3, 2, 0, 1}, DType::kBF16, DType::kBF16);
    const Experts v3 = make_experts(4, 2048, 7168, fp8, 32);  // V3 expert gate / up
    check_gemv(v3, 16, {1, 0, 9, 16}, DType::kF32, DType::kBF16);
    // FP8 rows with their scales (the low-latency dispatch's), V3's down projection shape too.
    check_gemv(small, 40, {0, 5, 40, 17, 99, -3}, DType::kF8E4M3, DType::kF32);
    check_gemv(v3, 16, {1, 0, 9, 16}, DType::kF8E4M3, DType::kBF16);
    const Experts down = make_experts(3, 7168, 2048, fp8, 33);
    check_gemv(down, 8, {8, 2, 0}, DType::kF8E4M3, DType::kBF16);
  }
}

}  // namespace
}  // namespace pdserve::gpu_test
