#include "ops/linear.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <tuple>

#include "test_util.h"

namespace pdserve::ops {
namespace {

using testing::rand_f32;
using testing::rand_weight;
using testing::rel_err;

std::vector<double> ref_linear(const Tensor& x, const Weight& w) {
  const int64_t m = x.size(0), k = x.size(1), n = w.rows();
  const std::vector<double> wd = testing::weight_to_double(w);
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t c = 0; c < k; ++c) acc += static_cast<double>(x.data<float>()[i * k + c]) * wd[j * k + c];
      y[i * n + j] = acc;
    }
  return y;
}

class LinearDtypes : public ::testing::TestWithParam<DType> {};

TEST_P(LinearDtypes, MatchesDirectFormula) {
  // (m, n, k): single elements, non-multiples of 128 (partial fp8 blocks in both dims), several
  // row tiles (n > 512 at small k; k = 4100 gives 128-row tiles with a partial last tile).
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {
      {1, 1, 1}, {3, 200, 130}, {5, 300, 257}, {17, 700, 384}, {2, 300, 4100}, {1, 129, 7}};
  std::mt19937_64 rng(1234);
  for (auto [m, n, k] : shapes) {
    Weight w = rand_weight(n, k, GetParam(), rng);
    Tensor x = rand_f32({m, k}, rng);
    Tensor y = Tensor::empty({m, n}, DType::kF32);
    linear(x, w, y);
    EXPECT_LT(rel_err(y.data<float>(), ref_linear(x, w)), 1e-5) << "m=" << m << " n=" << n << " k=" << k;
  }
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, LinearDtypes,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(LinearAdd, AddsTheProductToY) {
  std::mt19937_64 rng(77);
  const int64_t m = 5, n = 300, k = 257;
  Weight w = rand_weight(n, k, DType::kBF16, rng);
  Tensor x = rand_f32({m, k}, rng), y = rand_f32({m, n}, rng);
  const Tensor before = y.clone();
  linear_add(x, w, y);
  std::vector<double> want = ref_linear(x, w);
  for (int64_t i = 0; i < m * n; ++i) want[static_cast<size_t>(i)] += before.data<float>()[i];
  EXPECT_LT(rel_err(y.data<float>(), want), 1e-5);
  Tensor y_bad = Tensor::empty({m, n + 1}, DType::kF32);
  EXPECT_THROW(linear_add(x, w, y_bad), std::invalid_argument);
}

TEST(Linear, EmptyBatchIsANoOp) {
  std::mt19937_64 rng(1);
  Weight w = rand_weight(10, 20, DType::kBF16, rng);
  Tensor x = Tensor::empty({0, 20}, DType::kF32);
  Tensor y = Tensor::empty({0, 10}, DType::kF32);
  EXPECT_NO_THROW(linear(x, w, y));
}

TEST(Linear, RejectsBadArguments) {
  std::mt19937_64 rng(2);
  Weight w = rand_weight(10, 20, DType::kF32, rng);
  Tensor x = rand_f32({3, 20}, rng);
  Tensor y = Tensor::empty({3, 10}, DType::kF32);
  Tensor bad_x = rand_f32({3, 21}, rng);
  EXPECT_THROW(linear(bad_x, w, y), std::invalid_argument);
  Tensor bad_y = Tensor::empty({3, 11}, DType::kF32);
  EXPECT_THROW(linear(x, w, bad_y), std::invalid_argument);
  Tensor x_bf16 = Tensor::empty({3, 20}, DType::kBF16);
  EXPECT_THROW(linear(x_bf16, w, y), std::invalid_argument);
  Tensor strided = rand_f32({3, 40}, rng).slice(1, 0, 20);
  EXPECT_THROW(linear(strided, w, y), std::invalid_argument);

  Weight fp8 = rand_weight(10, 20, DType::kF8E4M3, rng);
  fp8.scale_inv = Tensor();
  EXPECT_THROW(linear(x, fp8, y), std::invalid_argument);
  fp8.scale_inv = Tensor::empty({2, 1}, DType::kF32);  // should be [1, 1]
  EXPECT_THROW(linear(x, fp8, y), std::invalid_argument);
  try {
    linear(bad_x, w, y);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 21]"), std::string::npos) << e.what();
  }
}

TEST(Linear, DeviceTensorsHaveNoCudaPath) {
  Weight w;
  w.weight = testing::fake_cuda({10, 20}, DType::kBF16);
  Tensor x = testing::fake_cuda({3, 20}, DType::kF32);
  Tensor y = testing::fake_cuda({3, 10}, DType::kF32);
  EXPECT_THROW(linear(x, w, y), std::runtime_error);
  Tensor host_y = Tensor::empty({3, 10}, DType::kF32);
  EXPECT_THROW(linear(x, w, host_y), std::invalid_argument);  // mixed devices
}

std::vector<double> ref_per_head(const Tensor& a, const Tensor& b, bool transpose_b) {
  const int64_t t = a.size(0), h = a.size(1), p = a.size(2);
  const int64_t q = transpose_b ? b.size(1) : b.size(2);
  std::vector<double> out(static_cast<size_t>(t * h * q));
  for (int64_t i = 0; i < t; ++i)
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t j = 0; j < q; ++j) {
        double acc = 0.0;
        for (int64_t c = 0; c < p; ++c) {
          const float av = a.data<float>()[i * a.strides()[0] + hh * a.strides()[1] + c];
          const float bv = transpose_b ? b.data<float>()[(hh * q + j) * p + c] : b.data<float>()[(hh * p + c) * q + j];
          acc += static_cast<double>(av) * bv;
        }
        out[(i * h + hh) * q + j] = acc;
      }
  return out;
}

TEST(PerHeadMatmul, MatchesDirectFormulaIncludingStridedInput) {
  std::mt19937_64 rng(77);
  for (bool transpose_b : {false, true}) {
    for (auto [t, h, p, q] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
             {1, 1, 1, 1}, {5, 3, 16, 40}, {7, 4, 130, 33}, {1, 8, 128, 512}}) {
      // a is the first p columns of a wider [T, H, p + 9] buffer, as q_nope is a view of q.
      Tensor a = rand_f32({t, h, p + 9}, rng).slice(2, 0, p);
      Tensor b = transpose_b ? rand_f32({h, q, p}, rng) : rand_f32({h, p, q}, rng);
      Tensor out = Tensor::empty({t, h, q}, DType::kF32);
      per_head_matmul(a, b, transpose_b, out);
      EXPECT_LT(rel_err(out.data<float>(), ref_per_head(a, b, transpose_b)), 1e-5)
          << "T=" << t << " H=" << h << " p=" << p << " q=" << q << " transpose_b=" << transpose_b;
    }
  }
}

TEST(PerHeadMatmul, RejectsMismatchedShapes) {
  std::mt19937_64 rng(3);
  Tensor a = rand_f32({2, 3, 4}, rng);
  Tensor b = rand_f32({3, 4, 5}, rng);
  Tensor out = Tensor::empty({2, 3, 5}, DType::kF32);
  EXPECT_NO_THROW(per_head_matmul(a, b, false, out));
  EXPECT_THROW(per_head_matmul(a, b, true, out), std::invalid_argument);  // b^T would be [5, 4]
  Tensor b_heads = rand_f32({2, 4, 5}, rng);
  EXPECT_THROW(per_head_matmul(a, b_heads, false, out), std::invalid_argument);
  Tensor bad_out = Tensor::empty({2, 3, 6}, DType::kF32);
  EXPECT_THROW(per_head_matmul(a, b, false, bad_out), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::ops
