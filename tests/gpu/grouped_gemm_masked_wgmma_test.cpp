// ops::cuda::grouped_gemm_masked_wgmma (the masked-layout expert GEMM on Hopper FP8 wgmma) and
// ops::cuda::quantize_fp8_masked, on the device.
//
// The GEMM is checked two ways on every case: against ops::grouped_gemv_masked on the same device
// inputs (f32 y, every row below the counts; the GEMV is itself checked against the CPU op in
// linear_gpu_test.cpp), and against a CPU W8A8 emulation in double (x and W dequantized with their
// scales, summed per 128-wide K block) on sampled outputs (rows around the 64- and 128-row tile
// edges and the last row of every expert, ~100 columns spread over all column tiles), since a full
// CPU GEMM of these shapes takes minutes. Fresh random inputs; outputs poisoned (NaN) before every
// run; rows of x past each count hold NaN (their fp8 scales too), so a stale row that reached a
// stored result would show; rows of y past each count must stay NaN.
//
// Error bounds (normwise ||y - ref|| / ||ref|| and max-norm max |y - ref| / max |ref|, over the rows
// below the counts):
// - f32 y: 2e-3 for both. Every e4m3 x e4m3 product is exact, but Hopper's fp8 wgmma accumulates
//   with ~13-14 mantissa bits (DeepSeek-V3 report §3.3.2: why the kernel promotes the partial sum
//   to f32 every 128 K). Each 128-wide block's partial sum then carries a relative error of a few
//   2^-13 ≈ 1.2e-4 of its magnitude; the 16..56 blocks' errors add with random signs, so the result
//   is expected near 1e-4 (the GEMV's own f32 error is ~1e-6). 2e-3 leaves a margin of ~10 while any
//   structural error fails by far more: a lost 32-wide k step changes a 7168-long row by ~7%
//   (normwise), a wrong weight scale block by up to 9x, a wrong row's scale by up to 2^10, a
//   swizzle or descriptor slip scrambles whole 16-byte chunks (~100%).
// - bf16 y: 5e-3 for both: one bf16 rounding of every output (<= 2^-9 ≈ 2e-3 relative, RMS ~1.1e-3)
//   on top of the above.
// Shapes: DeepSeek-V3's expert gate|up (N = 4096, K = 7168) and down (N = 7168, K = 2048) with
// E in {1, 4, 32} and max_m in {64, 512, 2048}; counts 0, 1, 63, 64, 65, 129, max_m, uneven,
// negative and above max_m (clamped); y f32 and bf16; column tiles 128 (the public call) and 256;
// more than 64 experts (several launches). A CUDA graph (quantizer + GEMM from bf16 rows) captured
// once and replayed after the counts and x changed on the device. Bad arguments throw
// std::invalid_argument. The quantizer: the same bytes and scales as the CPU quantizer on the
// counted rows, nothing written past them.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/grouped_gemm.h"
#include "ops/quant.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

constexpr double kF32Bound = 2e-3;
constexpr double kBf16Bound = 5e-3;

double bound_for(DType y) { return y == DType::kBF16 ? kBf16Bound : kF32Bound; }

// n random e4m3 bytes, any value but NaN (S.1111.111), 8 per LCG step (weights reach 940 MB).
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

// Experts on the host (for the CPU emulation) and on the device: random e4m3 bytes, a different
// scale in every 128x128 block (0.5 .. 4.5 times 2^-8, shifted per expert).
struct Experts {
  std::vector<Weight> host, dev;
  Tensor table;
};

Experts make_experts(int64_t groups, int64_t n, int64_t k, uint64_t seed) {
  Experts ex;
  for (int64_t g = 0; g < groups; ++g) {
    Weight w{Tensor::empty({n, k}, DType::kF8E4M3), Tensor::empty({n / 128, k / 128}, DType::kF32)};
    random_fp8(w.weight.data<uint8_t>(), static_cast<size_t>(n * k), seed + static_cast<uint64_t>(g) * 7919);
    for (int64_t bi = 0; bi < n / 128; ++bi)
      for (int64_t bj = 0; bj < k / 128; ++bj)
        w.scale_inv.data<float>()[bi * (k / 128) + bj] = std::ldexp(0.5f + static_cast<float>((bi * 7 + bj * 3 + g) % 5), -8);
    ex.dev.push_back(w.to(Device::kCuda));
    ex.host.push_back(std::move(w));
  }
  ex.table = ops::expert_pointer_table(ex.dev);
  return ex;
}

