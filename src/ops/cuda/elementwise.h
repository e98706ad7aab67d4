// CUDA versions of the elementwise ops (same contracts as ops/elementwise.h, device tensors), plus
// the fused SiLU-mul + FP8 quantisation the expert MLP feeds its down projection with.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// out = silu(gate) * up; gate, up, out: [m, n], all f32 or all bf16 (math in f32, one rounding at
// the store). out contiguous; rows of gate and up may be strided (the halves of a fused gate|up
// output). out may alias gate when gate is contiguous.
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);

// silu_mul over the first counts[g] rows of each group (ops/elementwise.h): gate, up, out
// [G, M, n], all f32 or all bf16, out contiguous, gate and up with any strides above a contiguous
// last dim; counts [G] i32 on the device (read by the kernel, so capturable in a CUDA graph). Rows
// past a count are not touched.
void silu_mul_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& out);

// y += x; same shape, both contiguous, both f32 or both bf16 (sum in f32, rounded once).
void add_inplace(Tensor& y, const Tensor& x);

// out = x converted f32 -> bf16 (round to nearest even) or bf16 -> f32; both contiguous.
void cast(const Tensor& x, Tensor& out);

// Fused silu_mul + per-token-group FP8 quantisation (groups of 128 along n; layout and math as
// rms_norm_quant_fp8 in ops/cuda/norm.h, which documents the layout shared with ops/quant.h).
// gate, up: [m, n], both f32 or both bf16, rows may be strided (last dim contiguous), so they can be
// the two halves of one [m, 2n] gate|up GEMM output; n % 128 == 0. The value quantised is
// silu(gate) * up rounded to the inputs' dtype, so the result equals silu_mul into a buffer of
// that dtype followed by the plain quantiser.
// q: [m, n] fp8 e4m3 contiguous; scales: [n / 128, m] f32 (strides()[0] >= m allowed).
void silu_mul_quant_fp8(const Tensor& gate, const Tensor& up, Tensor& q, Tensor& scales);

// silu_mul_quant_fp8 over the first counts[g] rows of each group of the masked expert layout:
// gate, up [G, M, n] (f32 or bf16, any strides above a unit-stride last dim: the halves of a fused
// [G, M, 2n] gate|up output), counts i32 [G] on the device (clamped to [0, M]); q [G, M, n] fp8 e4m3
// and scales f32 [G, n/128, M] contiguous: the x / x_scales layout of the masked expert kernels
// (ops/cuda/grouped_gemm.h). Rows past the counts are neither read nor written. The bytes equal
// silu_mul_masked into a buffer of the inputs' dtype followed by quantize_fp8_masked.
void silu_mul_quant_fp8_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& q, Tensor& scales);

}  // namespace pdserve::ops::cuda
