#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/counted_grid.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/elementwise.h"

namespace pdserve::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;

using dev::to_f;
using dev::from_f;

// 16 bytes per access: 4 f32 or 8 bf16.
template <typename T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

template <typename T>
__device__ __forceinline__ void load_pack(const T* p, float (&v)[kPack<T>]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < kPack<T>; ++i) v[i] = to_f(e[i]);
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const float (&v)[kPack<T>]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < kPack<T>; ++i) e[i] = from_f<T>(v[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Four consecutive elements: one 16-byte (f32) or 8-byte (bf16) load when kVec, else scalar.
template <bool kVec, typename T>
__device__ __forceinline__ void load4(const T* p, float (&v)[4]) {
  if constexpr (kVec && sizeof(T) == 4) {
    const float4 r = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = r.x, v[1] = r.y, v[2] = r.z, v[3] = r.w;
  } else if constexpr (kVec) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = to_f(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = to_f(p[i]);
  }
}

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Rows of gate and up may be strided (ldg, ldu elements apart: the halves of a fused gate|up
// output); out is contiguous [rows, n]. With kVec every row holds whole 16-byte packs.
template <typename T, bool kVec>
__device__ __forceinline__ void silu_mul_rows(const T* g, long long ldg, const T* u, long long ldu, T* o, long long rows,
                                              long long n, long long first, long long stride) {
  if constexpr (kVec) {
    constexpr int P = kPack<T>;
    const long long per_row = n / P;
    for (long long i = first; i < rows * per_row; i += stride) {
      const long long r = i / per_row, c = (i - r * per_row) * P;
      float a[P], b[P];
      load_pack(g + r * ldg + c, a);
      load_pack(u + r * ldu + c, b);
#pragma unroll
      for (int j = 0; j < P; ++j) a[j] = silu_times(a[j], b[j]);
      store_pack(o + r * n + c, a);
    }
  } else {
    for (long long i = first; i < rows * n; i += stride) {
      const long long r = i / n, c = i - r * n;
      o[i] = from_f<T>(silu_times(to_f(g[r * ldg + c]), to_f(u[r * ldu + c])));
    }
  }
}

template <typename T, bool kVec>
__global__ void silu_mul_kernel(const T* g, long long ldg, const T* u, long long ldu, T* o, long long rows, long long n) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  silu_mul_rows<T, kVec>(g, ldg, u, ldu, o, rows, n, blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x,
                         stride);
}

// One group per blockIdx.y; the blocks along x stride over the group's first counts[g] rows only
// (a decode step's experts receive a few rows of their M-row blocks: the rest is never read).
// gs*: group strides, ld*: row strides of gate and up; out is contiguous [G, M, n].
template <typename T, bool kVec>
__global__ void silu_mul_masked_kernel(const T* g, long long gsg, long long ldg, const T* u, long long gsu, long long ldu,
                                       T* o, const int32_t* counts, long long rows_per_group, long long n) {
  const long long rows = min(max(static_cast<long long>(counts[blockIdx.y]), 0LL), rows_per_group);
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long y = blockIdx.y;
  silu_mul_rows<T, kVec>(g + y * gsg, ldg, u + y * gsu, ldu, o + y * rows_per_group * n, rows, n,
                         blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x, stride);
}

template <typename T, bool kVec>
__global__ void add_kernel(T* y, const T* x, long long n) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if constexpr (kVec) {
    constexpr int P = kPack<T>;
    for (; i < n / P; i += stride) {
      float a[P], b[P];
      load_pack(y + i * P, a);
      load_pack(x + i * P, b);
#pragma unroll
      for (int j = 0; j < P; ++j) a[j] += b[j];
      store_pack(y + i * P, a);
    }
  } else {
    for (; i < n; i += stride) y[i] = from_f<T>(to_f(y[i]) + to_f(x[i]));
  }
}

using dev::quant_group;

// One warp per (row, 128-group).
template <typename T, bool kVec>
__global__ void silu_mul_quant_kernel(const T* g, long long ldg, const T* u, long long ldu, uint8_t* q, float* scales,
                                      long long lds, int m, int n) {
  const int groups = n / 128;
  const long long w = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
  if (w >= static_cast<long long>(m) * groups) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  const long long row = w / groups;
  const int grp = static_cast<int>(w % groups);
  const long long col = grp * 128 + lane * 4;
  float gv[4], uv[4], y[4];
  load4<kVec>(g + row * ldg + col, gv);
  load4<kVec>(u + row * ldu + col, uv);
#pragma unroll
  for (int j = 0; j < 4; ++j) y[j] = to_f(from_f<T>(silu_times(gv[j], uv[j])));  // rounded as silu_mul stores it
  quant_group(y, q + row * n + grp * 128, scales + grp * lds + row, lane);
}

// silu_mul_quant_kernel over the first counts[g] rows of group g = blockIdx.y (the masked expert
// layout). gate and up: group strides gs*, row strides ld*; q [G, M, n] contiguous, scales
// [G, n/128, M] contiguous.
// kMode 2 (bf16, 16-byte aligned rows, q 8-byte aligned): a half-warp per (row, 128-group) "item",
// 8 values a lane (one 16-byte load of gate and one of up), and each warp takes kQmItems = 4 items
// per step (2 per half-warp) with all 4 x 16 bytes of loads a lane issued before the math: 4x the
// bytes in flight of one pair a warp with 8-byte loads, which measured ~17 us at 4 x 512 x 2048
// against ~8 at the copy rate. The numerics are dev::quant_group's (amax of the 128 values -- a
// max, so the reduction order is free --, s = max(amax, 1e-4) / 448, q = e4m3_satfinite(v / s)).
// Items are row-major (consecutive 128-groups of a row): a half-warp pair reads 512 contiguous bytes.
// kMode 0 / 1 (f32, or unaligned): one pair a warp at a time (4 values a lane, load4<kMode == 1>).
constexpr int kQmItems = 4;  // items per warp per step in kMode 2

template <typename T, int kMode>
__global__ void silu_mul_quant_masked_kernel(const T* g, long long gsg, long long ldg, const T* u, long long gsu,
                                             long long ldu, uint8_t* q, float* scales, const int32_t* counts, int M,
                                             int n) {
  const int groups = n / 128;
  const long long rows = min(max(static_cast<long long>(counts[blockIdx.y]), 0LL), static_cast<long long>(M));
  const long long y = blockIdx.y;
  const T* gg = g + y * gsg;
  const T* ug = u + y * gsu;
  uint8_t* qg = q + y * M * static_cast<long long>(n);
  float* sg = scales + y * groups * static_cast<long long>(M);
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(gridDim.x) * blockDim.x / 32;
  if constexpr (kMode == 2) {
    static_assert(sizeof(T) == 2, "the 16-byte path is bf16's");
    constexpr int kSteps = kQmItems / 2;  // items per half-warp per step
    const int hl = lane & 15, half = lane >> 4;
    const long long items = rows * groups;
    for (long long c = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32; c * kQmItems < items;
         c += warps) {  // uniform over the warp: every lane takes part in the shuffles
      uint4 gr[kSteps], ur[kSteps];
      long long row[kSteps];
      int grp[kSteps];
      bool live[kSteps];
#pragma unroll
      for (int j = 0; j < kSteps; ++j) {
        const long long it = c * kQmItems + 2 * j + half;
        live[j] = it < items;
        row[j] = live[j] ? it / groups : 0;
        grp[j] = live[j] ? static_cast<int>(it - row[j] * groups) : 0;
        gr[j] = make_uint4(0u, 0u, 0u, 0u);
        ur[j] = gr[j];
        if (live[j]) {
          const long long col = grp[j] * 128 + hl * 8;
          gr[j] = *reinterpret_cast<const uint4*>(gg + row[j] * ldg + col);
          ur[j] = *reinterpret_cast<const uint4*>(ug + row[j] * ldu + col);
        }
      }
#pragma unroll
      for (int j = 0; j < kSteps; ++j) {
        const T* gh = reinterpret_cast<const T*>(&gr[j]);
        const T* uh = reinterpret_cast<const T*>(&ur[j]);
        float v[8];
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          v[i] = to_f(from_f<T>(silu_times(to_f(gh[i]), to_f(uh[i]))));  // rounded as silu_mul stores it
          amax = fmaxf(amax, fabsf(v[i]));
        }
        // xor offsets below 16 stay inside the half-warp (one item).
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float sc = fmaxf(amax, 1e-4f) / 448.0f;
        if (live[j]) {
          uint32_t packed[2] = {0u, 0u};
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const uint32_t b = static_cast<uint8_t>(__nv_cvt_float_to_fp8(v[i] / sc, __NV_SATFINITE, __NV_E4M3));
            packed[i / 4] |= b << (8 * (i % 4));
          }
          *reinterpret_cast<uint2*>(qg + row[j] * n + grp[j] * 128 + hl * 8) = make_uint2(packed[0], packed[1]);
          if (hl == 0) sg[static_cast<long long>(grp[j]) * M + row[j]] = sc;
        }
      }
    }
  } else {
    constexpr bool kVec = kMode == 1;
    for (long long w = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32; w < rows * groups; w += warps) {
      const long long row = w / groups;
      const int grp = static_cast<int>(w - row * groups);
      const long long col = grp * 128 + lane * 4;
      float gv[4], uv[4], v[4];
      load4<kVec>(gg + row * ldg + col, gv);
      load4<kVec>(ug + row * ldu + col, uv);
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = to_f(from_f<T>(silu_times(gv[j], uv[j])));  // rounded as silu_mul stores it
      quant_group(v, qg + row * n + grp * 128, sg + static_cast<long long>(grp) * M + row, lane);
    }
  }
}