int64_t clamped(int32_t c, int64_t t) { return std::clamp<int64_t>(c, 0, t); }

// Host inputs of the masked layout: x fp8 [G, T, K] with scales [G, K/128, T]; rows past each count
// (clamped to [0, T]) NaN bytes, their scales NaN.
struct Inputs {
  Tensor x, scales, counts;
};

Tensor counts_tensor(const std::vector<int32_t>& counts) {
  Tensor c = Tensor::empty({static_cast<int64_t>(counts.size())}, DType::kI32);
  std::memcpy(c.raw_data(), counts.data(), counts.size() * sizeof(int32_t));
  return c;
}

Inputs make_inputs(int64_t groups, int64_t t, int64_t k, const std::vector<int32_t>& counts, uint64_t seed) {
  Inputs in;
  in.counts = counts_tensor(counts);
  const int64_t kb = k / 128;
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
  return in;
}

// Error accumulator: both norms, plus the NaN / written-past-count bookkeeping.
struct Err {
  double num2 = 0, den2 = 0, num_max = 0, den_max = 0;
  int64_t nan_valid = 0, written = 0, compared = 0;
  void add(float got, double ref) {
    if (std::isnan(got)) {
      ++nan_valid;
      return;
    }
    const double d = static_cast<double>(got) - ref;
    num2 += d * d;
    den2 += ref * ref;
    num_max = std::max(num_max, std::abs(d));
    den_max = std::max(den_max, std::abs(ref));
    ++compared;
  }
  double norm() const { return std::sqrt(num2 / std::max(den2, 1e-300)); }
  double elem() const { return num_max / std::max(den_max, 1e-300); }
  void expect(double bound, const std::string& what) const {
    EXPECT_EQ(written, 0) << what << ": outputs past a count were written";
    EXPECT_EQ(nan_valid, 0) << what << ": outputs below a count are NaN (not written, or a stale row was read)";
    EXPECT_LT(norm(), bound) << what << " (normwise; " << compared << " outputs)";
    EXPECT_LT(elem(), bound) << what << " (max-norm; normwise " << norm() << ")";
  }
};

// got (host, y's dtype) against ref (host f32), both [G, T, N]: rows < count compared, rows past it
// must still be NaN.
Err compare_all(const Tensor& got_host, const Tensor& ref_host, const Tensor& counts) {
  const int64_t groups = got_host.size(0), t = got_host.size(1), n = got_host.size(2);
  const Tensor got = got_host.to_f32();
  const float* a = got.data<float>();
  const float* b = ref_host.data<float>();
  Err err;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = clamped(counts.data<int32_t>()[g], t);
    for (int64_t r = 0; r < t; ++r) {
      const float* ar = a + (g * t + r) * n;
      const float* br = b + (g * t + r) * n;
      for (int64_t col = 0; col < n; ++col) {
        if (r >= c)
          err.written += !std::isnan(ar[col]);
        else
          err.add(ar[col], br[col]);
      }
    }
  }
  return err;
}

// The CPU W8A8 emulation on sampled outputs: rows 0, 1, 62..66, 126..130, c - 2, c - 1 and a
// pseudo-random one of every expert (those below its count), ~100 columns touching every
// 128-column block. ref = sum over K blocks of (exact block dot product of the e4m3 values) x
// x_scale x w_scale, in double.
Err compare_cpu_sampled(const Tensor& got_host, const Inputs& in, const std::vector<Weight>& host) {
  const int64_t groups = got_host.size(0), t = got_host.size(1), n = got_host.size(2), k = in.x.size(2), kbs = k / 128;
  const Tensor got = got_host.to_f32();
  float lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = fp8e4m3_to_f32(static_cast<uint8_t>(v));
  std::vector<int64_t> cols;
  for (int64_t j = 0; j < std::max<int64_t>(96, n / 128); ++j) cols.push_back((j * 131 + 7) % n);
  Err err;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = clamped(in.counts.data<int32_t>()[g], t);
    std::vector<int64_t> rows = {0, 1, 62, 63, 64, 65, 66, 126, 127, 128, 129, 130, c - 2, c - 1, (g * 977) % std::max<int64_t>(c, 1)};
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    const uint8_t* w = host[static_cast<size_t>(g)].weight.data<uint8_t>();
    const float* ws = host[static_cast<size_t>(g)].scale_inv.data<float>();
    for (int64_t r : rows) {
      if (r < 0 || r >= c) continue;
      const uint8_t* xr = in.x.data<uint8_t>() + (g * t + r) * k;
      for (int64_t col : cols) {
        const uint8_t* wr = w + col * k;
        double sum = 0;
        for (int64_t b = 0; b < kbs; ++b) {
          double blk = 0;
          for (int64_t i = b * 128; i < b * 128 + 128; ++i) blk += static_cast<double>(lut[xr[i]]) * lut[wr[i]];
          sum += blk * in.scales.data<float>()[(g * kbs + b) * t + r] * ws[(col / 128) * kbs + b];
        }
        err.add(got.data<float>()[(g * t + r) * n + col], sum);
      }
    }
  }
  return err;
}

