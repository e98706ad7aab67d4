// ops::cuda::grouped_gemm_masked_tc (the masked-layout expert GEMM on tensor cores) against
// ops::grouped_gemv_masked on the same device inputs (the GEMV itself is checked against the CPU op
// in linear_gpu_test.cpp) and, on small shapes, against the CPU op directly. Fresh random inputs,
// outputs poisoned (NaN) before every run; rows of x past each count hold NaN (their fp8 scales
// too), so reading one poisons a result; rows of y past each count must stay NaN.
//
// Error bounds (over the rows < count; ref = the GEMV's, or the CPU's, f32 output):
// - f32 y: ||y - ref||_F / ||ref||_F <= 1e-4 and max |y - ref| / max |ref| <= 1e-4. Both sides read
//   the same fp8 / bf16 values and apply the same scales, and every product is exact on both (e4m3
//   and bf16 values are exact as f16 / bf16 MMA operands, their products exact in f32); only the
//   f32 summation order differs (GEMV: 16-element pieces and a warp reduction; here MMA k16 steps
//   inside each 128-wide block, then one scaled add per block): ~1e-6 expected, so a wrong scale
//   (they differ by up to 9x between blocks and 2^10 between rows here), a lost 32-wide k step
//   (~7% of a 7168-long row) or a swapped row fails by orders of magnitude.
// - bf16 y: 4e-3 for both norms: one bf16 rounding of every output (<= 2^-9 relative) on top.
// Shapes: DeepSeek-V3's expert gate|up (N = 4096, K = 7168) and down (N = 7168, K = 2048) with
// E in {1, 4, 32} and T_cap in {64, 512, 2048}; counts 0, 1, 63, 64, 65, T_cap, uneven, negative
// and above T_cap (clamped); fp8 x with scales and bf16 x; f32 and bf16 y. Plus a CUDA graph
// captured once and replayed after the counts and x changed on the device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/grouped_gemm.h"
#include "ops/quant.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

constexpr double kF32Bound = 1e-4;
constexpr double kBf16Bound = 4e-3;

// n random e4m3 bytes, any value but NaN (S.1111.111), 8 per step (the weights reach 940 MB).
void random_fp8(uint8_t* p, size_t n, uint64_t seed) {
  Lcg rng{seed};
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng.next64();
    v ^= v >> 29;
    for (size_t j = 0; j < 8 && i + j < n; ++j, v >>= 8) {
      const uint8_t b = static_cast<uint8_t>(v);
      p[i + j] = (b & 0x7F) == 0x7F ? 0 : b;
    }
  }
}

// `groups` device experts fp8 [n, k] of random bytes, a different scale in every 128x128 block
// (0.5 .. 4.5 times 2^-8, shifted per expert).
std::vector<Weight> device_experts(int64_t groups, int64_t n, int64_t k, uint64_t seed) {
  std::vector<Weight> out;
  for (int64_t g = 0; g < groups; ++g) {
    Weight w{Tensor::empty({n, k}, DType::kF8E4M3), Tensor::empty({n / 128, k / 128}, DType::kF32)};
    random_fp8(w.weight.data<uint8_t>(), static_cast<size_t>(n * k), seed + static_cast<uint64_t>(g) * 7919);
    for (int64_t bi = 0; bi < n / 128; ++bi)
      for (int64_t bj = 0; bj < k / 128; ++bj)
        w.scale_inv.data<float>()[bi * (k / 128) + bj] = std::ldexp(0.5f + static_cast<float>((bi * 7 + bj * 3 + g) % 5), -8);
    out.push_back(w.to(Device::kCuda));
  }
  return out;
}

// Host inputs of the masked layout: x [G, T, K] (fp8 with scales [G, K/128, T], or bf16), rows
// past each count (clamped to [0, T]) NaN, their scales NaN too.
struct Inputs {
  Tensor x, scales, counts;
};

int64_t clamped(int32_t c, int64_t t) { return std::clamp<int64_t>(c, 0, t); }