unsigned grid_for(long long n) { return n == 0 ? 1 : std::min(ceil_div(n, 256), 65535u * 8); }

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

void require(bool ok, const char* op, const std::string& msg) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + msg);
}

bool is_act(DType t) { return t == DType::kF32 || t == DType::kBF16; }

// 16-byte packs when every row of every operand starts 16-byte aligned.
template <typename T>
bool rows_vectorizable(const Tensor& gate, const Tensor& up, const Tensor& out) {
  constexpr int P = kPack<T>;
  const int r = gate.dim();
  const long long n = gate.size(r - 1);
  bool ok = n % P == 0 && aligned(gate.raw_data(), 16) && aligned(up.raw_data(), 16) && aligned(out.raw_data(), 16);
  for (int d = 0; d + 1 < r; ++d) ok = ok && gate.strides()[d] % P == 0 && up.strides()[d] % P == 0;
  return ok;
}

template <typename T>
void launch_silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  constexpr int P = kPack<T>;
  const long long rows = gate.size(0), n = gate.size(1), ldg = gate.strides()[0], ldu = up.strides()[0];
  const T* g = gate.data<T>();
  const T* u = up.data<T>();
  T* o = out.data<T>();
  if (rows_vectorizable<T>(gate, up, out))
    silu_mul_kernel<T, true><<<grid_for(rows * n / P), 256, 0, current_stream()>>>(g, ldg, u, ldu, o, rows, n);
  else
    silu_mul_kernel<T, false><<<grid_for(rows * n), 256, 0, current_stream()>>>(g, ldg, u, ldu, o, rows, n);
}

