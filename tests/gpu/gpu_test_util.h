// Helpers for CUDA-vs-CPU op tests: random host tensors, poisoned device outputs, error norms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tensor/dtype.h"
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

// Fast uniform [-1, 1) (weights reach tens of millions of elements; std::normal_distribution is too
// slow), and 64 raw bits per step.
struct Lcg {
  uint64_t s;
  uint64_t next64() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return s;
  }
  float next() { return static_cast<float>(static_cast<double>(next64() >> 40) / 8388608.0 - 1.0); }
};

// [rows, cols] f32 with a different magnitude in every 128x128 block (0.5 .. 2.5), so a scale
// applied to the wrong block shows.
inline Tensor master_weight(int64_t rows, int64_t cols, uint64_t seed) {
  Tensor w = Tensor::empty({rows, cols}, DType::kF32);
  Lcg rng{seed};
  float* p = w.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] = rng.next() * (0.5f + 0.5f * static_cast<float>((r / 128 * 7 + c / 128 * 3) % 5));
  return w;
}

// DeepSeek's weight quantization: per 128x128 block, scale_inv = amax / 448, q = e4m3(w / s).
inline Weight to_fp8_weight(const Tensor& w) {
  const int64_t rows = w.size(0), cols = w.size(1), br = (rows + 127) / 128, bc = (cols + 127) / 128;
  Weight out{Tensor::empty({rows, cols}, DType::kF8E4M3), Tensor::empty({br, bc}, DType::kF32)};
  const float* src = w.data<float>();
  uint8_t* q = out.weight.data<uint8_t>();
  float* s = out.scale_inv.data<float>();
  for (int64_t bi = 0; bi < br; ++bi)
    for (int64_t bj = 0; bj < bc; ++bj) {
      const int64_t r1 = std::min(rows, bi * 128 + 128), c1 = std::min(cols, bj * 128 + 128);
      float amax = 0.0f;
      for (int64_t r = bi * 128; r < r1; ++r)
        for (int64_t c = bj * 128; c < c1; ++c) amax = std::max(amax, std::fabs(src[r * cols + c]));
      const float sc = std::max(amax, 1e-12f) / kFp8E4M3Max;
      s[bi * bc + bj] = sc;
      for (int64_t r = bi * 128; r < r1; ++r)
        for (int64_t c = bj * 128; c < c1; ++c) q[r * cols + c] = f32_to_fp8e4m3(src[r * cols + c] / sc);
    }
  return out;
}

// tiny-deepseek-v3 with DeepSeek's FP8 block quantization (dummy weights) and a 128-wide latent,
// so that every FP8 GEMM's K is a multiple of 128: the routed experts then run the FP8 paths (the
// masked kernels over the received rows) that the real model runs. Written once per process into
// the temp directory; returns that directory.
inline std::string tiny_fp8_dir() {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "pdserve-tiny-fp8";
  std::filesystem::create_directories(dir);
  std::ifstream in(std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3/config.json");
  nlohmann::json c = nlohmann::json::parse(in);
  c["kv_lora_rank"] = 128;
  c["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                              {"weight_block_size", {128, 128}}};
  std::ofstream(dir / "config.json") << c.dump(2);
  return dir.string();
}

}  // namespace pdserve::gpu_test