Inputs make_inputs(int64_t groups, int64_t t, int64_t k, const std::vector<int32_t>& counts, DType x_dtype, uint64_t seed) {
  Inputs in;
  in.counts = Tensor::empty({groups}, DType::kI32);
  for (int64_t g = 0; g < groups; ++g) in.counts.data<int32_t>()[g] = counts[static_cast<size_t>(g)];
  const int64_t kb = k / 128;
  if (x_dtype == DType::kF8E4M3) {
    in.x = Tensor::empty({groups, t, k}, DType::kF8E4M3);
    in.scales = Tensor::empty({groups, kb, t}, DType::kF32);
    uint8_t* q = in.x.data<uint8_t>();
    float* s = in.scales.data<float>();
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c = clamped(counts[static_cast<size_t>(g)], t);
      random_fp8(q + g * t * k, static_cast<size_t>(c * k), seed + static_cast<uint64_t>(g));
      std::memset(q + (g * t + c) * k, 0x7F, static_cast<size_t>((t - c) * k));  // NaN
      for (int64_t b = 0; b < kb; ++b)
        for (int64_t r = 0; r < t; ++r)
          s[(g * kb + b) * t + r] = r < c ? std::ldexp(1.0f + static_cast<float>(b % 3), static_cast<int>(r % 11) - 13)
                                          : std::numeric_limits<float>::quiet_NaN();
    }
  } else {
    Tensor x32 = Tensor::empty({groups, t, k}, DType::kF32);
    float* p = x32.data<float>();
    Lcg rng{seed};
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c = clamped(counts[static_cast<size_t>(g)], t);
      for (int64_t r = 0; r < t; ++r)
        for (int64_t col = 0; col < k; ++col)
          p[(g * t + r) * k + col] = r < c ? rng.next() * std::ldexp(1.0f, static_cast<int>(r % 11) - 5)
                                           : std::numeric_limits<float>::quiet_NaN();
    }
    in.x = Tensor::empty({groups, t, k}, x_dtype);
    convert_from_f32(x_dtype, p, in.x.raw_data(), static_cast<size_t>(x32.numel()));
  }
  return in;
}

// got (host, y's dtype) against ref (host f32), both [G, T, N]: both norms over the rows < count,
// and every row past its count still NaN.
void expect_close(const Tensor& got_host, const Tensor& ref_host, const Tensor& counts, double bound,
                  const std::string& what) {
  const int64_t groups = got_host.size(0), t = got_host.size(1), n = got_host.size(2);
  const Tensor got = got_host.to_f32();
  const float* a = got.data<float>();
  const float* b = ref_host.data<float>();
  double num2 = 0, den2 = 0, num_max = 0, den_max = 0;
  int64_t written = 0, nan_valid = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = clamped(counts.data<int32_t>()[g], t);
    for (int64_t r = 0; r < t; ++r) {
      const float* ar = a + (g * t + r) * n;
      const float* br = b + (g * t + r) * n;
      if (r >= c) {
        for (int64_t col = 0; col < n; ++col) written += !std::isnan(ar[col]);
        continue;
      }
      for (int64_t col = 0; col < n; ++col) {
        if (std::isnan(ar[col])) {
          ++nan_valid;
          continue;
        }
        const double d = static_cast<double>(ar[col]) - br[col];
        num2 += d * d;
        den2 += static_cast<double>(br[col]) * br[col];
        num_max = std::max(num_max, std::abs(d));
        den_max = std::max(den_max, static_cast<double>(std::abs(br[col])));
      }
    }
  }
  EXPECT_EQ(written, 0) << what << ": outputs past a count were written";
  EXPECT_EQ(nan_valid, 0) << what << ": outputs below a count are NaN (not written, or a NaN row was read)";
  const double norm = std::sqrt(num2 / std::max(den2, 1e-300)), elem = num_max / std::max(den_max, 1e-300);
  EXPECT_LT(norm, bound) << what << " (normwise)";
  EXPECT_LT(elem, bound) << what << " (max-norm; normwise " << norm << ")";
}

std::string label(int64_t groups, int64_t t, int64_t n, int64_t k, DType x_dtype, DType y_dtype) {
  return "E=" + std::to_string(groups) + " T=" + std::to_string(t) + " N=" + std::to_string(n) + " K=" + std::to_string(k) +
         " x " + dtype_name(x_dtype) + " y " + dtype_name(y_dtype);
}