template <typename T>
void launch_silu_mul_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& out) {
  constexpr int P = kPack<T>;
  const long long groups = gate.size(0), M = gate.size(1), n = gate.size(2);
  const bool vec = rows_vectorizable<T>(gate, up, out);
  const dim3 grid(blocks_per_counted_group(grid_for(vec ? M * n / P : M * n), groups, 1024), static_cast<unsigned>(groups));
  const int32_t* c = counts.data<int32_t>();
  const auto& gs = gate.strides();
  const auto& us = up.strides();
  if (vec)
    silu_mul_masked_kernel<T, true><<<grid, 256, 0, current_stream()>>>(gate.data<T>(), gs[0], gs[1], up.data<T>(), us[0],
                                                                        us[1], out.data<T>(), c, M, n);
  else
    silu_mul_masked_kernel<T, false><<<grid, 256, 0, current_stream()>>>(gate.data<T>(), gs[0], gs[1], up.data<T>(), us[0],
                                                                         us[1], out.data<T>(), c, M, n);
}

template <typename T>
void launch_add(Tensor& y, const Tensor& x, long long n) {
  constexpr int P = kPack<T>;
  const bool vec = n % P == 0 && aligned(y.raw_data(), 16) && aligned(x.raw_data(), 16);
  if (vec)
    add_kernel<T, true><<<grid_for(n / P), 256, 0, current_stream()>>>(y.data<T>(), x.data<T>(), n);
  else
    add_kernel<T, false><<<grid_for(n), 256, 0, current_stream()>>>(y.data<T>(), x.data<T>(), n);
}

