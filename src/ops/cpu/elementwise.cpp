#include "ops/cpu/elementwise.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace pdserve::ops::cpu {

namespace {

int64_t id_at(const Tensor& ids, int64_t i) {
  const int64_t off = i * ids.strides()[0];
  return ids.dtype() == DType::kI64 ? ids.data<int64_t>()[off] : ids.data<int32_t>()[off];
}

}  // namespace

void embedding(const Tensor& ids, const Weight& table, Tensor& out) {
  const int64_t n = ids.size(0), vocab = table.rows(), hidden = table.cols();
  // Validate every id before writing anything, so a bad batch leaves `out` untouched.
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = id_at(ids, i);
    if (id < 0 || id >= vocab)
      throw std::out_of_range("embedding: id " + std::to_string(id) + " at position " + std::to_string(i) +
                              " is outside the table of " + std::to_string(vocab) + " rows");
  }
  float* dst = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = id_at(ids, i);
    table.dequantize_rows(id, id + 1, dst + i * hidden);
  }
}

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const int64_t m = x.size(0), d = x.size(1);
  thread_local std::vector<float> w;
  w.resize(static_cast<size_t>(d));
  if (weight.dtype() == DType::kF32 && weight.is_contiguous()) {
    const float* src = weight.data<float>();
    w.assign(src, src + d);
  } else {
    Tensor wc = weight.clone();
    convert_to_f32(weight.dtype(), wc.raw_data(), w.data(), static_cast<size_t>(d));
  }
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x.data<float>() + i * x.strides()[0];
    float* yr = out.data<float>() + i * out.strides()[0];
    // The mean of squares is accumulated in double (then rounded to f32), which is at least as
    // accurate as torch's f32 reduction; the rest follows HF's f32 rounding order exactly.
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const float var = static_cast<float>(ss / static_cast<double>(d));
    const float r = 1.0f / std::sqrt(var + eps);
    for (int64_t j = 0; j < d; ++j) yr[j] = w[j] * (xr[j] * r);
  }
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  // [m, n] with rows of gate and up possibly strided (the halves of a fused gate|up output).
  const int64_t m = gate.size(0), n = gate.size(1), ldg = gate.strides()[0], ldu = up.strides()[0];
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  float* o = out.data<float>();
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < n; ++i) {
      const float gv = g[r * ldg + i];
      o[r * n + i] = gv / (1.0f + std::exp(-gv)) * u[r * ldu + i];
    }
}

void add_inplace(Tensor& y, const Tensor& x) {
  const int64_t n = y.numel();
  float* yp = y.data<float>();
  const float* xp = x.data<float>();
  for (int64_t i = 0; i < n; ++i) yp[i] += xp[i];
}

}  // namespace pdserve::ops::cpu
