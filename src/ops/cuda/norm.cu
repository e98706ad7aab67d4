#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/norm.h"

namespace pdserve::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;

// Each thread keeps up to kIters loads of its row in registers between the sum-of-squares pass and
// the output pass (so the row is read from memory once and the loads are all in flight together);
// a row longer than that re-reads the remainder.
constexpr int kIters = 8;

using dev::to_f;
using dev::from_f;
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f(from_f<T>(v)); }

enum WType : int { kWF32 = 0, kWBF16 = 1, kWF16 = 2 };

__device__ __forceinline__ float load_w(const void* w, int wtype, int i) {
  if (wtype == kWF32) return __ldg(static_cast<const float*>(w) + i);
  if (wtype == kWBF16) return __bfloat162float(static_cast<const bf16*>(w)[i]);
  return __half2float(static_cast<const __half*>(w)[i]);
}

// N consecutive elements (N = 1 or 4); 4 uses one 16-byte (f32) or 8-byte (bf16) access.
template <int N, typename T>
__device__ __forceinline__ void load_n(const T* p, float (&v)[N]) {
  if constexpr (N == 4 && sizeof(T) == 4) {
    const float4 r = *reinterpret_cast<const float4*>(p);
    v[0] = r.x, v[1] = r.y, v[2] = r.z, v[3] = r.w;
  } else if constexpr (N == 4) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = to_f(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_f(p[i]);
  }
}

template <bool kVec, typename T>
__device__ __forceinline__ void load4(const T* p, float (&v)[4]) {
  if constexpr (kVec) {
    load_n<4>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = to_f(p[i]);
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_n(T* p, const float (&v)[N]) {
  if constexpr (N == 4 && sizeof(T) == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (N == 4) {
    uint2 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) e[i] = from_f<T>(v[i]);
    *reinterpret_cast<uint2*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = from_f<T>(v[i]);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ float block_sum(float v) {
  __shared__ float red[32];
  __shared__ float total;
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : 0.0f;
    t = warp_sum(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  return total;
}

// HF order: t = x * r rounded to the activation dtype, then y = weight * t.
template <typename TX>
__device__ __forceinline__ float norm_value(float x, float r, float w) { return w * round_to<TX>(x * r); }

__device__ __forceinline__ float inv_rms(float ss, int d, float eps) {
  return 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
}

// One block per row; thread t handles elements [(it * blockDim + t) * N, +N).
template <typename TX, typename TO, int N>
__global__ void rms_norm_kernel(const TX* x, long long ldx, const void* w, int wtype, float eps, TO* out, long long ldo,
                                int d) {
  const TX* xr = x + blockIdx.x * ldx;
  TO* yr = out + blockIdx.x * ldo;
  const int step = blockDim.x * N;
  float v[kIters][N];
  float ss = 0.0f;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int i = it * step + threadIdx.x * N;
    if (i < d) {
      load_n<N>(xr + i, v[it]);
#pragma unroll
      for (int j = 0; j < N; ++j) ss += v[it][j] * v[it][j];
    }
  }
  for (int i = kIters * step + threadIdx.x * N; i < d; i += step) {
    float t[N];
    load_n<N>(xr + i, t);
#pragma unroll
    for (int j = 0; j < N; ++j) ss += t[j] * t[j];
  }
  const float r = inv_rms(block_sum(ss), d, eps);  // block_sum's barrier also orders reads before aliased writes
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int i = it * step + threadIdx.x * N;
    if (i < d) {
      float o[N];
#pragma unroll
      for (int j = 0; j < N; ++j) o[j] = norm_value<TX>(v[it][j], r, load_w(w, wtype, i + j));
      store_n<N>(yr + i, o);
    }
  }
  for (int i = kIters * step + threadIdx.x * N; i < d; i += step) {
    float t[N];
    load_n<N>(xr + i, t);
#pragma unroll
    for (int j = 0; j < N; ++j) t[j] = norm_value<TX>(t[j], r, load_w(w, wtype, i + j));
    store_n<N>(yr + i, t);
  }
}

using dev::quant_group;

// One block per row; warp w handles 128-groups w, w + warps, ... (lane l: 4 elements at 4l).
// Up to 32 warps per row: bound the registers so a 1024-thread block can launch (without the bound
// the first device run failed with "too many resources requested for launch").
template <typename TX, bool kVec>
__global__ void __launch_bounds__(1024) rms_norm_quant_kernel(const TX* x, long long ldx, const void* w, int wtype, float eps, uint8_t* q,
                                      float* scales, long long lds, int k) {
  const int groups = k / 128, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const long long row = blockIdx.x;
  const TX* xr = x + row * ldx;
  float v[kIters][4];
  float ss = 0.0f;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int g = it * warps + warp;
    if (g < groups) {
      load4<kVec>(xr + g * 128 + lane * 4, v[it]);
#pragma unroll
      for (int j = 0; j < 4; ++j) ss += v[it][j] * v[it][j];
    }
  }
  for (int g = kIters * warps + warp; g < groups; g += warps) {
    float t[4];
    load4<kVec>(xr + g * 128 + lane * 4, t);
#pragma unroll
    for (int j = 0; j < 4; ++j) ss += t[j] * t[j];
  }
  const float r = inv_rms(block_sum(ss), k, eps);
  auto emit = [&](int g, const float (&xv)[4]) {
    float y[4];
    const int c = g * 128 + lane * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) y[j] = round_to<TX>(norm_value<TX>(xv[j], r, load_w(w, wtype, c + j)));
    quant_group(y, q + row * k + g * 128, scales + g * lds + row, lane);
  };
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int g = it * warps + warp;
    if (g < groups) emit(g, v[it]);
  }
  for (int g = kIters * warps + warp; g < groups; g += warps) {
    float t[4];
    load4<kVec>(xr + g * 128 + lane * 4, t);
    emit(g, t);
  }
}

