// CPU linear layer on stored weights (bf16, fp8 + 128x128 block scales) against the baseline of
// the same product on an f32 copy of the weight (plain OpenBLAS sgemm, no dequantization).
// Prints GFLOP/s for decode-like (few rows) and prefill-like (many rows) shapes of DeepSeek-V3.
//
//   build/bench/cpu_linear_bench [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ops/linear.h"

using namespace pdserve;

namespace {

Weight random_weight(int64_t n, int64_t k, DType dtype, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> f(static_cast<size_t>(n * k));
  for (auto& v : f) v = u(rng) * 0.05f;
  Weight w{Tensor::empty({n, k}, dtype), Tensor()};
  if (dtype == DType::kF8E4M3) {
    const int64_t B = Weight::kBlock;
    w.scale_inv = Tensor::empty({(n + B - 1) / B, (k + B - 1) / B}, DType::kF32);
    for (int64_t i = 0; i < w.scale_inv.numel(); ++i) w.scale_inv.data<float>()[i] = 0.05f / kFp8E4M3Max;
    for (auto& v : f) v /= 0.05f / kFp8E4M3Max;
  }
  convert_from_f32(dtype, f.data(), w.weight.raw_data(), f.size());
  return w;
}

// Median seconds of `reps` runs after one warm-up.
template <typename F>
double time_median(int reps, F&& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  struct Shape {
    const char* what;
    int64_t n, k;
  };
  const std::vector<Shape> shapes = {{"q_b_proj (V3)", 24576, 1536}, {"expert gate (V3)", 2048, 7168}, {"o_proj (V3)", 7168, 16384}};
  const std::vector<int64_t> ms = quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 8, 64, 512};
  std::mt19937 rng(1);
  std::printf("CPU linear y = x W^T, f32 compute, %s\n", quick ? "quick" : "full");
  std::printf("%-18s %5s %9s %12s %12s %12s\n", "weight", "m", "dtype", "ours GF/s", "f32 GF/s", "ours/f32");
  for (const auto& s : shapes) {
    Weight f32 = random_weight(s.n, s.k, DType::kF32, rng);
    for (DType dt : {DType::kBF16, DType::kF8E4M3}) {
      Weight w = random_weight(s.n, s.k, dt, rng);
      for (int64_t m : ms) {
        Tensor x = Tensor::empty({m, s.k}, DType::kF32), y = Tensor::empty({m, s.n}, DType::kF32);
        for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = 0.001f * static_cast<float>(i % 97);
        const int reps = quick ? 3 : 7;
        const double ours = time_median(reps, [&] { ops::linear(x, w, y); });
        const double base = time_median(reps, [&] { ops::linear(x, f32, y); });
        const double flop = 2.0 * static_cast<double>(m) * s.n * s.k;
        std::printf("%-18s %5lld %9s %12.1f %12.1f %12.2f\n", s.what, static_cast<long long>(m), dtype_name(dt),
                    flop / ours / 1e9, flop / base / 1e9, base / ours);
      }
    }
  }
  return 0;
}
