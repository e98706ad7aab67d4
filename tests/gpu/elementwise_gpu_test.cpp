// CUDA elementwise ops against the CPU reference on random inputs.
//
// Bounds: f32 silu_mul within 1e-6 of max|cpu| (expf vs glibc expf), f32 add exact; bf16 results
// within one bf16 rounding of the CPU op on the same (bf16-valued) inputs: 4e-3 of max|cpu|.
// Fused silu_mul + FP8 quant: scales within 1e-5 relative of the CPU quantiser applied to the
// reference silu_mul output (rounded to the input dtype), fp8 codes equal except at most 1% one
// representable value apart.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/elementwise.h"
#include "ops/elementwise.h"
#include "ops/quant.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

Tensor as_dtype(const Tensor& f32, DType dt) {
  if (dt == DType::kF32) return f32.clone();
  Tensor out = Tensor::empty(f32.shape(), dt);
  convert_from_f32(dt, f32.data<float>(), out.raw_data(), static_cast<size_t>(f32.numel()));
  return out;
}

Tensor round_bf16(const Tensor& f32) { return as_dtype(f32, DType::kBF16).to_f32(); }

TEST(ElementwiseGpu, SiluMulMatchesCpu) {
  for (auto shape : {Shape{1, 1}, Shape{7, 129}, Shape{256, 2048}}) {
    Tensor g = random_host(shape, 1, 3.0f), u = random_host(shape, 2);
    Tensor want = Tensor::empty(shape, DType::kF32);
    ops::silu_mul(g, u, want);
    Tensor out = poisoned_device(shape);
    Tensor gd = g.to(Device::kCuda), ud = u.to(Device::kCuda);
    ops::silu_mul(gd, ud, out);
    EXPECT_LT(rel_max_err(out.to(Device::kCpu), want), 1e-6) << shape_to_string(shape);
  }
}

TEST(ElementwiseGpu, SiluMulBf16MatchesCpu) {
  uint32_t seed = 10;
  for (auto shape : {Shape{1, 1}, Shape{7, 129}, Shape{2048, 2048}, Shape{3, 8}}) {
    Tensor g = round_bf16(random_host(shape, ++seed, 3.0f)), u = round_bf16(random_host(shape, ++seed));
    Tensor want = Tensor::empty(shape, DType::kF32);
    ops::silu_mul(g, u, want);
    Tensor out = poisoned_device(shape, DType::kBF16);
    ops::silu_mul(as_dtype(g, DType::kBF16).to(Device::kCuda), as_dtype(u, DType::kBF16).to(Device::kCuda), out);
    EXPECT_LT(rel_max_err(out.to(Device::kCpu).to_f32(), want), 4e-3) << shape_to_string(shape);
    Tensor gd = as_dtype(g, DType::kBF16).to(Device::kCuda);  // in place: out aliases gate
    ops::silu_mul(gd, as_dtype(u, DType::kBF16).to(Device::kCuda), gd);
    EXPECT_LT(rel_max_err(gd.to(Device::kCpu).to_f32(), want), 4e-3) << shape_to_string(shape) << " in place";
  }
}

// A host f32 tensor of zeros.
Tensor host_zeros(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

// gate and up as the two halves of one fused [m, 2n] (and masked [G, M, 2n]) gate|up output, as the
// model's fused expert GEMMs write them; both dtypes, 16-byte aligned rows and not (n = 132 bf16).
TEST(ElementwiseGpu, SiluMulTakesTheHalvesOfAFusedOutput) {
  uint32_t seed = 40;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {int64_t{2048}, int64_t{132}, int64_t{3}}) {
      const int64_t m = 37;
      Tensor fused = round_bf16(random_host({m, 2 * n}, ++seed, 3.0f));
      Tensor want = Tensor::empty({m, n}, DType::kF32);
      ops::silu_mul(fused.slice(1, 0, n).clone(), fused.slice(1, n, 2 * n).clone(), want);
      Tensor fd = as_dtype(fused, dt).to(Device::kCuda);
      Tensor out = poisoned_device({m, n}, dt);
      ops::silu_mul(fd.slice(1, 0, n), fd.slice(1, n, 2 * n), out);
      const double bound = dt == DType::kF32 ? 1e-6 : 4e-3;
      EXPECT_LT(rel_max_err(out.to(Device::kCpu).to_f32(), want), bound) << dtype_name(dt) << " n " << n;

      const int64_t G = 3, M = 20;
      const int32_t c[G] = {0, 7, 20};
      Tensor counts = Tensor::empty({G}, DType::kI32);
      std::memcpy(counts.data<int32_t>(), c, sizeof c);
      Tensor f3 = round_bf16(random_host({G, M, 2 * n}, ++seed, 3.0f));
      Tensor want3 = host_zeros({G, M, n});
      ops::silu_mul_masked(f3.slice(2, 0, n).clone(), f3.slice(2, n, 2 * n).clone(), counts, want3);
      Tensor f3d = as_dtype(f3, dt).to(Device::kCuda);
      Tensor out3 = as_dtype(host_zeros({G, M, n}), dt).to(Device::kCuda);
      ops::silu_mul_masked(f3d.slice(2, 0, n), f3d.slice(2, n, 2 * n), counts.to(Device::kCuda), out3);
      EXPECT_LT(rel_max_err(out3.to(Device::kCpu).to_f32(), want3), bound) << dtype_name(dt) << " masked n " << n;
    }
  }
}

