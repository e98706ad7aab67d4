// Device helpers shared by the MLA kernels (mla_*.cu): element loads with conversion, cp.async,
// ldmatrix and the bf16 m16n8k16 tensor-core MMA. Included only from .cu files.
//
// Shared-memory tiles of bf16 rows use an XOR swizzle on 16-byte chunks (chunk ^ (row & 7)) so
// that the 8 row addresses of one ldmatrix land in 8 different bank groups; every tile's row
// length is a multiple of 64 elements (8 chunks) so the swizzle stays inside the row.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/async_copy.cuh"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::ops::cuda::mla {

using bf16 = __nv_bfloat16;
using fp8 = __nv_fp8_e4m3;

// ---- scalar conversions --------------------------------------------------------------------------

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(fp8 v) { return static_cast<float>(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Stores two consecutive elements (the pair of an MMA accumulator fragment).
__device__ __forceinline__ void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store2(bf16* p, float a, float b) { *reinterpret_cast<uint32_t*>(p) = pack_bf16(a, b); }

// Loads 8 consecutive elements (16-byte aligned for bf16, 32 for f32, 8 for fp8) as 8 bf16 in a
// uint4; fp8 values are multiplied by `scale` first.
__device__ __forceinline__ uint4 load8_bf16(const bf16* p, float) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ uint4 load8_bf16(const float* p, float) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  return make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(b.x, b.y), pack_bf16(b.z, b.w));
}
__device__ __forceinline__ uint4 load8_bf16(const fp8* p, float scale) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const uint8_t* v = reinterpret_cast<const uint8_t*>(&raw);
  float f[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    __nv_fp8_e4m3 e;
    e.__x = v[i];
    f[i] = static_cast<float>(e) * scale;
  }
  return make_uint4(pack_bf16(f[0], f[1]), pack_bf16(f[2], f[3]), pack_bf16(f[4], f[5]), pack_bf16(f[6], f[7]));
}

// ---- shared memory, async copies, tensor cores ---------------------------------------------------

// smem_addr, cp_async16/commit/wait, ldmatrix_x4(_trans): ops/cuda/async_copy.cuh

// d += a * b for one m16n8k16 tile: a row-major 16x16, b "col" 16x8, bf16 in, f32 accumulate.
__device__ __forceinline__ void mma_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Element offset of chunk `c` (8 bf16) of row `r` in a swizzled tile of `chunks` chunks per row.
__device__ __forceinline__ int swz(int r, int c, int chunks) { return (r * chunks + (c ^ (r & 7))) * 8; }

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One step of a block-wide online softmax (kThreads threads, scores s_sc[0, n) in shared memory,
// s_red a kThreads/32 scratch): s_sc becomes exp(s - m_new) in place, m_run and l_run are
// updated, and the factor the running output must be scaled by, exp(m_run_old - m_new), is
// returned. Shared by the exact-f32 decode and prefill kernels.
template <int kThreads>
__device__ __forceinline__ float online_softmax_step(float* s_sc, int n, float* s_red, float& m_run, float& l_run) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float mx = -INFINITY;
  for (int j = tid; j < n; j += kThreads) mx = fmaxf(mx, s_sc[j]);
  mx = warp_max(mx);
  if (lane == 0) s_red[warp] = mx;
  __syncthreads();
  mx = s_red[0];
  for (int w = 1; w < kThreads / 32; ++w) mx = fmaxf(mx, s_red[w]);
  const float m_new = fmaxf(m_run, mx);
  const float alpha = expf(m_run - m_new);
  __syncthreads();  // everyone has read s_red
  float part = 0.0f;
  for (int j = tid; j < n; j += kThreads) {
    const float p = expf(s_sc[j] - m_new);
    s_sc[j] = p;
    part += p;
  }
  part = warp_sum(part);
  if (lane == 0) s_red[warp] = part;
  __syncthreads();
  float sum = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) sum += s_red[w];
  l_run = l_run * alpha + sum;
  m_run = m_new;
  return alpha;
}


// ---- decode core: the work split shared by the mma.sync and wgmma kernels --------------------------

// The 64-token tiles [begin, end) of sequence b that KV split `split` covers.
struct SplitTiles {
  int begin, end;
};
__device__ __forceinline__ SplitTiles decode_split_tiles(const DecodeCoreArgs& a, int b, int split) {
  const int tiles = (a.seq_lens[b] + kDecodeTokensPerTile - 1) / kDecodeTokensPerTile;
  const int per_split = (tiles + a.num_splits - 1) / a.num_splits;
  const int begin = split * per_split;
  return {begin, min(tiles, begin + per_split)};
}

// What an empty split (a short sequence) writes for heads h0 .. h0+63: nothing for the combine
// (zero partials, -inf log-sum-exp), or zeros for a seq_len 0 padding slot without splits.
template <int kThreads>
__device__ __forceinline__ void decode_write_empty_split(const DecodeCoreArgs& a, int b, int split, int h0, int tid) {
  constexpr int kH = kDecodeHeadsPerCta, kV = kDecodeValue;
  if (a.num_splits == 1) {
    for (int i = tid; i < kH * kV; i += kThreads) {
      const int h = h0 + i / kV;
      if (h < a.heads) static_cast<bf16*>(a.o_lat)[(int64_t(b) * a.heads + h) * kV + i % kV] = __float2bfloat16_rn(0.0f);
    }
    return;
  }
  for (int i = tid; i < kH * kV; i += kThreads) {
    const int h = h0 + i / kV;
    if (h < a.heads) a.o_part[((int64_t(b) * a.num_splits + split) * a.heads + h) * kV + i % kV] = 0.0f;
  }
  for (int r = tid; r < kH; r += kThreads)
    if (h0 + r < a.heads) a.lse_part[(int64_t(b) * a.num_splits + split) * a.heads + h0 + r] = -INFINITY;
}

// One packed sequence of a prefill: its query rows [q_begin, q_begin + q_len) and KV rows
// [kv_begin, kv_begin + kv_len), the first `prefix` of which are cached (the prefill kernels).
struct SeqRange {
  int q_begin, q_len, kv_begin, kv_len, prefix;
};

__device__ __forceinline__ SeqRange seq_range(const PrefillArgs& a, int seq) {
  SeqRange r;
  r.q_begin = a.cu_q[seq];
  r.q_len = a.cu_q[seq + 1] - r.q_begin;
  r.kv_begin = a.cu_kv[seq];
  r.kv_len = a.cu_kv[seq + 1] - r.kv_begin;
  r.prefix = r.kv_len - r.q_len;
  return r;
}

}  // namespace pdserve::ops::cuda::mla