template <typename T>
void launch_silu_mul_quant(const Tensor& gate, const Tensor& up, Tensor& q, Tensor& scales) {
  const int m = static_cast<int>(gate.size(0)), n = static_cast<int>(gate.size(1));
  const long long ldg = gate.strides()[0], ldu = up.strides()[0];
  const size_t va = sizeof(T) * 4;  // bytes of one 4-element access
  const bool vec = aligned(gate.raw_data(), va) && aligned(up.raw_data(), va) && ldg % 4 == 0 && ldu % 4 == 0;
  const long long warps = static_cast<long long>(m) * (n / 128);
  const unsigned blocks = ceil_div(warps * 32, 256);
  auto* qp = q.data<uint8_t>();
  float* sp = scales.data<float>();
  const long long lds = scales.strides()[0];
  if (vec)
    silu_mul_quant_kernel<T, true><<<blocks, 256, 0, current_stream()>>>(gate.data<T>(), ldg, up.data<T>(), ldu, qp, sp, lds, m, n);
  else
    silu_mul_quant_kernel<T, false><<<blocks, 256, 0, current_stream()>>>(gate.data<T>(), ldg, up.data<T>(), ldu, qp, sp, lds, m, n);
}

template <typename T>
void launch_silu_mul_quant_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& q, Tensor& scales) {
  const int G = static_cast<int>(gate.size(0)), M = static_cast<int>(gate.size(1)), n = static_cast<int>(gate.size(2));
  const auto& gs = gate.strides();
  const auto& us = up.strides();
  const size_t va = sizeof(T) * 4;
  const bool vec = aligned(gate.raw_data(), va) && aligned(up.raw_data(), va) && gs[0] % 4 == 0 && gs[1] % 4 == 0 &&
                   us[0] % 4 == 0 && us[1] % 4 == 0;
  // bf16 rows that start 16-byte aligned (8-element strides) and an 8-byte aligned q: kMode 2.
  const bool vec16 = sizeof(T) == 2 && aligned(gate.raw_data(), 16) && aligned(up.raw_data(), 16) && gs[0] % 8 == 0 &&
                     gs[1] % 8 == 0 && us[0] % 8 == 0 && us[1] % 8 == 0 && aligned(q.raw_data(), 8);
  // kMode 2: kQmItems (row, group) items a warp.
  const long long items = static_cast<long long>(M) * (n / 128);
  const long long warps = vec16 ? (items + kQmItems - 1) / kQmItems : items;
  const dim3 grid(blocks_per_counted_group(ceil_div(warps * 32, 256), G, 1024), static_cast<unsigned>(G));
  const int32_t* c = counts.data<int32_t>();
  auto* qp = q.data<uint8_t>();
  float* sp = scales.data<float>();
  if constexpr (sizeof(T) == 2) {
    if (vec16) {
      silu_mul_quant_masked_kernel<T, 2><<<grid, 256, 0, current_stream()>>>(gate.data<T>(), gs[0], gs[1], up.data<T>(),
                                                                             us[0], us[1], qp, sp, c, M, n);
      return;
    }
  }
  if (vec)
    silu_mul_quant_masked_kernel<T, 1><<<grid, 256, 0, current_stream()>>>(gate.data<T>(), gs[0], gs[1], up.data<T>(),
                                                                           us[0], us[1], qp, sp, c, M, n);
  else
    silu_mul_quant_masked_kernel<T, 0><<<grid, 256, 0, current_stream()>>>(gate.data<T>(), gs[0], gs[1], up.data<T>(),
                                                                           us[0], us[1], qp, sp, c, M, n);
}

}  // namespace

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  constexpr const char* op = "silu_mul";
  require(is_act(gate.dtype()) && up.dtype() == gate.dtype() && out.dtype() == gate.dtype(), op,
          "gate, up and out must all be f32 or all bf16 on the device");
  require(gate.dim() == 2, op, "gate must be [m, n]");
  if (gate.numel() == 0) return;
  if (gate.dtype() == DType::kF32)
    launch_silu_mul<float>(gate, up, out);
  else
    launch_silu_mul<bf16>(gate, up, out);
  check_launch(op);
}