// One case against the GEMV on the device (f32 output).
void check_vs_gemv(const std::vector<Weight>& experts, int64_t t, const std::vector<int32_t>& counts, DType x_dtype,
                   DType y_dtype, uint64_t seed) {
  const int64_t groups = static_cast<int64_t>(experts.size()), n = experts[0].rows(), k = experts[0].cols();
  const std::string what = label(groups, t, n, k, x_dtype, y_dtype);
  const Inputs in = make_inputs(groups, t, k, counts, x_dtype, seed);
  const Tensor table = ops::expert_pointer_table(experts);
  const Tensor xd = in.x.to(Device::kCuda), cd = in.counts.to(Device::kCuda);
  const Tensor sd = in.scales.defined() ? in.scales.to(Device::kCuda) : Tensor();
  Tensor ref = poisoned_device({groups, t, n}, DType::kF32);
  ops::grouped_gemv_masked(xd, cd, experts, table, ref, sd);
  Tensor y = poisoned_device({groups, t, n}, y_dtype);
  ops::cuda::grouped_gemm_masked_tc(xd, cd, experts, table, y, sd);
  ops::cuda::check(cudaDeviceSynchronize(), what.c_str());
  expect_close(y.to(Device::kCpu), ref.to(Device::kCpu), in.counts, y_dtype == DType::kBF16 ? kBf16Bound : kF32Bound, what);
}

TEST(GroupedGemmMaskedTc, GateUpShapeMatchesGemv) {
  {
    const std::vector<Weight> e1 = device_experts(1, 4096, 7168, 11);
    check_vs_gemv(e1, 64, {64}, DType::kF8E4M3, DType::kF32, 1);
    check_vs_gemv(e1, 64, {63}, DType::kBF16, DType::kBF16, 2);
  }
  {
    const std::vector<Weight> e4 = device_experts(4, 4096, 7168, 12);
    check_vs_gemv(e4, 512, {0, 65, 512, 1}, DType::kF8E4M3, DType::kBF16, 3);
    check_vs_gemv(e4, 512, {64, 0, 200, 511}, DType::kBF16, DType::kF32, 4);
  }
  {
    // EP8-like: 32 local experts, T_cap = 2048, uneven counts (two clamped).
    const std::vector<Weight> e32 = device_experts(32, 4096, 7168, 13);
    const std::vector<int32_t> counts = {0, 1,   63,  64,  65, 2048, 128, 127, 129, 17, 200, -3, 5,  1000,  64, 33,
                                         2, 255, 256, 257, 0,  9,    77,  512, 8,   16, 31,  32, 95, 99999, 97, 1500};
    check_vs_gemv(e32, 2048, counts, DType::kF8E4M3, DType::kBF16, 5);
  }
}

TEST(GroupedGemmMaskedTc, DownShapeMatchesGemv) {
  {
    const std::vector<Weight> e1 = device_experts(1, 7168, 2048, 21);
    check_vs_gemv(e1, 512, {300}, DType::kBF16, DType::kBF16, 6);
  }
  {
    const std::vector<Weight> e4 = device_experts(4, 7168, 2048, 22);
    check_vs_gemv(e4, 64, {63, 64, 0, 1}, DType::kF8E4M3, DType::kF32, 7);
    check_vs_gemv(e4, 64, {1, 63, 64, 17}, DType::kBF16, DType::kBF16, 8);
  }
  {
    const std::vector<Weight> e32 = device_experts(32, 7168, 2048, 23);
    std::vector<int32_t> counts;
    for (int g = 0; g < 32; ++g) counts.push_back(g % 8 == 0 ? 0 : (g * 193) % 2049);  // 0 .. 2048, uneven
    counts[5] = 2048;
    counts[6] = 64;
    counts[7] = 65;
    check_vs_gemv(e32, 2048, counts, DType::kBF16, DType::kBF16, 9);
    check_vs_gemv(e32, 2048, counts, DType::kF8E4M3, DType::kBF16, 10);
  }
}

