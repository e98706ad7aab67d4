// Embedding lookup, RMSNorm and the gated activation. Activations are f32 on the CPU; device
// tensors may also be bf16 (the GPU model path), computed in f32 inside the kernels.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops {

// out[i, :] = table[ids[i], :] as f32. ids: [n] i32, each in [0, table.rows()) (checked by the
// caller; an out-of-range id throws std::out_of_range). out: [n, hidden] f32.
void embedding(const Tensor& ids, const Weight& table, Tensor& out);

// HF DeepseekV3RMSNorm in f32: y = x * rsqrt(mean(x^2) + eps) * weight. x, out: [m, d] f32 (out
// may alias x; rows of x may be strided: x.strides()[0] >= d, last dim contiguous).
// weight: [d], any floating dtype.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);

// out = silu(gate) * up, elementwise; all [m, n] f32 (device: f32 or bf16). out contiguous; gate
// and up may have strided rows (strides()[0] >= n, last dim contiguous), e.g. the two halves
// y.slice(1, 0, n) and y.slice(1, n, 2 * n) of one fused gate|up GEMM output y [m, 2n]. out may
// alias gate when gate is contiguous.
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);

// silu_mul over the first counts[g] rows of each group g (the masked expert layouts, where an
// expert's block of M rows holds counts[g] received rows): gate, up, out [G, M, n], f32 (device:
// f32 or bf16); out contiguous, gate and up with a contiguous last dim and any strides above it (the
// halves of a fused [G, M, 2n] gate|up output); out may alias gate when gate is contiguous; counts
// [G] i32 on the tensors' device, each clamped to [0, M]. Rows past a group's count are left untouched.
void silu_mul_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& out);

// y += x elementwise (same shape, f32 contiguous).
void add_inplace(Tensor& y, const Tensor& x);

// out = x converted between f32 and bf16 (either way; same shape, both contiguous, one device);
// f32 -> bf16 rounds to nearest even, as f32_to_bf16 (tensor/dtype.h); NaN stays NaN (its payload
// may differ between the CPU and the GPU).
void cast(const Tensor& x, Tensor& out);

}  // namespace pdserve::ops
