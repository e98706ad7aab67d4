// Device helpers shared by the CUDA op files: f32 <-> activation dtype conversions and the warp-level
// FP8 group quantizer (one definition, so every fused "+ quant" kernel rounds identically).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace pdserve::ops::cuda::dev {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

// Eight consecutive values as f32 from one 16-byte load (bf16) or two (f32); p 16-byte aligned.
__device__ __forceinline__ void load8(const bf16* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x, v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// One warp quantises one 128-wide group held as 4 values per lane (lane l: elements 4l .. 4l+3).
// Math of model-spec §4.2 / ops/quant.h: s = max(amax, 1e-4) / 448, q = e4m3_satfinite(y / s).
__device__ __forceinline__ void quant_group(const float (&y)[4], uint8_t* q_group, float* scale, int lane) {
  float amax = fmaxf(fmaxf(fabsf(y[0]), fabsf(y[1])), fmaxf(fabsf(y[2]), fabsf(y[3])));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float s = fmaxf(amax, 1e-4f) / 448.0f;
  uchar4 packed;
  packed.x = __nv_cvt_float_to_fp8(y[0] / s, __NV_SATFINITE, __NV_E4M3);
  packed.y = __nv_cvt_float_to_fp8(y[1] / s, __NV_SATFINITE, __NV_E4M3);
  packed.z = __nv_cvt_float_to_fp8(y[2] / s, __NV_SATFINITE, __NV_E4M3);
  packed.w = __nv_cvt_float_to_fp8(y[3] / s, __NV_SATFINITE, __NV_E4M3);
  *reinterpret_cast<uchar4*>(q_group + 4 * lane) = packed;
  if (lane == 0) *scale = s;
}

}  // namespace pdserve::ops::cuda::dev
