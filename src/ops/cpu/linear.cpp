#include "ops/cpu/linear.h"
#include "ops/cpu/gemv.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace pdserve::ops::cpu {

namespace {

// Rows of W dequantized per sgemm: large enough that the GEMM dominates the dequant loop, small
// enough (a few MiB) that even 18432-wide rows never need a full f32 copy of the weight.
int64_t tile_rows(int64_t k) {
  constexpr int64_t kTargetFloats = int64_t{1} << 20;
  int64_t r = kTargetFloats / std::max<int64_t>(k, 1);
  r = std::clamp<int64_t>(r, 128, 512);
  return r / Weight::kBlock * Weight::kBlock;
}

void sgemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
              1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), 0.0f, c, static_cast<int>(ldc));
}

}  // namespace

void linear(const float* x, int64_t ldx, int64_t m, const Weight& w, float* y, int64_t ldy) {
  const int64_t n = w.rows(), k = w.cols();
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::memset(y + i * ldy, 0, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  // BLAS rejects a leading dimension below the row length even when only one row is read.
  ldx = std::max(ldx, k);
  if (w.weight.dtype() == DType::kF32) {
    sgemm_nt(m, n, k, x, ldx, w.weight.data<float>(), k, y, ldy);
    return;
  }
  if (m <= kSmallM && small_m_linear(x, ldx, m, w, y, ldy)) return;
  thread_local std::vector<float> scratch;
  const int64_t rows = std::min(n, tile_rows(k));
  scratch.resize(static_cast<size_t>(rows * k));
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    const int64_t r1 = std::min(n, r0 + rows);
    w.dequantize_rows(r0, r1, scratch.data());
    sgemm_nt(m, r1 - r0, k, x, ldx, scratch.data(), k, y + r0, ldy);
  }
}

void linear(const Tensor& x, const Weight& w, Tensor& y) {
  linear(x.data<float>(), x.size(1), x.size(0), w, y.data<float>(), y.size(1));
}

void per_head_matmul(const Tensor& a, const Tensor& b, bool transpose_b, Tensor& out) {
  const int64_t t = a.size(0), h = a.size(1), p = a.size(2);
  const int64_t q = out.size(2);
  if (t == 0 || h == 0 || q == 0) return;
  if (p == 0) {
    std::memset(out.raw_data(), 0, out.nbytes());
    return;
  }
  const int64_t lda = std::max(a.strides()[0], p);
  const int64_t ldb = transpose_b ? p : q;
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  float* op = out.data<float>();
  for (int64_t hh = 0; hh < h; ++hh) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(t),
                static_cast<int>(q), static_cast<int>(p), 1.0f, ap + hh * a.strides()[1], static_cast<int>(lda),
                bp + hh * p * q, static_cast<int>(ldb), 0.0f, op + hh * q, static_cast<int>(h * q));
  }
}

}  // namespace pdserve::ops::cpu
