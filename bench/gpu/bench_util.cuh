// Helpers shared by the GPU benchmarks (each bench/gpu/*_bench.cu is its own program): inputs
// filled on the device from a hash of the index (fast, reproducible, no host upload of GBs), and
// timing by CUDA events, eagerly or as replays of a captured graph.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

#include "ops/cuda/cuda_common.h"
#include "tensor/tensor.h"

namespace pdserve::bench {

__device__ inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

namespace {  // each benchmark is one translation unit
// kind 0: f32 uniform in [lo, hi); 1: the same in bf16; 2: any e4m3 byte but NaN.
__global__ void fill_kernel(void* p, size_t n, int kind, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = mix64(seed * 0x100000001B3ULL + i);
    const float u = lo + (hi - lo) * static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
    if (kind == 0) {
      static_cast<float*>(p)[i] = u;
    } else if (kind == 1) {
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(u);
    } else {
      const uint8_t b = static_cast<uint8_t>(h);
      static_cast<uint8_t*>(p)[i] = (b & 0x7F) == 0x7F ? 0 : b;  // any e4m3 value but NaN
    }
  }
}
}  // namespace

// Fills an f32, bf16 or fp8 e4m3 device tensor on the current stream.
inline void fill(Tensor& t, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16 && t.dtype() != DType::kF8E4M3)
    throw std::invalid_argument("bench fill: f32, bf16 or fp8 e4m3 tensors only");
  const int kind = t.dtype() == DType::kF32 ? 0 : t.dtype() == DType::kBF16 ? 1 : 2;
  if (t.numel() == 0) return;
  fill_kernel<<<2048, 256, 0, ops::cuda::current_stream()>>>(t.raw_data(), static_cast<size_t>(t.numel()), kind, seed, lo, hi);
  ops::cuda::check_launch("fill");
}

inline Tensor device_tensor(const Shape& shape, DType dt, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(shape, dt, Device::kCuda);
  fill(t, seed, lo, hi);
  return t;
}

// An [n, k] weight: fp8 e4m3 with 128x128 block scales (scaled so outputs stay O(1)), or bf16.
inline Weight device_weight(int64_t n, int64_t k, DType dt, uint64_t seed) {
  Weight w;
  w.weight = device_tensor({n, k}, dt, seed, -0.05f, 0.05f);
  if (dt == DType::kF8E4M3) w.scale_inv = device_tensor({(n + 127) / 128, (k + 127) / 128}, DType::kF32, seed + 1, 1e-4f, 2e-4f);
  return w;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    ops::cuda::check(cudaEventCreate(&a), "cudaEventCreate");
    ops::cuda::check(cudaEventCreate(&b), "cudaEventCreate");
  }
  ~Events() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  float ms() const {
    float t = 0;
    ops::cuda::check(cudaEventSynchronize(b), "cudaEventSynchronize");
    ops::cuda::check(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime");
    return t;
  }
};

constexpr int kSamples = 15;

// Milliseconds per call of `f`, launched eagerly from the host (events around each call; median).
inline double time_eager(cudaStream_t s, const std::function<void()>& f, int samples = kSamples) {
  Events ev;
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < samples; ++i) {
    ops::cuda::check(cudaEventRecord(ev.a, s), "cudaEventRecord");
    f();
    ops::cuda::check(cudaEventRecord(ev.b, s), "cudaEventRecord");
    t.push_back(ev.ms());
  }
  return median(t);
}

// Milliseconds per call of `f`, replayed from a CUDA graph of `reps` calls (median of `samples`
// replays after two discarded). The first, eager call creates plans and scratch, as a model
// runner's warm-up does before capture.
inline double time_graph(cudaStream_t s, int reps, const std::function<void()>& f, int samples = kSamples) {
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the setup's fills and copies
  f();
  ops::cuda::check(cudaStreamSynchronize(s), "warm-up");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ops::cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    for (int i = 0; i < reps; ++i) f();
  } catch (...) {
    cudaStreamEndCapture(s, &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    throw;
  }
  ops::cuda::check(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
  ops::cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  Events ev;
  std::vector<double> t;
  for (int i = 0; i < samples + 2; ++i) {
    ops::cuda::check(cudaEventRecord(ev.a, s), "cudaEventRecord");
    ops::cuda::check(cudaGraphLaunch(exec, s), "cudaGraphLaunch");
    ops::cuda::check(cudaEventRecord(ev.b, s), "cudaEventRecord");
    const double ms = ev.ms();
    if (i >= 2) t.push_back(ms / reps);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return median(t);
}

// Device-to-device copy of 1 GiB: read + write TB/s, the bandwidth ceiling of memory-bound rows.
inline double copy_tbs(cudaStream_t s) {
  const size_t bytes = size_t{1} << 30;
  Tensor src = Tensor::empty({static_cast<int64_t>(bytes)}, DType::kF8E4M3, Device::kCuda);
  Tensor dst = Tensor::empty({static_cast<int64_t>(bytes)}, DType::kF8E4M3, Device::kCuda);
  ops::cuda::check(cudaMemsetAsync(src.raw_data(), 1, bytes, s), "cudaMemsetAsync");
  const double ms = time_eager(s, [&] {
    ops::cuda::check(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
  });
  return 2.0 * bytes / (ms * 1e-3) / 1e12;
}

}  // namespace pdserve::bench
