#include "ops/elementwise.h"

#include <algorithm>
#include <cstring>
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "test_util.h"

namespace pdserve::ops {
namespace {

using testing::rand_f32;
using testing::rand_weight;
using testing::rel_err;

Tensor ids_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::kI32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

TEST(Embedding, CopiesDequantizedRowsExactly) {
  std::mt19937_64 rng(5);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    // 300 x 200: the last fp8 block in each dimension is partial.
    Weight table = rand_weight(300, 200, dt, rng);
    const std::vector<int32_t> ids = {0, 299, 128, 127, 5, 5, 256, 200};
    Tensor out = Tensor::empty({static_cast<int64_t>(ids.size()), 200}, DType::kF32);
    embedding(ids_tensor(ids), table, out);
    for (size_t i = 0; i < ids.size(); ++i)
      for (int64_t c = 0; c < 200; ++c)
        // Each value is one exact product rounded once, so it must match bit for bit.
        ASSERT_EQ(out.data<float>()[i * 200 + c], static_cast<float>(testing::weight_at(table, ids[i], c)))
            << dtype_name(dt) << " row " << ids[i] << " col " << c;
  }
}

TEST(Embedding, OutOfRangeIdThrows) {
  std::mt19937_64 rng(6);
  Weight table = rand_weight(10, 8, DType::kBF16, rng);
  Tensor out = Tensor::empty({2, 8}, DType::kF32);
  EXPECT_THROW(embedding(ids_tensor({3, 10}), table, out), std::out_of_range);
  EXPECT_THROW(embedding(ids_tensor({-1, 0}), table, out), std::out_of_range);
  Tensor bad_out = Tensor::empty({2, 9}, DType::kF32);
  EXPECT_THROW(embedding(ids_tensor({1, 2}), table, bad_out), std::invalid_argument);
}

std::vector<double> ref_rms_norm(const Tensor& x, const std::vector<double>& w, double eps) {
  const int64_t m = x.size(0), d = x.size(1);
  std::vector<double> y(static_cast<size_t>(m * d));
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x.data<float>() + i * x.strides()[0];
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (int64_t j = 0; j < d; ++j) y[i * d + j] = xr[j] * r * w[j];
  }
  return y;
}

TEST(RmsNorm, MatchesDirectFormula) {
  std::mt19937_64 rng(7);
  for (int64_t d : {1, 7, 512, 1000}) {
    for (DType wdt : {DType::kF32, DType::kBF16, DType::kF16}) {
      const int64_t m = 5;
      Tensor wf = rand_f32({d}, rng, 0.5f, 1.5f);
      Tensor w = Tensor::empty({d}, wdt);
      convert_from_f32(wdt, wf.data<float>(), w.raw_data(), static_cast<size_t>(d));
      std::vector<double> wd(static_cast<size_t>(d));
      convert_to_f32(wdt, w.raw_data(), wf.data<float>(), static_cast<size_t>(d));
      for (int64_t j = 0; j < d; ++j) wd[j] = wf.data<float>()[j];
      // Rows of x are strided: x is the first d columns of a wider buffer.
      Tensor x = rand_f32({m, d + 3}, rng, -3.0f, 3.0f).slice(1, 0, d);
      Tensor out = Tensor::empty({m, d}, DType::kF32);
      const float eps = 1e-6f;
      rms_norm(x, w, eps, out);
      EXPECT_LT(rel_err(out.data<float>(), ref_rms_norm(x, wd, eps)), 1e-6) << "d=" << d << " " << dtype_name(wdt);
    }
  }
}

TEST(RmsNorm, OutputMayAliasInput) {
  std::mt19937_64 rng(8);
  Tensor x = rand_f32({4, 96}, rng);
  Tensor w = rand_f32({96}, rng);
  std::vector<double> wd(w.data<float>(), w.data<float>() + 96);
  const std::vector<double> ref = ref_rms_norm(x, wd, 1e-5);
  rms_norm(x, w, 1e-5f, x);
  EXPECT_LT(rel_err(x.data<float>(), ref), 1e-6);
}