// Small shapes against the CPU op, with DeepSeek-quantized weights (f32 master weights, scale =
// block amax / 448) and fp8 x from the quantizer the dispatch uses; T = 70 (a partial second row
// tile).
TEST(GroupedGemmMaskedTc, SmallShapesMatchCpu) {
  const int64_t groups = 3, t = 70, n = 256, k = 384;
  std::vector<Weight> host, dev;
  for (int64_t g = 0; g < groups; ++g) {
    Weight w = to_fp8_weight(master_weight(n, k, 100 + static_cast<uint64_t>(g)));
    host.push_back(w);
    dev.push_back(w.to(Device::kCuda));
  }
  const Tensor table = ops::expert_pointer_table(dev);
  const std::vector<int32_t> counts = {0, 70, 33};
  for (DType x_dtype : {DType::kF8E4M3, DType::kBF16})
    for (DType y_dtype : {DType::kF32, DType::kBF16}) {
      const std::string what = "CPU " + label(groups, t, n, k, x_dtype, y_dtype);
      Inputs in = make_inputs(groups, t, k, counts, DType::kBF16, x_dtype == DType::kF8E4M3 ? 31 : 32);
      if (x_dtype == DType::kF8E4M3) {
        // Quantized per 128-column group (NaN rows past the counts give NaN scales: never read).
        const Tensor x32 = in.x.to_f32();
        Tensor q = Tensor::empty({groups, t, k}, DType::kF8E4M3), s = Tensor::empty({groups, k / 128, t}, DType::kF32);
        for (int64_t g = 0; g < groups; ++g) {
          Tensor qg = q.select(g), sg = s.select(g);
          ops::quantize_fp8_per_token_group(x32.select(g), qg, sg);
        }
        in.x = q;
        in.scales = s;
      }
      Tensor ref = Tensor::empty({groups, t, n}, DType::kF32);
      if (in.scales.defined())
        ops::grouped_gemv_masked(in.x, in.counts, host, Tensor(), ref, in.scales);
      else
        ops::grouped_gemv_masked(in.x.to_f32(), in.counts, host, Tensor(), ref);
      Tensor y = poisoned_device({groups, t, n}, y_dtype);
      ops::cuda::grouped_gemm_masked_tc(in.x.to(Device::kCuda), in.counts.to(Device::kCuda), dev, table, y,
                                        in.scales.defined() ? in.scales.to(Device::kCuda) : Tensor());
      expect_close(y.to(Device::kCpu), ref, in.counts, y_dtype == DType::kBF16 ? kBf16Bound : kF32Bound, what);
    }
}

// The decode path inside a CUDA graph: captured once with some counts, replayed after new counts
// and new x were written on the device; the replay equals an eager call bit for bit (rows past the
// new counts NaN in both) and matches the GEMV.
TEST(GroupedGemmMaskedTc, ReplaysFromCudaGraphWithNewCounts) {
  cudaStream_t stream = nullptr;
  ops::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  ops::cuda::set_current_stream(stream);
  const int64_t groups = 4, t = 128, n = 256, k = 512;
  const std::vector<Weight> experts = device_experts(groups, n, k, 41);
  const Tensor table = ops::expert_pointer_table(experts);
  const Inputs first = make_inputs(groups, t, k, {10, 0, 128, 64}, DType::kF8E4M3, 42);
  Tensor xd = first.x.to(Device::kCuda), cd = first.counts.to(Device::kCuda), sd = first.scales.to(Device::kCuda);
  Tensor y = poisoned_device({groups, t, n}, DType::kBF16);
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the copies ran on the legacy stream

  auto forward = [&] { ops::cuda::grouped_gemm_masked_tc(xd, cd, experts, table, y, sd); };
  forward();
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ops::cuda::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  forward();
  ops::cuda::check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  ops::cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");

  // New counts (more rows for experts 0 and 1, fewer for 2, none for 3) and new x, written in place.
  const Inputs second = make_inputs(groups, t, k, {128, 65, 1, 0}, DType::kF8E4M3, 43);
  ops::cuda::check(cudaMemcpy(xd.raw_data(), second.x.raw_data(), second.x.nbytes(), cudaMemcpyHostToDevice), "copy x");
  ops::cuda::check(cudaMemcpy(sd.raw_data(), second.scales.raw_data(), second.scales.nbytes(), cudaMemcpyHostToDevice),
                   "copy scales");
  ops::cuda::check(cudaMemcpy(cd.raw_data(), second.counts.raw_data(), second.counts.nbytes(), cudaMemcpyHostToDevice),
                   "copy counts");
  ops::cuda::check(cudaMemset(y.raw_data(), 0xFF, y.nbytes()), "poison y");
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  ops::cuda::check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  const Tensor y_graph = y.to(Device::kCpu);

  ops::cuda::check(cudaMemset(y.raw_data(), 0xFF, y.nbytes()), "poison y");
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  forward();
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  const Tensor y_eager = y.to(Device::kCpu);
  EXPECT_EQ(std::memcmp(y_graph.raw_data(), y_eager.raw_data(), y_graph.nbytes()), 0) << "graph replay != eager call";

  Tensor ref = poisoned_device({groups, t, n}, DType::kF32);
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  ops::grouped_gemv_masked(xd, cd, experts, table, ref, sd);
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  expect_close(y_graph, ref.to(Device::kCpu), second.counts, kBf16Bound, "graph replay");

  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  ops::cuda::set_current_stream(cudaStreamPerThread);
  cudaStreamDestroy(stream);
}