std::string label(int64_t groups, int64_t t, int64_t n, int64_t k, DType y_dtype, int block_n) {
  return "E=" + std::to_string(groups) + " T=" + std::to_string(t) + " N=" + std::to_string(n) + " K=" + std::to_string(k) +
         " y " + dtype_name(y_dtype) + " BN=" + std::to_string(block_n);
}

// block_n 128 or 256 explicitly, and 0 for the public call (which picks 256 where N allows).
void run_gemm(const Tensor& x, const Tensor& s, const Tensor& counts, const Experts& ex, Tensor& y, int block_n) {
  if (block_n == 0)
    ops::cuda::grouped_gemm_masked_wgmma(x, s, counts, ex.dev, ex.table, y);
  else
    ops::cuda::detail::grouped_gemm_masked_wgmma_bn(x, s, counts, ex.dev, ex.table, y, block_n);
}

// One case: the kernel against the GEMV (every row) and the CPU emulation (sampled).
void check_case(const Experts& ex, int64_t t, const std::vector<int32_t>& counts, DType y_dtype, int block_n, uint64_t seed) {
  const int64_t groups = static_cast<int64_t>(ex.dev.size()), n = ex.dev[0].rows(), k = ex.dev[0].cols();
  const std::string what = label(groups, t, n, k, y_dtype, block_n);
  const Inputs in = make_inputs(groups, t, k, counts, seed);
  const Tensor xd = in.x.to(Device::kCuda), cd = in.counts.to(Device::kCuda), sd = in.scales.to(Device::kCuda);
  Tensor ref = poisoned_device({groups, t, n}, DType::kF32);
  ops::grouped_gemv_masked(xd, cd, ex.dev, ex.table, ref, sd);
  Tensor y = poisoned_device({groups, t, n}, y_dtype);
  run_gemm(xd, sd, cd, ex, y, block_n);
  ops::cuda::check(cudaDeviceSynchronize(), what.c_str());
  const Tensor got = y.to(Device::kCpu);
  compare_all(got, ref.to(Device::kCpu), in.counts).expect(bound_for(y_dtype), what + " vs GEMV");
  compare_cpu_sampled(got, in, ex.host).expect(bound_for(y_dtype), what + " vs CPU W8A8");
}

TEST(GroupedGemmMaskedWgmma, GateUpShape) {
  {
    const Experts e1 = make_experts(1, 4096, 7168, 11);
    check_case(e1, 64, {64}, DType::kF32, 128, 1);
    check_case(e1, 64, {63}, DType::kBF16, 256, 2);
  }
  {
    const Experts e4 = make_experts(4, 4096, 7168, 12);
    check_case(e4, 512, {0, 65, 512, 1}, DType::kBF16, 128, 3);
    check_case(e4, 512, {129, 0, 200, 511}, DType::kF32, 256, 4);
  }
  {
    // EP8-like: 32 local experts, max_m 2048, uneven counts (two clamped, one negative).
    const Experts e32 = make_experts(32, 4096, 7168, 13);
    const std::vector<int32_t> counts = {0, 1,   63,  64,  65, 2048, 128, 127, 129, 17, 200, -3, 5,  1000,  64, 33,
                                         2, 255, 256, 257, 0,  9,    77,  512, 8,   16, 31,  32, 95, 99999, 97, 1500};
    check_case(e32, 2048, counts, DType::kBF16, 128, 5);
    check_case(e32, 2048, counts, DType::kF32, 256, 6);
  }
}