// Masked: the counted rows as the CPU op computes them (f32: 1e-6, bf16: one rounding), every other
// row still holds the poison it was given.
TEST(ElementwiseGpu, SiluMulMaskedMatchesCpuAndLeavesUncountedRows) {
  const int64_t G = 6, M = 40, n = 264;
  const int32_t c[G] = {0, 1, 17, 40, 55, -3};
  Tensor counts = Tensor::empty({G}, DType::kI32);
  std::memcpy(counts.data<int32_t>(), c, sizeof c);
  Tensor counts_d = counts.to(Device::kCuda);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    Tensor g = round_bf16(random_host({G, M, n}, 21, 3.0f)), u = round_bf16(random_host({G, M, n}, 22));
    Tensor want = random_host({G, M, n}, 23);  // stands for the uncounted rows' old contents
    Tensor start = as_dtype(want, dt);         // what the device output holds before the call
    want = start.to_f32();
    ops::silu_mul_masked(g, u, counts, want);
    Tensor out = start.to(Device::kCuda);
    ops::silu_mul_masked(as_dtype(g, dt).to(Device::kCuda), as_dtype(u, dt).to(Device::kCuda), counts_d, out);
    Tensor got = out.to(Device::kCpu).to_f32();
    const double bound = dt == DType::kF32 ? 1e-6 : 4e-3;
    for (int64_t grp = 0; grp < G; ++grp) {
      const int64_t rows = std::clamp<int64_t>(c[grp], 0, M);
      for (int64_t r = 0; r < M; ++r) {
        Tensor gr = got.select(grp).select(r), wr = want.select(grp).select(r);
        if (r < rows)
          EXPECT_LT(rel_max_err(gr, wr), bound) << dtype_name(dt) << " group " << grp << " row " << r;
        else
          ASSERT_EQ(std::memcmp(gr.raw_data(), wr.raw_data(), static_cast<size_t>(n) * 4), 0)
              << dtype_name(dt) << " group " << grp << " row " << r << " (past the count) was written";
      }
    }
  }
}

TEST(ElementwiseGpu, AddInplaceMatchesCpu) {
  Tensor y = random_host({33, 100}, 3), x = random_host({33, 100}, 4);
  Tensor want = y.clone();
  ops::add_inplace(want, x);
  Tensor yd = y.to(Device::kCuda), xd = x.to(Device::kCuda);
  ops::add_inplace(yd, xd);
  EXPECT_EQ(rel_max_err(yd.to(Device::kCpu), want), 0.0);
}

TEST(ElementwiseGpu, AddInplaceBf16MatchesCpu) {
  for (auto shape : {Shape{33, 100}, Shape{256, 7168}, Shape{5, 3}}) {
    Tensor y = round_bf16(random_host(shape, 5)), x = round_bf16(random_host(shape, 6));
    Tensor want = y.clone();
    ops::add_inplace(want, x);
    Tensor yd = as_dtype(y, DType::kBF16).to(Device::kCuda);
    ops::add_inplace(yd, as_dtype(x, DType::kBF16).to(Device::kCuda));
    // One rounding of the exact f32 sum: bit-equal to rounding the CPU result.
    EXPECT_EQ(rel_max_err(yd.to(Device::kCpu).to_f32(), round_bf16(want)), 0.0) << shape_to_string(shape);
  }
}