TEST(GroupedGemmMaskedTc, RejectsWhatItDoesNotCover) {
  using ops::cuda::grouped_gemm_masked_tc;
  const std::vector<Weight> ok = device_experts(2, 256, 256, 51);
  const Tensor table = ops::expert_pointer_table(ok);
  const Tensor cd = Tensor::empty({2}, DType::kI32).to(Device::kCuda);
  Tensor y = Tensor::empty({2, 8, 256}, DType::kBF16, Device::kCuda);
  const Tensor xb = Tensor::empty({2, 8, 256}, DType::kBF16, Device::kCuda);
  const Tensor xq = Tensor::empty({2, 8, 256}, DType::kF8E4M3, Device::kCuda);
  const Tensor sc = Tensor::empty({2, 2, 8}, DType::kF32, Device::kCuda);
  // f32 x; fp8 x without scales; scales beside bf16 x; scales of the wrong shape.
  EXPECT_THROW(grouped_gemm_masked_tc(Tensor::empty({2, 8, 256}, DType::kF32, Device::kCuda), cd, ok, table, y),
               std::invalid_argument);
  EXPECT_THROW(grouped_gemm_masked_tc(xq, cd, ok, table, y), std::invalid_argument);
  EXPECT_THROW(grouped_gemm_masked_tc(xb, cd, ok, table, y, sc), std::invalid_argument);
  EXPECT_THROW(grouped_gemm_masked_tc(xq, cd, ok, table, y, Tensor::empty({2, 8, 2}, DType::kF32, Device::kCuda)),
               std::invalid_argument);
  // N or K not a multiple of 128.
  {
    std::vector<Weight> odd_n, odd_k;
    for (int i = 0; i < 2; ++i) {
      odd_n.push_back(Weight{Tensor::empty({192, 256}, DType::kF8E4M3, Device::kCuda),
                             Tensor::empty({2, 2}, DType::kF32, Device::kCuda)});
      odd_k.push_back(Weight{Tensor::empty({256, 200}, DType::kF8E4M3, Device::kCuda),
                             Tensor::empty({2, 2}, DType::kF32, Device::kCuda)});
    }
    Tensor y192 = Tensor::empty({2, 8, 192}, DType::kBF16, Device::kCuda);
    EXPECT_THROW(grouped_gemm_masked_tc(xb, cd, odd_n, ops::expert_pointer_table(odd_n), y192), std::invalid_argument);
    EXPECT_THROW(grouped_gemm_masked_tc(Tensor::empty({2, 8, 200}, DType::kBF16, Device::kCuda), cd, odd_k,
                                        ops::expert_pointer_table(odd_k), y),
                 std::invalid_argument);
  }
  // bf16 experts (the GEMV's business); x on the host; the wrong output shape.
  {
    std::vector<Weight> dense;
    for (int i = 0; i < 2; ++i) dense.push_back(Weight{Tensor::empty({256, 256}, DType::kBF16, Device::kCuda), Tensor()});
    EXPECT_THROW(grouped_gemm_masked_tc(xb, cd, dense, ops::expert_pointer_table(dense), y), std::invalid_argument);
  }
  EXPECT_THROW(grouped_gemm_masked_tc(Tensor::empty({2, 8, 256}, DType::kBF16), cd, ok, table, y), std::invalid_argument);
  Tensor y_bad = Tensor::empty({2, 8, 128}, DType::kBF16, Device::kCuda);
  EXPECT_THROW(grouped_gemm_masked_tc(xb, cd, ok, table, y_bad), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::gpu_test