TEST(GroupedGemmMaskedWgmma, DownShape) {
  {
    const Experts e1 = make_experts(1, 7168, 2048, 21);
    check_case(e1, 512, {300}, DType::kBF16, 128, 7);
  }
  {
    const Experts e4 = make_experts(4, 7168, 2048, 22);
    check_case(e4, 64, {63, 64, 0, 1}, DType::kF32, 128, 8);
    check_case(e4, 64, {1, 63, 64, 17}, DType::kBF16, 256, 9);
  }
  {
    const Experts e32 = make_experts(32, 7168, 2048, 23);
    std::vector<int32_t> counts;
    for (int g = 0; g < 32; ++g) counts.push_back(g % 8 == 0 ? 0 : (g * 193) % 2049);  // 0 .. 2048, uneven
    counts[5] = 2048;
    counts[6] = 64;
    counts[7] = 65;
    counts[9] = 129;
    counts[10] = -7;
    counts[11] = 5000;
    check_case(e32, 2048, counts, DType::kF32, 128, 10);
    check_case(e32, 2048, counts, DType::kBF16, 256, 11);
  }
}

// More than 64 experts: the kernel runs as several launches of at most 64 (tensor maps ride in
// the launch parameters). Odd max_m (a partial 64-row half at the buffer's end).
TEST(GroupedGemmMaskedWgmma, ManyExpertsSeveralLaunches) {
  const int64_t groups = 150, t = 70, n = 256, k = 384;
  const Experts ex = make_experts(groups, n, k, 31);
  std::vector<int32_t> counts;
  for (int g = 0; g < groups; ++g) counts.push_back(g % 5 == 0 ? 0 : (g * 37) % 71);  // 0 .. 70
  counts[63] = 70;
  counts[64] = 65;
  counts[149] = 1;
  check_case(ex, t, counts, DType::kF32, 128, 32);
  check_case(ex, t, counts, DType::kBF16, 256, 33);
}

// max_m below the 64-row x box (TMA fills the rows past max_m with zeros; the box is larger than
// the tensor's row dimension) and a single row.
TEST(GroupedGemmMaskedWgmma, MaxMBelowOneBox) {
  const Experts ex = make_experts(4, 256, 256, 61);
  check_case(ex, 8, {1, 0, 8, 5}, DType::kF32, 128, 62);
  check_case(ex, 8, {100, 3, -1, 7}, DType::kBF16, 256, 63);
  check_case(ex, 1, {1, 0, 1, 1}, DType::kF32, 128, 64);
}

