// grouped_gemv_masked: decode-size expert products on CUDA cores. Block (n-tile, expert) exits at
// once when the expert has no rows, so only chosen experts' weights are read. Each warp computes
// one output column at a time for up to kRows rows: its 32 lanes stride K in 16-element pieces
// (16 fp8 bytes or 32 bf16 bytes: one vector load each), the piece's weights are dequantized once
// (a 16-element piece never straddles a 128-wide scale block) and used for every row. FP8 rows
// (the low-latency dispatch's) carry one scale per row per 128 columns, applied to the piece's
// partial dot product.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <type_traits>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/grouped_gemm.h"

namespace pdserve::ops::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kColsPerWarp = 4;
constexpr int kRows = 8;
constexpr int kPiece = 16;

__device__ __forceinline__ void load_piece(const float* p, float v[kPiece]) {
  const float4* q = reinterpret_cast<const float4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 f = q[i];
    v[4 * i] = f.x;
    v[4 * i + 1] = f.y;
    v[4 * i + 2] = f.z;
    v[4 * i + 3] = f.w;
  }
}

__device__ __forceinline__ void load_piece(const __nv_bfloat16* p, float v[kPiece]) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const uint4 u = q[i];
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      v[8 * i + 2 * j] = f.x;
      v[8 * i + 2 * j + 1] = f.y;
    }
  }
}

__device__ __forceinline__ void load_piece(const __nv_fp8_e4m3* p, float v[kPiece]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_fp8_e4m3* e = reinterpret_cast<const __nv_fp8_e4m3*>(&u);
#pragma unroll
  for (int i = 0; i < kPiece; ++i) v[i] = static_cast<float>(e[i]);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename XT, typename WT, typename YT>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const XT* x, const float* x_scales, const int32_t* counts,
                                                           const int64_t* table, int groups, int max_m, int n, int k,
                                                           YT* y) {
  const int g = blockIdx.y;
  const int c = min(max(counts[g], 0), max_m);
  if (c == 0) return;
  const WT* w = reinterpret_cast<const WT*>(table[g]);
  const float* scales = reinterpret_cast<const float*>(table[groups + g]);
  const int scale_cols = (k + 127) / 128;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const XT* xg = x + static_cast<int64_t>(g) * max_m * k;
  // x_scales [G, scale_cols, max_m]: row r's scale of column block kb at xsg[kb * max_m + r].
  const float* xsg = x_scales != nullptr ? x_scales + static_cast<int64_t>(g) * scale_cols * max_m : nullptr;
  YT* yg = y + static_cast<int64_t>(g) * max_m * n;
  for (int ci = 0; ci < kColsPerWarp; ++ci) {
    const int col = (blockIdx.x * kWarps + warp) * kColsPerWarp + ci;
    if (col >= n) return;
    const WT* wrow = w + static_cast<int64_t>(col) * k;
    for (int r0 = 0; r0 < c; r0 += kRows) {
      float acc[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
      for (int k0 = lane * kPiece; k0 < k; k0 += 32 * kPiece) {
        float wv[kPiece];
        load_piece(wrow + k0, wv);
        if (scales != nullptr) {
          const float s = scales[(col / 128) * scale_cols + k0 / 128];
#pragma unroll
          for (int i = 0; i < kPiece; ++i) wv[i] *= s;
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r0 + r >= c) break;
          float xv[kPiece];
          load_piece(xg + static_cast<int64_t>(r0 + r) * k + k0, xv);
          // FP8 rows (and only they) carry scales: decided at compile time, so the bf16 and f32
          // decode paths keep their loop as it was.
          if constexpr (std::is_same_v<XT, __nv_fp8_e4m3>) {
            float part = 0.0f;
#pragma unroll
            for (int i = 0; i < kPiece; ++i) part = fmaf(wv[i], xv[i], part);
            acc[r] = fmaf(part, xsg[(k0 / 128) * max_m + r0 + r], acc[r]);
          } else {
#pragma unroll
            for (int i = 0; i < kPiece; ++i) acc[r] = fmaf(wv[i], xv[i], acc[r]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float v = acc[r];
#pragma unroll
        for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0 && r0 + r < c) store(yg + static_cast<int64_t>(r0 + r) * n + col, v);
      }
    }
  }
}

template <typename XT, typename WT>
void launch_y(const Tensor& x, const Tensor& x_scales, const Tensor& counts, const Tensor& table, int groups, int max_m,
              int n, int k, Tensor& y, dim3 grid) {
  const auto* xp = static_cast<const XT*>(x.raw_data());
  const float* xs = x_scales.defined() ? x_scales.data<float>() : nullptr;
  if (y.dtype() == DType::kBF16)
    gemv_kernel<XT, WT, __nv_bfloat16><<<grid, kWarps * 32, 0, current_stream()>>>(
        xp, xs, counts.data<int32_t>(), table.data<int64_t>(), groups, max_m, n, k, y.data<__nv_bfloat16>());
  else
    gemv_kernel<XT, WT, float><<<grid, kWarps * 32, 0, current_stream()>>>(
        xp, xs, counts.data<int32_t>(), table.data<int64_t>(), groups, max_m, n, k, y.data<float>());
}

template <typename XT>
void launch_w(const Tensor& x, const Tensor& x_scales, const Tensor& counts, DType w_dtype, const Tensor& table,
              int groups, int max_m, int n, int k, Tensor& y, dim3 grid) {
  switch (w_dtype) {
    case DType::kF8E4M3: return launch_y<XT, __nv_fp8_e4m3>(x, x_scales, counts, table, groups, max_m, n, k, y, grid);
    case DType::kBF16: return launch_y<XT, __nv_bfloat16>(x, x_scales, counts, table, groups, max_m, n, k, y, grid);
    case DType::kF32: return launch_y<XT, float>(x, x_scales, counts, table, groups, max_m, n, k, y, grid);
    default: throw std::invalid_argument("grouped_gemv_masked: expert weights must be fp8, bf16 or f32");
  }
}

}  // namespace

void grouped_gemv_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table,
                         Tensor& y, const Tensor& x_scales) {
  const int groups = static_cast<int>(experts.size()), max_m = static_cast<int>(x.size(1));
  const int n = static_cast<int>(experts.front().rows()), k = static_cast<int>(experts.front().cols());
  if (groups == 0 || max_m == 0 || n == 0) return;
  const dim3 grid(ceil_div(n, kWarps * kColsPerWarp), static_cast<unsigned>(groups));
  const DType w = experts.front().weight.dtype();
  switch (x.dtype()) {
    case DType::kF8E4M3: launch_w<__nv_fp8_e4m3>(x, x_scales, counts, w, table, groups, max_m, n, k, y, grid); break;
    case DType::kBF16: launch_w<__nv_bfloat16>(x, x_scales, counts, w, table, groups, max_m, n, k, y, grid); break;
    default: launch_w<float>(x, x_scales, counts, w, table, groups, max_m, n, k, y, grid); break;
  }
  check_launch("grouped_gemv_masked");
}

}  // namespace pdserve::ops::cuda