// Both directions bit-equal to the CPU (random values over many binades, exact ties included).
TEST(ElementwiseGpu, CastMatchesCpu) {
  for (const int64_t n : {1, 1000, 1 << 20}) {
    Tensor x = random_host({n}, 9, 1000.0f);
    for (int64_t i = 0; i < n; i += 7) x.data<float>()[i] = 1.0f + (i % 2 ? 3.0f : 1.0f) / 256;  // ties
    Tensor want = Tensor::empty({n}, DType::kBF16);
    ops::cast(x, want);
    Tensor got = Tensor::empty({n}, DType::kBF16).to(Device::kCuda);
    ops::cast(x.to(Device::kCuda), got);
    EXPECT_EQ(std::memcmp(got.to(Device::kCpu).raw_data(), want.raw_data(), want.nbytes()), 0) << n;
    Tensor wide_want = Tensor::empty({n}, DType::kF32), wide = poisoned_device({n}, DType::kF32);
    ops::cast(want, wide_want);
    ops::cast(got, wide);
    EXPECT_EQ(std::memcmp(wide.to(Device::kCpu).raw_data(), wide_want.raw_data(), wide_want.nbytes()), 0) << n;
  }
}

int signed_steps(uint8_t c) { return (c & 0x80) ? -(c & 0x7F) : (c & 0x7F); }

void expect_close_codes(const Tensor& got, const Tensor& want, const std::string& what) {
  const auto* a = got.data<uint8_t>();
  const auto* b = want.data<uint8_t>();
  const int64_t n = want.numel();
  int64_t off_by_one = 0, bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (a[i] == b[i]) continue;
    const bool nan = (a[i] & 0x7F) == 0x7F || (b[i] & 0x7F) == 0x7F;
    if (!nan && std::abs(signed_steps(a[i]) - signed_steps(b[i])) <= 1) {
      ++off_by_one;
    } else if (bad++ == 0) {
      ADD_FAILURE() << what << ": code " << int(a[i]) << " vs " << int(b[i]) << " at " << i;
    }
  }
  EXPECT_EQ(bad, 0) << what;
  EXPECT_LE(off_by_one, n / 100 + 1) << what << ": codes one step apart";
}

// gate and up as the two halves of one [m, 2n + pad] buffer (a fused gate|up GEMM output).
TEST(ElementwiseGpu, SiluMulQuantFp8MatchesSiluMulThenQuantiser) {
  uint32_t seed = 20;
  for (auto [m, n, pad] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 128, 0}, {7, 2048, 0}, {2048, 2048, 0}, {5, 384, 2}, {3, 256, 1}}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const std::string what = "m=" + std::to_string(m) + " n=" + std::to_string(n) + " pad=" + std::to_string(pad) +
                               " " + dtype_name(dt);
      const int64_t ld = 2 * n + pad;
      Tensor gu = as_dtype(random_host({m, ld}, ++seed, 2.0f), dt).to_f32();
      Tensor g = Tensor::empty({m, n}, DType::kF32), u = Tensor::empty({m, n}, DType::kF32);
      for (int64_t r = 0; r < m; ++r) {
        std::memcpy(g.data<float>() + r * n, gu.data<float>() + r * ld + pad, n * sizeof(float));
        std::memcpy(u.data<float>() + r * n, gu.data<float>() + r * ld + pad + n, n * sizeof(float));
      }
      Tensor y = Tensor::empty({m, n}, DType::kF32);
      ops::silu_mul(g, u, y);
      if (dt == DType::kBF16) y = round_bf16(y);
      Tensor q_ref = Tensor::empty({m, n}, DType::kF8E4M3);
      Tensor s_ref = Tensor::empty({n / 128, m}, DType::kF32);
      ops::quantize_fp8_per_token_group(y, q_ref, s_ref);

      Tensor gud = as_dtype(gu, dt).to(Device::kCuda);
      Tensor gd = gud.slice(1, pad, pad + n), ud = gud.slice(1, pad + n, pad + 2 * n);
      Tensor qd = poisoned_device({m, n}, DType::kF8E4M3);
      Tensor sd = poisoned_device({n / 128, m});
      ops::cuda::silu_mul_quant_fp8(gd, ud, qd, sd);
      expect_close_codes(qd.to(Device::kCpu), q_ref, what);
      Tensor s_got = sd.to(Device::kCpu);
      for (int64_t i = 0; i < s_ref.numel(); ++i) {
        const float a = s_got.data<float>()[i], b = s_ref.data<float>()[i];
        ASSERT_LE(std::abs(a - b), 1e-5f * std::abs(b)) << what << " scale " << i;
      }
    }
  }
}

TEST(ElementwiseGpu, DeviceDtypeMismatchRejected) {
  Tensor g = poisoned_device({2, 8}, DType::kBF16), u = poisoned_device({2, 8});
  Tensor out = poisoned_device({2, 8}, DType::kBF16);
  EXPECT_THROW(ops::silu_mul(g, u, out), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::gpu_test