// DeepSeek-quantized weights (f32 master weights, scale = block amax / 448) and bf16 rows through
// quantize_fp8_masked, against the CPU: the CPU quantizer on the counted rows, then the CPU op
// (grouped_gemv_masked on fp8 x with scales dequantizes x and W, f32 GEMM). T = 70: a partial
// second 64-row half.
TEST(GroupedGemmMaskedWgmma, QuantizedBf16RowsMatchCpu) {
  const int64_t groups = 3, t = 70, n = 256, k = 384;
  Experts ex;
  for (int64_t g = 0; g < groups; ++g) {
    Weight w = to_fp8_weight(master_weight(n, k, 100 + static_cast<uint64_t>(g)));
    ex.dev.push_back(w.to(Device::kCuda));
    ex.host.push_back(w);
  }
  ex.table = ops::expert_pointer_table(ex.dev);
  const std::vector<int32_t> counts = {0, 70, 33};
  const Tensor ch = counts_tensor(counts);
  // bf16 rows, NaN past the counts.
  Tensor x32 = Tensor::empty({groups, t, k}, DType::kF32);
  Lcg rng{77};
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r = 0; r < t; ++r)
      for (int64_t col = 0; col < k; ++col)
        x32.data<float>()[(g * t + r) * k + col] = r < clamped(counts[static_cast<size_t>(g)], t)
                                                       ? rng.next() * std::ldexp(1.0f, static_cast<int>(r % 11) - 5)
                                                       : std::numeric_limits<float>::quiet_NaN();
  Tensor xb = Tensor::empty({groups, t, k}, DType::kBF16);
  convert_from_f32(DType::kBF16, x32.data<float>(), xb.raw_data(), static_cast<size_t>(x32.numel()));
  // CPU: quantize each expert's counted rows (the rest stays NaN: never read), then the CPU op.
  Tensor q = Tensor::empty({groups, t, k}, DType::kF8E4M3), s = Tensor::empty({groups, k / 128, t}, DType::kF32);
  std::memset(q.raw_data(), 0x7F, q.nbytes());
  for (int64_t i = 0; i < s.numel(); ++i) s.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = clamped(counts[static_cast<size_t>(g)], t);
    if (c == 0) continue;
    Tensor xg = Tensor::empty({c, k}, DType::kBF16), qg = Tensor::empty({c, k}, DType::kF8E4M3),
           sg = Tensor::empty({k / 128, c}, DType::kF32);
    std::memcpy(xg.raw_data(), static_cast<const char*>(xb.raw_data()) + g * t * k * 2, static_cast<size_t>(c * k * 2));
    ops::quantize_fp8_per_token_group(xg, qg, sg);
    std::memcpy(q.data<uint8_t>() + g * t * k, qg.raw_data(), static_cast<size_t>(c * k));
    for (int64_t b = 0; b < k / 128; ++b)
      std::memcpy(s.data<float>() + (g * (k / 128) + b) * t, sg.data<float>() + b * c, static_cast<size_t>(c) * 4);
  }
  Tensor ref = Tensor::empty({groups, t, n}, DType::kF32);
  ops::grouped_gemv_masked(q, ch, ex.host, Tensor(), ref, s);

  const Tensor xd = xb.to(Device::kCuda), cd = ch.to(Device::kCuda);
  for (int block_n : {128, 256})
    for (DType y_dtype : {DType::kF32, DType::kBF16}) {
      const std::string what = "CPU " + label(groups, t, n, k, y_dtype, block_n);
      Tensor qd = poisoned_device({groups, t, k}, DType::kF8E4M3), sd = poisoned_device({groups, k / 128, t}, DType::kF32);
      ops::cuda::quantize_fp8_masked(xd, cd, qd, sd);
      Tensor y = poisoned_device({groups, t, n}, y_dtype);
      run_gemm(qd, sd, cd, ex, y, block_n);
      ops::cuda::check(cudaDeviceSynchronize(), what.c_str());
      compare_all(y.to(Device::kCpu), ref, ch).expect(bound_for(y_dtype), what);
    }
}

