#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/counted_grid.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/quant.h"

namespace pdserve::ops::cuda {

using detail::ConvertJob;
using detail::QuantJob;

namespace {

// 16 threads per 128-wide group, 8 consecutive elements each (one 16-byte load for bf16): the 16
// lanes reduce the group's amax with 4 shuffles, and one block covers 16 groups. Groups are
// numbered K-block-major, row-minor, so a block's 16 groups are 16 consecutive rows of the same
// K block: its reads are 16 rows x 256 contiguous bytes and its 16 scale writes (M-major) are
// contiguous too.
constexpr int kThreads = 256;
constexpr int kPerThread = 8;
constexpr int kLanesPerGroup = 16;
constexpr int kGroupsPerBlock = kThreads / kLanesPerGroup;
static_assert(kLanesPerGroup * kPerThread == detail::kQuantGroup, "lanes x elements must cover one group");

// A lane's 8 values: one vector load (dev::load8) or, unaligned or at a ragged end, one at a time.
template <typename T, bool kVec>
__device__ __forceinline__ void load8(const T* p, int64_t col0, int64_t k, float (&v)[kPerThread]) {
  if constexpr (kVec) {
    dev::load8(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) v[i] = col0 + i < k ? dev::to_f(p[i]) : 0.0f;
  }
}

// The scale of a 128-column group from its 16 lanes' values. All 32 lanes of the warp must call
// it (the shuffles); xor offsets below 16 stay inside each 16-lane group. DeepSeek's act_quant:
// amax clamped to 1e-4, s = amax / 448.
__device__ __forceinline__ float group_scale(const float (&v)[kPerThread]) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
  for (int off = kLanesPerGroup / 2; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  amax = fmaxf(amax, 1e-4f);
  return __fdiv_rn(amax, 448.0f);
}

// q = e4m3(x / s), saturating, with an IEEE division (not x * (1/s)) so the bytes match the CPU
// reference exactly; zeros for a row that is not live.
template <bool kVec>
__device__ __forceinline__ void store_q8(uint8_t* qrow, int64_t col0, int64_t k, const float (&v)[kPerThread], float scale,
                                         bool live) {
  uint32_t packed[2] = {0u, 0u};
  uint8_t bytes[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    bytes[i] = live ? static_cast<uint8_t>(__nv_cvt_float_to_fp8(__fdiv_rn(v[i], scale), __NV_SATFINITE, __NV_E4M3)) : 0;
    packed[i / 4] |= static_cast<uint32_t>(bytes[i]) << (8 * (i % 4));
  }
  if constexpr (kVec) {
    *reinterpret_cast<uint2*>(qrow + col0) = make_uint2(packed[0], packed[1]);
  } else {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
      if (col0 + i < k) qrow[col0 + i] = bytes[i];
  }
}

__device__ __forceinline__ int64_t live_rows(const QuantJob& j, int64_t g) {
  int64_t valid = j.rows;
  if (j.counts != nullptr) valid = min(valid, static_cast<int64_t>(max(j.counts[g], 0)));
  return valid;
}

// Every row of [0, rows_padded): rows past the count come out as zeros.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) quantize_kernel(QuantJob j) {
  const int64_t g = blockIdx.y;
  const int64_t kb_count = (j.k + detail::kQuantGroup - 1) / detail::kQuantGroup;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock + threadIdx.x / kLanesPerGroup;
  const int lane = threadIdx.x % kLanesPerGroup;
  const bool active = item < kb_count * j.rows_padded;
  const int64_t kb = active ? item / j.rows_padded : 0;
  const int64_t r = active ? item % j.rows_padded : 0;
  const bool live = active && r < live_rows(j, g);
  const int64_t col0 = kb * detail::kQuantGroup + lane * kPerThread;

  float v[kPerThread] = {};
  if (live && col0 < j.k)
    load8<T, kVec>(static_cast<const T*>(j.x) + g * j.x_group_stride + r * j.k + col0, col0, j.k, v);
  const float scale = group_scale(v);  // all 32 lanes: no early exit before this point
  if (!active) return;
  if (col0 < j.k) store_q8<kVec>(j.q + g * j.q_group_stride + r * j.k, col0, j.k, v, scale, live);
  if (lane == 0) {
    float* s = j.s + g * j.s_group_stride;
    const int64_t at = r < j.split ? kb * j.split + r : kb_count * j.split + kb * j.tail_ld + (r - j.split);
    s[at] = live ? scale : 0.0f;
  }
}

// QuantJob::skip_rows_past_counts: the blocks of group g walk only the live rows, 16 at a time ("a
// chunk": the 16 lane groups of a block), chunks j = blockIdx.x, + gridDim.x, ... < ceil(live /
// 16) * kb_count, K-block-major (a block's 16 scale writes are contiguous in the M-major scales).
// Rows past the count are neither read nor written, so a mostly empty slab (EP8 decode: ~64 rows
// of 2048 per expert) costs what its rows cost.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) quantize_counted_kernel(QuantJob j) {
  const int64_t g = blockIdx.y;
  const int64_t kb_count = (j.k + detail::kQuantGroup - 1) / detail::kQuantGroup;
  const int64_t live = live_rows(j, g);
  const int64_t chunks = (live + kGroupsPerBlock - 1) / kGroupsPerBlock;
  const int lane = threadIdx.x % kLanesPerGroup, rl = threadIdx.x / kLanesPerGroup;
  const T* x = static_cast<const T*>(j.x) + g * j.x_group_stride;
  for (int64_t it = blockIdx.x; it < chunks * kb_count; it += gridDim.x) {  // uniform over the block
    const int64_t kb = it / chunks, r = (it - kb * chunks) * kGroupsPerBlock + rl;
    const int64_t col0 = kb * detail::kQuantGroup + lane * kPerThread;
    float v[kPerThread] = {};
    if (r < live && col0 < j.k) load8<T, kVec>(x + r * j.k + col0, col0, j.k, v);
    const float scale = group_scale(v);
    if (r >= live) continue;
    if (col0 < j.k) store_q8<kVec>(j.q + g * j.q_group_stride + r * j.k, col0, j.k, v, scale, true);
    if (lane == 0) j.s[g * j.s_group_stride + kb * j.split + r] = scale;
  }
}