TEST(RmsNorm, RejectsMismatchedWeight) {
  std::mt19937_64 rng(9);
  Tensor x = rand_f32({2, 16}, rng);
  Tensor out = Tensor::empty({2, 16}, DType::kF32);
  EXPECT_THROW(rms_norm(x, rand_f32({15}, rng), 1e-6f, out), std::invalid_argument);
  EXPECT_THROW(rms_norm(x, Tensor::empty({16}, DType::kI32), 1e-6f, out), std::invalid_argument);
  Tensor bad_out = Tensor::empty({3, 16}, DType::kF32);
  EXPECT_THROW(rms_norm(x, rand_f32({16}, rng), 1e-6f, bad_out), std::invalid_argument);
}

TEST(SiluMul, MatchesDirectFormulaAndMayAliasGate) {
  std::mt19937_64 rng(10);
  Tensor gate = rand_f32({7, 333}, rng, -8.0f, 8.0f);
  Tensor up = rand_f32({7, 333}, rng, -2.0f, 2.0f);
  std::vector<double> ref(static_cast<size_t>(gate.numel()));
  for (int64_t i = 0; i < gate.numel(); ++i) {
    const double g = gate.data<float>()[i];
    ref[i] = g / (1.0 + std::exp(-g)) * up.data<float>()[i];
  }
  Tensor out = Tensor::empty({7, 333}, DType::kF32);
  silu_mul(gate, up, out);
  EXPECT_LT(rel_err(out.data<float>(), ref), 1e-6);
  silu_mul(gate, up, gate);
  EXPECT_LT(rel_err(gate.data<float>(), ref), 1e-6);
  EXPECT_THROW(silu_mul(gate, rand_f32({7, 334}, rng), out), std::invalid_argument);
}

// A host f32 tensor of zeros.
Tensor host_zeros(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

// The two halves of one fused gate|up output [m, 2n]: strided rows give what the contiguous copies give.
TEST(SiluMul, TakesTheHalvesOfAFusedGateUpOutput) {
  std::mt19937_64 rng(13);
  const int64_t m = 5, n = 37;
  Tensor fused = rand_f32({m, 2 * n}, rng, -8.0f, 8.0f);
  Tensor gate = fused.slice(1, 0, n), up = fused.slice(1, n, 2 * n);
  ASSERT_FALSE(gate.is_contiguous());
  Tensor want = Tensor::empty({m, n}, DType::kF32), got = Tensor::empty({m, n}, DType::kF32);
  silu_mul(gate.clone(), up.clone(), want);
  silu_mul(gate, up, got);
  for (int64_t i = 0; i < m * n; ++i) ASSERT_EQ(got.data<float>()[i], want.data<float>()[i]) << i;
  // Masked: [G, M, 2n] halves.
  const int64_t G = 3, M = 4;
  Tensor fused3 = rand_f32({G, M, 2 * n}, rng, -8.0f, 8.0f);
  Tensor counts = Tensor::empty({G}, DType::kI32);
  const int32_t c[G] = {0, 2, 4};
  std::memcpy(counts.data<int32_t>(), c, sizeof c);
  Tensor want3 = host_zeros({G, M, n}), got3 = host_zeros({G, M, n});
  silu_mul_masked(fused3.slice(2, 0, n).clone(), fused3.slice(2, n, 2 * n).clone(), counts, want3);
  silu_mul_masked(fused3.slice(2, 0, n), fused3.slice(2, n, 2 * n), counts, got3);
  for (int64_t i = 0; i < G * M * n; ++i) ASSERT_EQ(got3.data<float>()[i], want3.data<float>()[i]) << i;
  // out laid over a strided gate would be overwritten before it is read: refused.
  EXPECT_THROW(silu_mul(gate, up, gate), std::invalid_argument);
}

TEST(SiluMulMasked, ComputesTheCountedRowsAndLeavesTheRest) {
  std::mt19937_64 rng(12);
  const int64_t G = 4, M = 5, n = 37;
  Tensor gate = rand_f32({G, M, n}, rng, -8.0f, 8.0f), up = rand_f32({G, M, n}, rng, -2.0f, 2.0f);
  Tensor counts = Tensor::empty({G}, DType::kI32);
  const int32_t c[G] = {0, 3, 5, 9};  // none, some, all, above M (clamped)
  std::memcpy(counts.data<int32_t>(), c, sizeof c);
  Tensor full = Tensor::empty({G, M, n}, DType::kF32);
  Tensor full_rows = full.reshape({G * M, n});
  silu_mul(gate.reshape({G * M, n}), up.reshape({G * M, n}), full_rows);
  Tensor out = rand_f32({G, M, n}, rng, 100.0f, 101.0f);  // sentinel values outside silu's range here
  const Tensor before = out.clone();
  silu_mul_masked(gate, up, counts, out);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0; r < M; ++r)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = (g * M + r) * n + j;
        const float want = r < std::min<int64_t>(c[g], M) ? full.data<float>()[i] : before.data<float>()[i];
        ASSERT_EQ(out.data<float>()[i], want) << "group " << g << " row " << r << " col " << j;
      }
  Tensor two_d = Tensor::empty({M, n}, DType::kF32);
  EXPECT_THROW(silu_mul_masked(two_d, two_d, counts, two_d), std::invalid_argument);
  Tensor short_counts = Tensor::empty({G - 1}, DType::kI32);
  EXPECT_THROW(silu_mul_masked(gate, up, short_counts, out), std::invalid_argument);
}