// quantize_fp8_masked against the CPU quantizer: the same bytes and scales on the counted rows
// (each expert's rows quantized as an [c, K] matrix), poison untouched past the counts.
TEST(QuantizeFp8Masked, MatchesCpuQuantizerOnCountedRows) {
  for (const auto& [t, k, counts] : std::vector<std::tuple<int64_t, int64_t, std::vector<int32_t>>>{
           {300, 7168, {0, 1, 300, 157}}, {64, 2048, {-5, 999, 16, 17, 63}}, {2048, 256, {2048, 0, 1500}}}) {
    const int64_t groups = static_cast<int64_t>(counts.size()), kb = k / 128;
    const std::string what = "T=" + std::to_string(t) + " K=" + std::to_string(k) + " E=" + std::to_string(groups);
    Tensor x32 = Tensor::empty({groups, t, k}, DType::kF32);
    Lcg rng{static_cast<uint64_t>(t * 31 + k)};
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = 0; r < t; ++r)
        for (int64_t col = 0; col < k; ++col) {
          // Magnitudes vary by row and by 128-column group; one all-zero group (the 1e-4 clamp).
          const bool zero_group = r % 7 == 3 && col / 128 == 1;
          x32.data<float>()[(g * t + r) * k + col] =
              r < clamped(counts[static_cast<size_t>(g)], t) && !zero_group
                  ? rng.next() * std::ldexp(1.0f, static_cast<int>((r + col / 128) % 13) - 6)
                  : (r < clamped(counts[static_cast<size_t>(g)], t) ? 0.0f : std::numeric_limits<float>::quiet_NaN());
        }
    Tensor xb = Tensor::empty({groups, t, k}, DType::kBF16);
    convert_from_f32(DType::kBF16, x32.data<float>(), xb.raw_data(), static_cast<size_t>(x32.numel()));
    const Tensor ch = counts_tensor(counts);
    Tensor qd = poisoned_device({groups, t, k}, DType::kF8E4M3), sd = poisoned_device({groups, kb, t}, DType::kF32);
    ops::cuda::quantize_fp8_masked(xb.to(Device::kCuda), ch.to(Device::kCuda), qd, sd);
    ops::cuda::check(cudaDeviceSynchronize(), what.c_str());
    const Tensor q = qd.to(Device::kCpu), s = sd.to(Device::kCpu);
    int64_t byte_diff = 0, scale_diff = 0, q_written = 0, s_written = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c = clamped(counts[static_cast<size_t>(g)], t);
      const uint8_t* qg = q.data<uint8_t>() + g * t * k;
      for (int64_t i = c * k; i < t * k; ++i) q_written += qg[i] != 0xFF;
      for (int64_t b = 0; b < kb; ++b)
        for (int64_t r = c; r < t; ++r) {
          uint32_t bits = 0;
          std::memcpy(&bits, s.data<float>() + (g * kb + b) * t + r, 4);
          s_written += bits != 0xFFFFFFFFu;
        }
      if (c == 0) continue;
      Tensor xg = Tensor::empty({c, k}, DType::kBF16), qr = Tensor::empty({c, k}, DType::kF8E4M3),
             sr = Tensor::empty({kb, c}, DType::kF32);
      std::memcpy(xg.raw_data(), static_cast<const char*>(xb.raw_data()) + g * t * k * 2, static_cast<size_t>(c * k * 2));
      ops::quantize_fp8_per_token_group(xg, qr, sr);
      for (int64_t i = 0; i < c * k; ++i) byte_diff += qg[i] != qr.data<uint8_t>()[i];
      for (int64_t b = 0; b < kb; ++b)
        for (int64_t r = 0; r < c; ++r)
          scale_diff += std::memcmp(s.data<float>() + (g * kb + b) * t + r, sr.data<float>() + b * c + r, 4) != 0;
    }
    EXPECT_EQ(byte_diff, 0) << what << ": fp8 bytes differ from the CPU quantizer";
    EXPECT_EQ(scale_diff, 0) << what << ": scales differ from the CPU quantizer";
    EXPECT_EQ(q_written, 0) << what << ": q written past a count";
    EXPECT_EQ(s_written, 0) << what << ": scales written past a count";
  }
}

// The decode path inside a CUDA graph: bf16 rows -> quantize_fp8_masked -> the GEMM, captured once
// with some counts, replayed after new counts and new x were written on the device; the replay
// equals an eager call bit for bit (rows past the new counts still poisoned in both) and matches
// the GEMV on the quantized rows.
TEST(GroupedGemmMaskedWgmma, ReplaysFromCudaGraphWithNewCounts) {
  cudaStream_t stream = nullptr;
  ops::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  ops::cuda::set_current_stream(stream);
  const int64_t groups = 4, t = 256, n = 512, k = 1024;
  const Experts ex = make_experts(groups, n, k, 41);
  auto bf16_rows = [&](const std::vector<int32_t>& counts, uint64_t seed) {
    Tensor x32 = Tensor::empty({groups, t, k}, DType::kF32);
    Lcg rng{seed};
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = 0; r < t; ++r)
        for (int64_t col = 0; col < k; ++col)
          x32.data<float>()[(g * t + r) * k + col] =
              r < clamped(counts[static_cast<size_t>(g)], t) ? rng.next() : std::numeric_limits<float>::quiet_NaN();
    Tensor xb = Tensor::empty({groups, t, k}, DType::kBF16);
    convert_from_f32(DType::kBF16, x32.data<float>(), xb.raw_data(), static_cast<size_t>(x32.numel()));
    return xb;
  };
  const std::vector<int32_t> first = {10, 0, 256, 64}, second = {256, 65, 1, 0};
  Tensor xd = bf16_rows(first, 42).to(Device::kCuda), cd = counts_tensor(first).to(Device::kCuda);
  Tensor qd = poisoned_device({groups, t, k}, DType::kF8E4M3), sd = poisoned_device({groups, k / 128, t}, DType::kF32);
  Tensor y = poisoned_device({groups, t, n}, DType::kBF16);
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the copies ran on the legacy stream

  auto forward = [&] {
    ops::cuda::quantize_fp8_masked(xd, cd, qd, sd);
    ops::cuda::grouped_gemm_masked_wgmma(qd, sd, cd, ex.dev, ex.table, y);
  };
  forward();  // warm-up (the tensor maps' cache), as a model runner does before capture
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ops::cuda::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  forward();
  ops::cuda::check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  ops::cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");

  // New counts (more rows for experts 0 and 1, fewer for 2, none for 3) and new x, written in place.
  const Tensor x2 = bf16_rows(second, 43), c2 = counts_tensor(second);
  ops::cuda::check(cudaMemcpy(xd.raw_data(), x2.raw_data(), x2.nbytes(), cudaMemcpyHostToDevice), "copy x");
  ops::cuda::check(cudaMemcpy(cd.raw_data(), c2.raw_data(), c2.nbytes(), cudaMemcpyHostToDevice), "copy counts");
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
  ops::grouped_gemv_masked(qd, cd, ex.dev, ex.table, ref, sd);
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");
  compare_all(y_graph, ref.to(Device::kCpu), c2).expect(kBf16Bound, "graph replay");

  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  ops::cuda::set_current_stream(cudaStreamPerThread);
  cudaStreamDestroy(stream);
}

