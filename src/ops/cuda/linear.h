// CUDA linear layers through cuBLASLt (same contract as ops/linear.h, device tensors; x and y may
// also be bf16). The detail section is the GEMM engine shared with the grouped (expert) GEMMs.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// y[m, n] = x[m, k] @ W[n, k]^T. W bf16 (bf16 tensor cores, f32 accumulation), fp8 e4m3 with
// 128x128 block scales (x quantized per token per 128 channels, W8A8 block-scaled FP8 GEMM) or
// f32 (x and y f32 only). x, y: f32 or bf16, contiguous. accumulate: y += x @ W^T instead (y f32;
// cuBLASLt's beta = 1 on the GEMMs that write y directly, an adding copy after the staged ones).
void linear(const Tensor& x, const Weight& w, Tensor& y, bool accumulate = false);

namespace detail {

// cuBLASLt's block-scaled FP8 GEMM reads the activation scales M-major ([K/128][rows], leading
// dimension = the GEMM's row count), and TMA wants that leading dimension 16-byte aligned. So an
// operand of m rows runs as a "main" GEMM over the first main_rows(m) rows (a multiple of
// kRowAlign, written straight into y) plus, for the m % kRowAlign rows left, a "tail" GEMM over
// kRowAlign rows (zero padded) into a small staging buffer whose valid rows are copied to y.
inline constexpr int64_t kRowAlign = 16;
inline int64_t main_rows(int64_t m) { return m / kRowAlign * kRowAlign; }
inline int64_t padded_rows(int64_t m) { return main_rows(m) + (m % kRowAlign != 0 ? kRowAlign : 0); }

// Quantized activations of one GEMM, as launch_quantize writes them with rows_padded =
// padded_rows(m), split = main_rows(m), tail_ld = kRowAlign: q [padded_rows(m), k] fp8,
// s = main scales [k/128][main_rows(m)] followed by tail scales [k/128][kRowAlign].
struct Fp8Operand {
  const uint8_t* q = nullptr;
  const float* s = nullptr;
  int64_t m = 0;
  int64_t k = 0;
};

// Scratch of the calling thread's GEMM context for (current device, current stream). Pointers
// stay valid until the next reserve_inputs on this thread and stream; growing one synchronizes the
// stream (only ever on a first call with a larger shape) and is refused while it is captured.
struct InputScratch {
  uint8_t* q = nullptr;
  float* s = nullptr;
  void* x = nullptr;  // for converted activations
};
InputScratch reserve_inputs(size_t q_bytes, size_t s_floats, size_t x_bytes);

// y rows [0, a.m) (row stride ldy elements, y_dtype f32 or bf16) = dequant(a) @ W^T, W fp8.
void fp8_gemm(const Fp8Operand& a, const Weight& w, void* y, DType y_dtype, int64_t ldy, bool accumulate = false);
// y rows [0, m) = x @ W^T with x and W of the same dtype (bf16, or f32 with y f32); row stride of
// x is k elements, of y ldy elements.
void dense_gemm(const void* x, int64_t m, const Weight& w, void* y, DType y_dtype, int64_t ldy, bool accumulate = false);

}  // namespace detail
}  // namespace pdserve::ops::cuda
