#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/embedding.h"

namespace pdserve::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;
using fp8 = __nv_fp8_storage_t;

constexpr int kThreads = 128;
constexpr int kChunk = 8;  // elements per thread access: 16 B of bf16, 8 B of fp8, 32 B of f32

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(fp8 v) { return __half2float(__half(__nv_cvt_fp8_to_halfraw(v, __NV_E4M3))); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

// kChunk consecutive elements with accesses of up to 16 bytes (alignment checked by the host).
template <typename T, bool kVec>
__device__ __forceinline__ void load_chunk(const T* p, float (&v)[kChunk]) {
  if constexpr (kVec) {
    constexpr int kWords = kChunk * sizeof(T) / 4;  // 32-bit words in the chunk
    uint32_t raw[kWords];
    if constexpr (kWords % 4 == 0) {
#pragma unroll
      for (int i = 0; i < kWords / 4; ++i) {
        const uint4 q = __ldg(reinterpret_cast<const uint4*>(p) + i);
        raw[4 * i] = q.x, raw[4 * i + 1] = q.y, raw[4 * i + 2] = q.z, raw[4 * i + 3] = q.w;
      }
    } else {
      const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
      raw[0] = q.x, raw[1] = q.y;
    }
    const T* e = reinterpret_cast<const T*>(raw);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = to_f(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = to_f(p[i]);
  }
}

template <typename T, bool kVec>
__device__ __forceinline__ void store_chunk(T* p, const float (&v)[kChunk]) {
  if constexpr (kVec) {
    constexpr int kWords = kChunk * sizeof(T) / 4;
    uint32_t raw[kWords];
    T* e = reinterpret_cast<T*>(raw);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) e[i] = from_f<T>(v[i]);
#pragma unroll
    for (int i = 0; i < kWords / 4; ++i)
      reinterpret_cast<uint4*>(p)[i] = make_uint4(raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) p[i] = from_f<T>(v[i]);
  }
}

// One block per token. Chunks never straddle a 128-column scale block (128 % kChunk == 0).
template <typename TT, typename TO, bool kVec>
__global__ void __launch_bounds__(kThreads) embedding_kernel(const void* ids, bool ids64, const TT* table,
                                                             const float* scale_inv, long long scale_ld,
                                                             long long rows, int hidden, TO* out, int* error_flag) {
  const long long t = blockIdx.x;
  const long long id = ids64 ? static_cast<const long long*>(ids)[t] : static_cast<const int*>(ids)[t];
  TO* o = out + t * hidden;
  const bool ok = id >= 0 && id < rows;
  if (!ok && error_flag != nullptr && threadIdx.x == 0) atomicExch(error_flag, 1);
  const TT* row = table + (ok ? id : 0) * hidden;
  const float* srow = scale_inv != nullptr ? scale_inv + (ok ? id / 128 : 0) * scale_ld : nullptr;
  const int chunks = hidden / kChunk;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[kChunk];
    if (ok) {
      load_chunk<TT, kVec>(row + c * kChunk, v);
      if (srow != nullptr) {
        const float s = srow[c * kChunk / 128];
#pragma unroll
        for (int i = 0; i < kChunk; ++i) v[i] *= s;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kChunk; ++i) v[i] = 0.0f;
    }
    store_chunk<TO, kVec>(o + c * kChunk, v);
  }
  for (int j = chunks * kChunk + threadIdx.x; j < hidden; j += blockDim.x) {  // tail (hidden % 8)
    float v = ok ? to_f(row[j]) : 0.0f;
    if (ok && srow != nullptr) v *= srow[j / 128];
    o[j] = from_f<TO>(v);
  }
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("embedding: " + msg);
}

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

template <typename TT, typename TO>
void launch(const Tensor& ids, const Weight& table, Tensor& out, int* flag) {
  const int64_t n = ids.size(0), hidden = table.cols();
  // Vector accesses need every row start aligned to the access size of both table and output.
  const size_t ta = kChunk * sizeof(TT) >= 16 ? 16 : kChunk * sizeof(TT);
  const bool vec = hidden % kChunk == 0 && aligned(table.weight.raw_data(), ta) && aligned(out.raw_data(), 16) &&
                   (hidden * sizeof(TT)) % ta == 0 && (hidden * sizeof(TO)) % 16 == 0;
  const float* scale = table.is_block_fp8() ? table.scale_inv.data<float>() : nullptr;
  const long long scale_ld = table.is_block_fp8() ? table.scale_inv.size(1) : 0;
  const bool ids64 = ids.dtype() == DType::kI64;
  auto kernel = vec ? embedding_kernel<TT, TO, true> : embedding_kernel<TT, TO, false>;
  kernel<<<static_cast<unsigned>(n), kThreads, 0, current_stream()>>>(ids.raw_data(), ids64, table.weight.data<TT>(),
                                                                      scale, scale_ld, table.rows(),
                                                                      static_cast<int>(hidden), out.data<TO>(), flag);
}

template <typename TO>
void launch_table(const Tensor& ids, const Weight& table, Tensor& out, int* flag) {
  switch (table.weight.dtype()) {
    case DType::kF32: return launch<float, TO>(ids, table, out, flag);
    case DType::kBF16: return launch<bf16, TO>(ids, table, out, flag);
    case DType::kF16: return launch<__half, TO>(ids, table, out, flag);
    case DType::kF8E4M3: return launch<fp8, TO>(ids, table, out, flag);
    default: require(false, std::string("unsupported table dtype ") + dtype_name(table.weight.dtype()));
  }
}

}  // namespace

void embedding(const Tensor& ids, const Weight& table, Tensor& out, Tensor* error_flag) {
  require(ids.defined() && ids.device() == Device::kCuda && ids.dim() == 1 && ids.is_contiguous() &&
              (ids.dtype() == DType::kI32 || ids.dtype() == DType::kI64),
          "ids must be a contiguous device i32/i64 [n]");
  require(table.weight.defined() && table.weight.device() == Device::kCuda && table.weight.dim() == 2 &&
              table.weight.is_contiguous(),
          "table must be a contiguous device [rows, hidden]");
  if (table.is_block_fp8())
    require(table.scale_inv.defined() && table.scale_inv.device() == Device::kCuda &&
                table.scale_inv.dtype() == DType::kF32 && table.scale_inv.is_contiguous() &&
                table.scale_inv.shape() == Shape{(table.rows() + 127) / 128, (table.cols() + 127) / 128},
            "an fp8 table needs its contiguous device f32 scale_inv [ceil(rows/128), ceil(hidden/128)]");
  require(out.defined() && out.device() == Device::kCuda && out.is_contiguous() &&
              (out.dtype() == DType::kF32 || out.dtype() == DType::kBF16) &&
              out.shape() == Shape{ids.size(0), table.cols()},
          "out must be a contiguous device f32/bf16 [n, hidden]");
  require(table.cols() < (1LL << 31) && ids.size(0) < (1LL << 31), "too large");
  int* flag = nullptr;
  if (error_flag != nullptr) {
    require(error_flag->defined() && error_flag->device() == Device::kCuda && error_flag->dtype() == DType::kI32 &&
                error_flag->numel() == 1,
            "error_flag must be a device i32 tensor of one element");
    flag = error_flag->data<int>();
  }
  if (ids.size(0) == 0 || table.cols() == 0) return;
  if (out.dtype() == DType::kF32)
    launch_table<float>(ids, table, out, flag);
  else
    launch_table<bf16>(ids, table, out, flag);
  check_launch("embedding");
}

}  // namespace pdserve::ops::cuda