void require(bool ok, const char* op, const std::string& msg) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + msg);
}

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }
bool is_act(DType t) { return t == DType::kF32 || t == DType::kBF16; }

int weight_type(const char* op, const Tensor& w, int64_t d) {
  require(w.defined() && w.device() == Device::kCuda, op, "weight must be a device tensor");
  require(w.dim() == 1 && w.size(0) == d && w.is_contiguous(), op,
          "weight must be contiguous [" + std::to_string(d) + "], got " + shape_to_string(w.shape()));
  if (w.dtype() == DType::kF32) return kWF32;
  if (w.dtype() == DType::kBF16) return kWBF16;
  require(w.dtype() == DType::kF16, op, std::string("weight must be f32, bf16 or f16, got ") + dtype_name(w.dtype()));
  return kWF16;
}

void check_rows(const char* op, const char* name, const Tensor& t) {
  require(t.defined() && t.device() == Device::kCuda, op, std::string(name) + " must be a device tensor");
  require(is_act(t.dtype()), op, std::string(name) + " must be f32 or bf16, got " + dtype_name(t.dtype()));
  require(t.dim() == 2 && (t.size(1) <= 1 || t.strides()[1] == 1), op,
          std::string(name) + " must be [m, d] with a unit-stride last dim, got " + shape_to_string(t.shape()));
  require(t.size(0) < (1LL << 31) && t.size(1) < (1LL << 31), op, std::string(name) + " too large");
}

int threads_for(int64_t work_items) {
  const int64_t t = (work_items + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(t, 32, 1024));
}

template <typename TX, typename TO>
void launch_rms_norm(const Tensor& x, const void* w, int wtype, float eps, Tensor& out) {
  const int m = static_cast<int>(x.size(0)), d = static_cast<int>(x.size(1));
  const long long ldx = x.strides()[0], ldo = out.strides()[0];
  const bool vec = d % 4 == 0 && ldx % 4 == 0 && ldo % 4 == 0 && aligned(x.raw_data(), 4 * sizeof(TX)) &&
                   aligned(out.raw_data(), 4 * sizeof(TO));
  const TX* xp = x.data<TX>();
  TO* op = out.data<TO>();
  if (vec)
    rms_norm_kernel<TX, TO, 4><<<m, threads_for((d + 4 * kIters - 1) / (4 * kIters)), 0, current_stream()>>>(
        xp, ldx, w, wtype, eps, op, ldo, d);
  else
    rms_norm_kernel<TX, TO, 1><<<m, threads_for((d + kIters - 1) / kIters), 0, current_stream()>>>(xp, ldx, w, wtype,
                                                                                                   eps, op, ldo, d);
}