TEST(AddInplace, AddsElementwise) {
  std::mt19937_64 rng(11);
  Tensor y = rand_f32({3, 129}, rng);
  Tensor x = rand_f32({3, 129}, rng);
  std::vector<double> ref(static_cast<size_t>(y.numel()));
  for (int64_t i = 0; i < y.numel(); ++i) ref[i] = static_cast<double>(y.data<float>()[i]) + x.data<float>()[i];
  add_inplace(y, x);
  EXPECT_LT(rel_err(y.data<float>(), ref), 1e-7);
  Tensor bad = rand_f32({3, 128}, rng);
  EXPECT_THROW(add_inplace(y, bad), std::invalid_argument);
}

// f32 -> bf16 rounds to nearest even (ties: 1 + 2^-8 is halfway between bf16 neighbours 1 and
// 1 + 2^-7 and goes to the even 1; 1 + 3 * 2^-8 goes up), and bf16 -> f32 is exact.
TEST(Cast, RoundsToNearestEvenAndWidensExactly) {
  Tensor x = Tensor::empty({5}, DType::kF32);
  const float v[5] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 0.0f, 3.0e38f};
  std::copy(v, v + 5, x.data<float>());
  Tensor b = Tensor::empty({5}, DType::kBF16);
  cast(x, b);
  const std::vector<uint16_t> want = {0x3F80, 0x3F82, 0xC020, 0x0000, f32_to_bf16(3.0e38f)};
  EXPECT_EQ(std::vector<uint16_t>(b.data<uint16_t>(), b.data<uint16_t>() + 5), want);
  Tensor back = Tensor::empty({5}, DType::kF32);
  cast(b, back);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(back.data<float>()[i], bf16_to_f32(want[static_cast<size_t>(i)])) << i;
  Tensor wrong = Tensor::empty({4}, DType::kBF16);
  EXPECT_THROW(cast(x, wrong), std::invalid_argument);
  Tensor same = Tensor::empty({5}, DType::kF32);
  EXPECT_THROW(cast(x, same), std::invalid_argument);
}

// Device tensors never reach the CPU code: without CUDA in the build the op says so; with CUDA but
// no GPU (this machine) the CUDA path reports the runtime's error. Either way a runtime_error, and
// the (fake) device pointers are never dereferenced on the host.
TEST(Elementwise, DeviceTensorsNeverRunOnTheCpuPath) {
  Tensor y = testing::fake_cuda({2, 4}, DType::kF32);
  Tensor x = testing::fake_cuda({2, 4}, DType::kF32);
  EXPECT_THROW(add_inplace(y, x), std::runtime_error);
  Tensor w = testing::fake_cuda({4}, DType::kBF16);
  EXPECT_THROW(rms_norm(x, w, 1e-6f, y), std::runtime_error);
  try {
    silu_mul(x, x, y);
    FAIL() << "expected a throw";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("silu_mul: ", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace pdserve::ops
