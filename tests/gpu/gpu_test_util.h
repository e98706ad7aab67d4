// Helpers for CUDA-vs-CPU op tests: random host tensors, poisoned device outputs, error norms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "tensor/tensor.h"

namespace pdserve::gpu_test {

inline Tensor random_host(const Shape& shape, uint32_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = n(rng);
  return t;
}

// A device output filled with NaN bit patterns, so an element the kernel forgets to write fails.
inline Tensor poisoned_device(const Shape& shape, DType dtype = DType::kF32) {
  Tensor h = Tensor::empty(shape, dtype);
  std::memset(h.raw_data(), 0xFF, h.nbytes());
  return h.to(Device::kCuda);
}

// max |a - b| / max |b| over all elements (NaN in `a` gives +inf).
inline double rel_max_err(const Tensor& a_host, const Tensor& b_host) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < b_host.numel(); ++i) {
    const double a = a_host.data<float>()[i], b = b_host.data<float>()[i];
    if (std::isnan(a)) return INFINITY;
    num = std::max(num, std::abs(a - b));
    den = std::max(den, std::abs(b));
  }
  return den > 0 ? num / den : num;
}

// ||a - b|| / ||b|| over n values (the logits bound of the whole-model tests).
inline double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace pdserve::gpu_test
