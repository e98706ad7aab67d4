// CUDA RMSNorm in HF's rounding order (model-spec §2.2) and the fused RMSNorm + per-token-group FP8
// quantisation that feeds an FP8 GEMM directly.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// ops::rms_norm for device tensors. x and out are each f32 or bf16 ([m, d], rows may be strided,
// last dim contiguous; out may alias x); weight: [d] f32, bf16 or f16. Per row, in f32:
// r = 1 / sqrt(mean(x^2) + eps); t = x * r rounded to x's dtype; y = weight * t rounded to out's
// dtype (with bf16 activations this is HF's "cast back, then multiply by the weight").
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);

// FP8 activation layout shared with the plain quantiser in ops/quant.h (same math, same layout):
//   groups: 128 consecutive values of one row (token) along K; K % 128 == 0.
//   s[g, m] = max(amax(|y[m, 128g : 128g+128]|), 1e-4) / 448          (f32, IEEE division)
//   q[m, k] = e4m3(y[m, k] / s[k/128, m]), round to nearest even, saturating to +-448 (NaN stays NaN)
//   q:      [M, K] fp8 e4m3, row-major contiguous.
//   scales: [K/128, M] f32, "M-major": the scales of one K-group for all tokens are contiguous.
//           This is the A-scale layout cuBLASLt's CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F expects
//           for a row-major [M, K] A operand (one f32 per 128 K-elements per row, M fastest).
//           strides()[0] may exceed M, so a caller can pad the leading dimension.
// Here y = rms_norm(x) rounded to x's dtype, so the result equals rms_norm into an x-dtype buffer
// followed by the plain quantiser. x: [M, K] f32 or bf16 (rows may be strided); weight as above.
void rms_norm_quant_fp8(const Tensor& x, const Tensor& weight, float eps, Tensor& q, Tensor& scales);

}  // namespace pdserve::ops::cuda
