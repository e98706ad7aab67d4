// Helpers shared by the op tests: random tensors and weights, a plain double-precision dequantizer
// (independent of Weight::dequantize_rows) and a normwise relative error.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace pdserve::ops::testing {

inline Tensor rand_f32(const Shape& shape, std::mt19937_64& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::uniform_real_distribution<float> u(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = u(rng);
  return t;
}

// A [rows, cols] weight of `dtype` with values of magnitude ~`amp`. fp8 weights get random block
// scales, so every 128x128 block (partial edge blocks included) dequantizes differently.
inline Weight rand_weight(int64_t rows, int64_t cols, DType dtype, std::mt19937_64& rng, float amp = 1.0f) {
  Weight w;
  w.weight = Tensor::empty({rows, cols}, dtype);
  if (dtype == DType::kF8E4M3) {
    const int64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
    w.scale_inv = rand_f32({br, bc}, rng, 0.5f * amp / 64.0f, 2.0f * amp / 64.0f);
    std::uniform_real_distribution<float> u(-400.0f, 400.0f);
    for (int64_t i = 0; i < rows * cols; ++i) w.weight.data<uint8_t>()[i] = f32_to_fp8e4m3(u(rng));
  } else {
    Tensor f = rand_f32({rows, cols}, rng, -amp, amp);
    convert_from_f32(dtype, f.data<float>(), w.weight.raw_data(), static_cast<size_t>(rows * cols));
  }
  return w;
}

// Element (r, c) of a weight, dequantized directly in double.
inline double weight_at(const Weight& w, int64_t r, int64_t c) {
  const int64_t i = r * w.cols() + c;
  switch (w.weight.dtype()) {
    case DType::kF32: return w.weight.data<float>()[i];
    case DType::kBF16: return bf16_to_f32(w.weight.data<uint16_t>()[i]);
    case DType::kF16: return f16_to_f32(w.weight.data<uint16_t>()[i]);
    case DType::kF8E4M3:
      return static_cast<double>(fp8e4m3_to_f32(w.weight.data<uint8_t>()[i])) *
             w.scale_inv.data<float>()[(r / 128) * w.scale_inv.size(1) + c / 128];
    default: return NAN;
  }
}

inline std::vector<double> weight_to_double(const Weight& w) {
  std::vector<double> out(static_cast<size_t>(w.rows() * w.cols()));
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t c = 0; c < w.cols(); ++c) out[r * w.cols() + c] = weight_at(w, r, c);
  return out;
}

// max |got - ref| / max |ref|: elementwise relative error explodes near zeros, this does not.
inline double rel_err(const float* got, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(got[i]) - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return den > 0.0 ? num / den : num;
}

// A tensor that claims to live on the GPU (host memory behind it) to exercise device dispatch.
inline Tensor fake_cuda(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  auto buf = std::shared_ptr<char[]>(new char[std::max<size_t>(bytes, 1)]());
  auto storage = Storage::borrow(buf.get(), bytes, buf, Device::kCuda);
  return Tensor::from_storage(storage, 0, shape, dtype);
}

}  // namespace pdserve::ops::testing