void silu_mul_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& out) {
  constexpr const char* op = "silu_mul_masked";
  require(is_act(gate.dtype()) && up.dtype() == gate.dtype() && out.dtype() == gate.dtype(), op,
          "gate, up and out must all be f32 or all bf16 on the device");
  require(gate.size(0) <= 65535, op, "at most 65535 groups");
  if (gate.numel() == 0) return;
  if (gate.dtype() == DType::kF32)
    launch_silu_mul_masked<float>(gate, up, counts, out);
  else
    launch_silu_mul_masked<bf16>(gate, up, counts, out);
  check_launch(op);
}

void add_inplace(Tensor& y, const Tensor& x) {
  constexpr const char* op = "add_inplace";
  require(is_act(y.dtype()) && x.dtype() == y.dtype(), op, "y and x must both be f32 or both bf16 on the device");
  const long long n = y.numel();
  if (n == 0) return;
  if (y.dtype() == DType::kF32)
    launch_add<float>(y, x, n);
  else
    launch_add<bf16>(y, x, n);
  check_launch(op);
}

namespace {
template <typename From, typename To>
__global__ void cast_kernel(const From* x, To* out, long long n) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = from_f<To>(to_f(x[i]));
}
}  // namespace

void cast(const Tensor& x, Tensor& out) {
  const long long n = x.numel();
  if (n == 0) return;
  if (x.dtype() == DType::kF32)
    cast_kernel<float, bf16><<<grid_for(n), 256, 0, current_stream()>>>(x.data<float>(), out.data<bf16>(), n);
  else
    cast_kernel<bf16, float><<<grid_for(n), 256, 0, current_stream()>>>(x.data<bf16>(), out.data<float>(), n);
  check_launch("cast");
}

