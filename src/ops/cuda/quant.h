// CUDA FP8 activation quantization (DeepSeek's per-token, per-128-channel groups; model-spec §4.2)
// and the row conversions the GEMM paths need. Same contract as ops/quant.h for device tensors.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// x [M, K] f32/bf16 -> q [M, K] fp8 e4m3, scales [ceil(K/128), M] f32 (M-major).
void quantize_fp8_per_token_group(const Tensor& x, Tensor& q, Tensor& scales);

namespace detail {

inline constexpr int64_t kQuantGroup = 128;

// One launch quantizes `groups` row blocks of the same shape. Block g reads x rows
// [0, rows_padded) at x + g * x_group_stride (row stride k elements); rows at or beyond
// min(rows, counts[g]) (counts may be null) are not read and come out as q = 0, scale = 0, so a
// GEMM over them yields exact zeros (unless skip_rows_past_counts). Scales are M-major: row r < split of group kb goes to
// s[kb * split + r]; rows r >= split go to a tail region s[kb_count * split + kb * tail_ld +
// (r - split)]. q rows are k bytes apart.
struct QuantJob {
  const void* x = nullptr;
  DType x_dtype = DType::kF32;
  int64_t x_group_stride = 0;  // elements
  int64_t k = 0;
  int64_t rows = 0;            // rows of x that exist per block (static bound)
  const int32_t* counts = nullptr;
  int64_t rows_padded = 0;     // rows written per block
  int64_t split = 0;
  int64_t tail_ld = 0;
  uint8_t* q = nullptr;
  int64_t q_group_stride = 0;  // bytes
  float* s = nullptr;
  int64_t s_group_stride = 0;  // floats
  int64_t groups = 1;
  // Rows at or beyond min(rows, counts[g]) are left as they are (neither read nor written) instead
  // of zeroed, and the launch's blocks follow the counts: quantize_fp8_masked's mode, where the
  // GEMM reads only counted rows. Needs split == rows_padded (no tail region).
  bool skip_rows_past_counts = false;
};
void launch_quantize(const QuantJob& job, cudaStream_t stream);

// dst rows [0, rows_padded) of each of `groups` blocks = src rows converted to dst_dtype (f32 or
// bf16), or zero for rows at or beyond min(rows, counts[g]). Row strides are in elements.
struct ConvertJob {
  const void* src = nullptr;
  DType src_dtype = DType::kF32;
  int64_t src_group_stride = 0, src_ld = 0;
  void* dst = nullptr;
  DType dst_dtype = DType::kBF16;
  int64_t dst_group_stride = 0, dst_ld = 0;
  int64_t cols = 0, rows = 0, rows_padded = 0;
  const int32_t* counts = nullptr;
  int64_t groups = 1;
  bool accumulate = false;  // dst += src (in f32, rounded once) instead of dst = src
};
void launch_convert_rows(const ConvertJob& job, cudaStream_t stream);

}  // namespace detail
}  // namespace pdserve::ops::cuda
