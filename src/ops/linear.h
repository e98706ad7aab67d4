// Dense matrix products against stored weights.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops {

// y[m, n] = x[m, k] @ W[n, k]^T. On the CPU x and y are contiguous f32; on the GPU f32 or bf16
// (fp8 weights then quantize x per token per 128 columns: W8A8, see ops/cuda/linear.h). W is f32,
// bf16, f16 or fp8 with 128x128 block scales (Weight::scale_inv). Weights are dequantized tile by tile into a small f32
// scratch buffer and multiplied with BLAS, so an fp8 model never needs a full f32 copy.
void linear(const Tensor& x, const Weight& w, Tensor& y);

// y += x[m, k] @ W[n, k]^T, y f32 [m, n] contiguous (the residual stream); x and W as linear takes
// them. On the GPU the GEMM adds into y itself (cuBLASLt's beta = 1, f32 epilogue), so the product
// is never written out and read back by a separate add: the same f32 sum, one pass less over y.
void linear_add(const Tensor& x, const Weight& w, Tensor& y);

// Batched per-head product used by MLA absorption: for each head h,
//   out[t, h, :] = a[t, h, :] @ b[h]            (transpose_b = false; b[h] is [p, q], a is [.., p])
//   out[t, h, :] = a[t, h, :] @ b[h]^T          (transpose_b = true;  b[h] is [q, p])
// a: [T, H, p] f32 (may be strided in dim 0/1 but the last dim contiguous), b: [H, *, *] f32
// contiguous, out: [T, H, q] f32 contiguous.
void per_head_matmul(const Tensor& a, const Tensor& b, bool transpose_b, Tensor& out);

}  // namespace pdserve::ops