void silu_mul_quant_fp8(const Tensor& gate, const Tensor& up, Tensor& q, Tensor& scales) {
  constexpr const char* op = "silu_mul_quant_fp8";
  require(gate.defined() && up.defined() && q.defined() && scales.defined(), op, "undefined argument");
  require(gate.device() == Device::kCuda && up.device() == Device::kCuda && q.device() == Device::kCuda &&
              scales.device() == Device::kCuda, op, "all arguments must be device tensors");
  require(is_act(gate.dtype()) && up.dtype() == gate.dtype(), op, "gate and up must both be f32 or both bf16");
  require(gate.dim() == 2 && up.shape() == gate.shape(), op,
          "gate and up must be [m, n] of one shape, got " + shape_to_string(gate.shape()) + " and " + shape_to_string(up.shape()));
  require(gate.strides()[1] == 1 && up.strides()[1] == 1, op, "gate and up need a unit-stride last dim");
  const int64_t m = gate.size(0), n = gate.size(1);
  require(n % 128 == 0 && n > 0, op, "n must be a positive multiple of 128, got " + std::to_string(n));
  require(m < (1LL << 31) && n < (1LL << 31), op, "shape too large");
  require(q.dtype() == DType::kF8E4M3 && q.shape() == gate.shape() && q.is_contiguous(), op,
          "q must be contiguous fp8 e4m3 " + shape_to_string(gate.shape()));
  require(aligned(q.raw_data(), 4), op, "q must be 4-byte aligned");
  require(scales.dtype() == DType::kF32 && scales.dim() == 2 && scales.size(0) == n / 128 && scales.size(1) == m &&
              scales.strides()[1] == 1 && scales.strides()[0] >= m, op,
          "scales must be f32 [n/128, m] = " + shape_to_string({n / 128, m}) + " with unit last stride, got " +
              shape_to_string(scales.shape()));
  if (m == 0) return;
  if (gate.dtype() == DType::kF32)
    launch_silu_mul_quant<float>(gate, up, q, scales);
  else
    launch_silu_mul_quant<bf16>(gate, up, q, scales);
  check_launch(op);
}

void silu_mul_quant_fp8_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& q, Tensor& scales) {
  constexpr const char* op = "silu_mul_quant_fp8_masked";
  require(gate.defined() && up.defined() && counts.defined() && q.defined() && scales.defined(), op, "undefined argument");
  const Tensor* all[] = {&gate, &up, &counts, &q, &scales};
  for (const Tensor* t : all) require(t->device() == Device::kCuda, op, "all arguments must be device tensors");
  require(is_act(gate.dtype()) && up.dtype() == gate.dtype(), op, "gate and up must both be f32 or both bf16");
  require(gate.dim() == 3 && up.shape() == gate.shape(), op,
          "gate and up must be [G, M, n] of one shape, got " + shape_to_string(gate.shape()) + " and " + shape_to_string(up.shape()));
  require(gate.strides()[2] == 1 && up.strides()[2] == 1, op, "gate and up need a unit-stride last dim");
  const int64_t G = gate.size(0), M = gate.size(1), n = gate.size(2);
  require(n % 128 == 0 && n > 0, op, "n must be a positive multiple of 128, got " + std::to_string(n));
  require(G <= 65535 && M < (1LL << 31) && M * n < (1LL << 40), op, "shape too large");
  require(counts.dtype() == DType::kI32 && counts.shape() == Shape{G}, op, "counts must be i32 [G]");
  require(q.dtype() == DType::kF8E4M3 && q.shape() == gate.shape() && q.is_contiguous() && aligned(q.raw_data(), 4), op,
          "q must be contiguous, 4-byte aligned fp8 e4m3 " + shape_to_string(gate.shape()));
  require(scales.dtype() == DType::kF32 && scales.shape() == Shape{G, n / 128, M} && scales.is_contiguous(), op,
          "scales must be contiguous f32 " + shape_to_string({G, n / 128, M}) + ", got " + shape_to_string(scales.shape()));
  if (G == 0 || M == 0) return;
  if (gate.dtype() == DType::kF32)
    launch_silu_mul_quant_masked<float>(gate, up, counts, q, scales);
  else
    launch_silu_mul_quant_masked<bf16>(gate, up, counts, q, scales);
  check_launch(op);
}

}  // namespace pdserve::ops::cuda