// Rows: one block row per grid y step; columns: threads of the grid's x dimension.
template <typename Ti, typename To>
__global__ void convert_rows_kernel(ConvertJob j) {
  const int64_t g = blockIdx.z;
  int64_t valid = j.rows;
  if (j.counts != nullptr) valid = min(valid, static_cast<int64_t>(max(j.counts[g], 0)));
  const Ti* src = static_cast<const Ti*>(j.src) + g * j.src_group_stride;
  To* dst = static_cast<To*>(j.dst) + g * j.dst_group_stride;
  for (int64_t r = blockIdx.y; r < j.rows_padded; r += gridDim.y) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < j.cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const float v = r < valid ? dev::to_f(src[r * j.src_ld + c]) : 0.0f;
      To& d = dst[r * j.dst_ld + c];
      d = dev::from_f<To>(j.accumulate ? dev::to_f(d) + v : v);
    }
  }
}

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

template <typename T>
void launch_quantize_t(const QuantJob& j, cudaStream_t stream) {
  const int64_t kb_count = (j.k + detail::kQuantGroup - 1) / detail::kQuantGroup;
  const int64_t blocks = (kb_count * j.rows_padded + kGroupsPerBlock - 1) / kGroupsPerBlock;
  if (blocks > 0x7fffffffLL || j.groups > 65535) throw std::invalid_argument("quantize_fp8: problem too large for one launch");
  const bool vec = j.k % kPerThread == 0 && aligned(j.x, 16) && aligned(j.q, 8) &&
                   (j.x_group_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0 && j.q_group_stride % 8 == 0;
  if (j.skip_rows_past_counts) {
    if (j.split != j.rows_padded) throw std::invalid_argument("quantize_fp8: skip_rows_past_counts needs split == rows_padded");
    // Never more blocks than a group with every row live has chunks.
    const int64_t most = (j.rows_padded + kGroupsPerBlock - 1) / kGroupsPerBlock * kb_count;
    const dim3 grid(blocks_per_counted_group(most, j.groups), static_cast<unsigned>(j.groups));
    if (vec)
      quantize_counted_kernel<T, true><<<grid, kThreads, 0, stream>>>(j);
    else
      quantize_counted_kernel<T, false><<<grid, kThreads, 0, stream>>>(j);
  } else {
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(j.groups));
    if (vec)
      quantize_kernel<T, true><<<grid, kThreads, 0, stream>>>(j);
    else
      quantize_kernel<T, false><<<grid, kThreads, 0, stream>>>(j);
  }
  check_launch("quantize_fp8_per_token_group");
}

template <typename Ti, typename To>
void launch_convert_t(const ConvertJob& j, cudaStream_t stream) {
  const unsigned threads = 256;
  const unsigned gx = static_cast<unsigned>(std::min<int64_t>((j.cols + threads - 1) / threads, 64));
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(j.rows_padded, 65535));
  convert_rows_kernel<Ti, To><<<dim3(gx, gy, static_cast<unsigned>(j.groups)), threads, 0, stream>>>(j);
  check_launch("convert_rows");
}

}  // namespace

namespace detail {

void launch_quantize(const QuantJob& j, cudaStream_t stream) {
  if (j.rows_padded == 0 || j.k == 0 || j.groups == 0) return;
  switch (j.x_dtype) {
    case DType::kF32: return launch_quantize_t<float>(j, stream);
    case DType::kBF16: return launch_quantize_t<__nv_bfloat16>(j, stream);
    default: throw std::invalid_argument(std::string("quantize_fp8: x must be f32 or bf16, got ") + dtype_name(j.x_dtype));
  }
}

void launch_convert_rows(const ConvertJob& j, cudaStream_t stream) {
  if (j.rows_padded == 0 || j.cols == 0 || j.groups == 0) return;
  if (j.groups > 65535) throw std::invalid_argument("convert_rows: too many groups");
  const bool si = j.src_dtype == DType::kF32, so = j.dst_dtype == DType::kF32;
  if ((!si && j.src_dtype != DType::kBF16) || (!so && j.dst_dtype != DType::kBF16))
    throw std::invalid_argument("convert_rows: only f32 and bf16 are supported");
  if (si && so) return launch_convert_t<float, float>(j, stream);
  if (si) return launch_convert_t<float, __nv_bfloat16>(j, stream);
  if (so) return launch_convert_t<__nv_bfloat16, float>(j, stream);
  return launch_convert_t<__nv_bfloat16, __nv_bfloat16>(j, stream);
}

}  // namespace detail

void quantize_fp8_per_token_group(const Tensor& x, Tensor& q, Tensor& scales) {
  const int64_t m = x.size(0), k = x.size(1);
  QuantJob j;
  j.x = x.raw_data();
  j.x_dtype = x.dtype();
  j.k = k;
  j.rows = m;
  j.rows_padded = m;
  j.split = m;  // one M-major region with leading dimension M: scales[kb][row]
  j.q = q.data<uint8_t>();
  j.s = scales.data<float>();
  detail::launch_quantize(j, current_stream());
}

}  // namespace pdserve::ops::cuda
