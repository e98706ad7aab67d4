// The CPU grouped expert products against a direct double-precision formula (the GPU versions are
// checked against these in tests/gpu/linear_gpu_test.cpp): the masked GEMV over f32 rows and over
// FP8 rows with the low-latency dispatch's per-row, per-128-column scales.
#include "ops/grouped_gemm.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <stdexcept>

#include "test_util.h"

namespace pdserve::ops {
namespace {

using testing::rand_f32;
using testing::rand_weight;
using testing::weight_at;

struct Case {
  int64_t groups, max_m, n, k;
  std::vector<int32_t> counts;
};

Tensor counts_tensor(const std::vector<int32_t>& c) {
  Tensor t = Tensor::empty({static_cast<int64_t>(c.size())}, DType::kI32);
  for (size_t i = 0; i < c.size(); ++i) t.data<int32_t>()[i] = c[i];
  return t;
}

// Rows r < clamp(count) of y must equal sum_k W_g[n, k] * x(g, r, k); rows past it stay as they
// were (NaN here): the GEMV writes only the rows it was given.
void expect_gemv(const Case& cs, const std::vector<Weight>& w, const Tensor& y,
                 const std::function<double(int64_t, int64_t, int64_t)>& x_at) {
  double num = 0, den = 0;
  for (int64_t g = 0; g < cs.groups; ++g) {
    const int64_t c = std::clamp<int64_t>(cs.counts[g], 0, cs.max_m);
    for (int64_t r = 0; r < cs.max_m; ++r)
      for (int64_t col = 0; col < cs.n; ++col) {
        const float got = y.data<float>()[(g * cs.max_m + r) * cs.n + col];
        if (r >= c) {
          ASSERT_TRUE(std::isnan(got)) << "group " << g << " row " << r << " past its count was written";
          continue;
        }
        double ref = 0;
        for (int64_t kk = 0; kk < cs.k; ++kk) ref += weight_at(w[g], col, kk) * x_at(g, r, kk);
        num = std::max(num, std::abs(got - ref));
        den = std::max(den, std::abs(ref));
      }
  }
  EXPECT_LT(num / std::max(den, 1e-30), 1e-5);
}

Tensor nan_filled(const Shape& shape) {
  Tensor y = Tensor::empty(shape, DType::kF32);
  for (int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  return y;
}

TEST(GroupedGemvMasked, F32RowsMatchDirectFormula) {
  std::mt19937_64 rng(11);
  const Case cs{3, 5, 40, 200, {5, 0, 2}};
  std::vector<Weight> w;
  for (int64_t g = 0; g < cs.groups; ++g) w.push_back(rand_weight(cs.n, cs.k, DType::kF8E4M3, rng));
  const Tensor x = rand_f32({cs.groups, cs.max_m, cs.k}, rng);
  Tensor y = nan_filled({cs.groups, cs.max_m, cs.n});
  grouped_gemv_masked(x, counts_tensor(cs.counts), w, Tensor(), y);
  expect_gemv(cs, w, y, [&](int64_t g, int64_t r, int64_t kk) {
    return static_cast<double>(x.data<float>()[(g * cs.max_m + r) * cs.k + kk]);
  });
}

// FP8 rows: x(g, r, k) = e4m3(q[g, r, k]) * scales[g, k / 128, r], K not a multiple of 128 (a
// partial last scale block), counts past max_m and negative clamped.
TEST(GroupedGemvMasked, Fp8RowsWithPerRowBlockScalesMatchDirectFormula) {
  for (DType wd : {DType::kF8E4M3, DType::kBF16}) {
    std::mt19937_64 rng(12);
    const Case cs{4, 6, 24, 320, {6, 9, -1, 3}};
    std::vector<Weight> w;
    for (int64_t g = 0; g < cs.groups; ++g) w.push_back(rand_weight(cs.n, cs.k, wd, rng));
    Tensor q = Tensor::empty({cs.groups, cs.max_m, cs.k}, DType::kF8E4M3);
    std::uniform_real_distribution<float> u(-448.0f, 448.0f);
    for (int64_t i = 0; i < q.numel(); ++i) q.data<uint8_t>()[i] = f32_to_fp8e4m3(u(rng));
    const Tensor scales = rand_f32({cs.groups, 3, cs.max_m}, rng, 1e-3f, 4e-3f);
    Tensor y = nan_filled({cs.groups, cs.max_m, cs.n});
    grouped_gemv_masked(q, counts_tensor(cs.counts), w, Tensor(), y, scales);
    expect_gemv(cs, w, y, [&](int64_t g, int64_t r, int64_t kk) {
      return static_cast<double>(fp8e4m3_to_f32(q.data<uint8_t>()[(g * cs.max_m + r) * cs.k + kk])) *
             scales.data<float>()[(g * 3 + kk / 128) * cs.max_m + r];
    });
  }
}

TEST(GroupedGemvMasked, RejectsFp8RowsWithoutOrWithMisshapedScales) {
  std::mt19937_64 rng(13);
  std::vector<Weight> w = {rand_weight(8, 256, DType::kBF16, rng), rand_weight(8, 256, DType::kBF16, rng)};
  const Tensor q = Tensor::empty({2, 4, 256}, DType::kF8E4M3), counts = counts_tensor({1, 1});
  Tensor y = nan_filled({2, 4, 8});
  EXPECT_THROW(grouped_gemv_masked(q, counts, w, Tensor(), y), std::invalid_argument);
  EXPECT_THROW(grouped_gemv_masked(q, counts, w, Tensor(), y, Tensor::empty({2, 4, 2}, DType::kF32)),
               std::invalid_argument);
  EXPECT_THROW(grouped_gemv_masked(q, counts, w, Tensor(), y, Tensor::empty({2, 2, 4}, DType::kBF16)),
               std::invalid_argument);
  // Scales given with f32 rows: the rows must be fp8.
  EXPECT_THROW(grouped_gemv_masked(Tensor::empty({2, 4, 256}, DType::kF32), counts, w, Tensor(), y,
                                   Tensor::empty({2, 2, 4}, DType::kF32)),
               std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::ops
