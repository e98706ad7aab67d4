#include "ops/cuda/cuda_common.h"
#include "ops/cuda/elementwise.h"

namespace pdserve::ops::cuda {

namespace {

__global__ void silu_mul_kernel(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ o, long long n) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float x = g[i];
    o[i] = x / (1.0f + __expf(-x)) * u[i];
  }
}

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, long long n) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

unsigned grid_for(long long n) { return n == 0 ? 1 : std::min(ceil_div(n, 256), 65535u * 8); }

}  // namespace

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const long long n = gate.numel();
  if (n == 0) return;
  silu_mul_kernel<<<grid_for(n), 256, 0, current_stream()>>>(gate.data<float>(), up.data<float>(), out.data<float>(), n);
  check_launch("silu_mul");
}

void add_inplace(Tensor& y, const Tensor& x) {
  const long long n = y.numel();
  if (n == 0) return;
  add_kernel<<<grid_for(n), 256, 0, current_stream()>>>(y.data<float>(), x.data<float>(), n);
  check_launch("add_inplace");
}

}  // namespace pdserve::ops::cuda