// Each call that must throw std::invalid_argument, with a message naming the op.
template <typename F>
void expect_invalid(F&& f, const char* op, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << what << ": no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(op), std::string::npos) << what << ": message '" << e.what() << "'";
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": " << e.what() << " (not std::invalid_argument)";
  }
}

TEST(GroupedGemmMaskedWgmma, RejectsWhatItDoesNotCover) {
  using ops::cuda::grouped_gemm_masked_wgmma;
  constexpr const char* op = "grouped_gemm_masked_wgmma";
  const Experts ok = make_experts(2, 256, 256, 51);
  const Tensor cd = Tensor::empty({2}, DType::kI32, Device::kCuda);
  Tensor y = Tensor::empty({2, 8, 256}, DType::kBF16, Device::kCuda);
  const Tensor xq = Tensor::empty({2, 8, 256}, DType::kF8E4M3, Device::kCuda);
  const Tensor xb = Tensor::empty({2, 8, 256}, DType::kBF16, Device::kCuda);
  const Tensor sc = Tensor::empty({2, 2, 8}, DType::kF32, Device::kCuda);
  expect_invalid([&] { grouped_gemm_masked_wgmma(xb, sc, cd, ok.dev, ok.table, y); }, op, "bf16 x");
  expect_invalid([&] { grouped_gemm_masked_wgmma(xq, Tensor(), cd, ok.dev, ok.table, y); }, op, "no scales");
  expect_invalid([&] { grouped_gemm_masked_wgmma(xq, Tensor::empty({2, 8, 2}, DType::kF32, Device::kCuda), cd, ok.dev, ok.table, y); },
                 op, "scales [G, T, K/128]");
  expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, Tensor::empty({2}, DType::kI64, Device::kCuda), ok.dev, ok.table, y); },
                 op, "i64 counts");
  expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, Tensor::empty({3}, DType::kI32, Device::kCuda), ok.dev, ok.table, y); },
                 op, "3 counts for 2 experts");
  expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, cd, ok.dev, Tensor::empty({2, 3}, DType::kI64, Device::kCuda), y); },
                 op, "table [2, 3]");
  expect_invalid([&] { grouped_gemm_masked_wgmma(Tensor::empty({2, 8, 256}, DType::kF8E4M3), sc, cd, ok.dev, ok.table, y); }, op,
                 "x on the host");
  expect_invalid([&] { grouped_gemm_masked_wgmma(Tensor::empty({3, 8, 256}, DType::kF8E4M3, Device::kCuda), sc, cd, ok.dev, ok.table, y); },
                 op, "x with 3 groups");
  {
    Tensor y_bad = Tensor::empty({2, 8, 128}, DType::kBF16, Device::kCuda);
    expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, cd, ok.dev, ok.table, y_bad); }, op, "y [2, 8, 128]");
    Tensor y_i32 = Tensor::empty({2, 8, 256}, DType::kI32, Device::kCuda);
    expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, cd, ok.dev, ok.table, y_i32); }, op, "i32 y");
  }
  expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, cd, std::vector<Weight>{}, ok.table, y); }, op, "no experts");
  {
    // N or K not a multiple of 128; bf16 experts; experts of different shapes.
    std::vector<Weight> odd_n, odd_k, dense, mixed;
    for (int i = 0; i < 2; ++i) {
      odd_n.push_back(Weight{Tensor::empty({192, 256}, DType::kF8E4M3, Device::kCuda), Tensor::empty({2, 2}, DType::kF32, Device::kCuda)});
      odd_k.push_back(Weight{Tensor::empty({256, 200}, DType::kF8E4M3, Device::kCuda), Tensor::empty({2, 2}, DType::kF32, Device::kCuda)});
      dense.push_back(Weight{Tensor::empty({256, 256}, DType::kBF16, Device::kCuda), Tensor()});
    }
    mixed.push_back(ok.dev[0]);
    mixed.push_back(Weight{Tensor::empty({384, 256}, DType::kF8E4M3, Device::kCuda), Tensor::empty({3, 2}, DType::kF32, Device::kCuda)});
    Tensor y192 = Tensor::empty({2, 8, 192}, DType::kBF16, Device::kCuda);
    expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, cd, odd_n, ops::expert_pointer_table(odd_n), y192); }, op, "N 192");
    expect_invalid([&] { grouped_gemm_masked_wgmma(Tensor::empty({2, 8, 200}, DType::kF8E4M3, Device::kCuda), sc, cd, odd_k,
                                                   ops::expert_pointer_table(odd_k), y); },
                   op, "K 200");
    expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, cd, dense, ops::expert_pointer_table(dense), y); }, op, "bf16 experts");
    expect_invalid([&] { grouped_gemm_masked_wgmma(xq, sc, cd, mixed, ops::expert_pointer_table(mixed), y); }, op, "mixed shapes");
  }
  {
    // Column tile 256 needs N % 256 == 0; tiles other than 128 / 256.
    const Experts n384 = make_experts(2, 384, 256, 52);
    Tensor y384 = Tensor::empty({2, 8, 384}, DType::kF32, Device::kCuda);
    expect_invalid([&] { ops::cuda::detail::grouped_gemm_masked_wgmma_bn(xq, sc, cd, n384.dev, n384.table, y384, 256); }, op,
                   "BN 256 with N 384");
    expect_invalid([&] { ops::cuda::detail::grouped_gemm_masked_wgmma_bn(xq, sc, cd, ok.dev, ok.table, y, 192); }, op, "BN 192");
  }
  // The quantizer.
  constexpr const char* qop = "quantize_fp8_masked";
  Tensor q = Tensor::empty({2, 8, 256}, DType::kF8E4M3, Device::kCuda), qs = Tensor::empty({2, 2, 8}, DType::kF32, Device::kCuda);
  expect_invalid([&] { ops::cuda::quantize_fp8_masked(Tensor::empty({2, 8, 256}, DType::kF32, Device::kCuda), cd, q, qs); }, qop,
                 "f32 x");
  {
    Tensor q200 = Tensor::empty({2, 8, 200}, DType::kF8E4M3, Device::kCuda), s200 = Tensor::empty({2, 2, 8}, DType::kF32, Device::kCuda);
    expect_invalid([&] { ops::cuda::quantize_fp8_masked(Tensor::empty({2, 8, 200}, DType::kBF16, Device::kCuda), cd, q200, s200); },
                   qop, "K 200");
    Tensor q128 = Tensor::empty({2, 8, 128}, DType::kF8E4M3, Device::kCuda);
    expect_invalid([&] { ops::cuda::quantize_fp8_masked(xb, cd, q128, qs); }, qop, "q [2, 8, 128]");
    Tensor s_bad = Tensor::empty({2, 8, 2}, DType::kF32, Device::kCuda);
    expect_invalid([&] { ops::cuda::quantize_fp8_masked(xb, cd, q, s_bad); }, qop, "scales [G, T, K/128]");
  }
  expect_invalid([&] { ops::cuda::quantize_fp8_masked(xb, Tensor::empty({2}, DType::kI32), q, qs); }, qop, "counts on the host");
}

}  // namespace
}  // namespace pdserve::gpu_test