template <typename TX>
void launch_rms_norm_quant(const Tensor& x, const void* w, int wtype, float eps, Tensor& q, Tensor& scales) {
  const int m = static_cast<int>(x.size(0)), k = static_cast<int>(x.size(1));
  const long long ldx = x.strides()[0];
  const int groups = k / 128;
  const int warps = std::clamp((groups + kIters - 1) / kIters, 1, 32);
  const bool vec = ldx % 4 == 0 && aligned(x.raw_data(), 4 * sizeof(TX));
  auto* qp = q.data<uint8_t>();
  float* sp = scales.data<float>();
  const long long lds = scales.strides()[0];
  if (vec)
    rms_norm_quant_kernel<TX, true><<<m, warps * 32, 0, current_stream()>>>(x.data<TX>(), ldx, w, wtype, eps, qp, sp, lds, k);
  else
    rms_norm_quant_kernel<TX, false><<<m, warps * 32, 0, current_stream()>>>(x.data<TX>(), ldx, w, wtype, eps, qp, sp, lds, k);
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  constexpr const char* op = "rms_norm";
  check_rows(op, "x", x);
  check_rows(op, "out", out);
  require(out.shape() == x.shape(), op, "out must have x's shape " + shape_to_string(x.shape()));
  const int wtype = weight_type(op, weight, x.size(1));
  if (x.size(0) == 0 || x.size(1) == 0) return;
  const void* w = weight.raw_data();
  if (x.dtype() == DType::kF32 && out.dtype() == DType::kF32)
    launch_rms_norm<float, float>(x, w, wtype, eps, out);
  else if (x.dtype() == DType::kF32)
    launch_rms_norm<float, bf16>(x, w, wtype, eps, out);
  else if (out.dtype() == DType::kF32)
    launch_rms_norm<bf16, float>(x, w, wtype, eps, out);
  else
    launch_rms_norm<bf16, bf16>(x, w, wtype, eps, out);
  check_launch(op);
}

void rms_norm_quant_fp8(const Tensor& x, const Tensor& weight, float eps, Tensor& q, Tensor& scales) {
  constexpr const char* op = "rms_norm_quant_fp8";
  check_rows(op, "x", x);
  const int64_t m = x.size(0), k = x.size(1);
  require(k > 0 && k % 128 == 0, op, "K must be a positive multiple of 128, got " + std::to_string(k));
  const int wtype = weight_type(op, weight, k);
  require(eps >= 0.0f, op, "eps must be >= 0");
  require(q.defined() && q.device() == Device::kCuda && q.dtype() == DType::kF8E4M3 && q.shape() == x.shape() &&
              q.is_contiguous() && aligned(q.raw_data(), 4), op,
          "q must be a contiguous, 4-byte aligned fp8 e4m3 device tensor " + shape_to_string(x.shape()));
  require(scales.defined() && scales.device() == Device::kCuda && scales.dtype() == DType::kF32 && scales.dim() == 2 &&
              scales.size(0) == k / 128 && scales.size(1) == m && scales.strides()[1] == 1 && scales.strides()[0] >= m,
          op, "scales must be a device f32 [K/128, M] = " + shape_to_string({k / 128, m}) + " with unit last stride, got " +
                  shape_to_string(scales.shape()));
  if (m == 0) return;
  if (x.dtype() == DType::kF32)
    launch_rms_norm_quant<float>(x, weight.raw_data(), wtype, eps, q, scales);
  else
    launch_rms_norm_quant<bf16>(x, weight.raw_data(), wtype, eps, q, scales);
  check_launch(op);
}

}  // namespace pdserve::ops::cuda
