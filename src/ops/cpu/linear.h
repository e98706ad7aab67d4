// CPU reference GEMMs (OpenBLAS). Raw-pointer forms so attention can feed strided views.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace pdserve::ops::cpu {

// y[i, :] = x[i, :] @ w^T for i < m; x rows are ldx floats apart, y rows ldy floats apart.
// Non-f32 weights are dequantized a row tile at a time, so memory stays bounded by the tile.
void linear(const float* x, int64_t ldx, int64_t m, const Weight& w, float* y, int64_t ldy);

void linear(const Tensor& x, const Weight& w, Tensor& y);
void per_head_matmul(const Tensor& a, const Tensor& b, bool transpose_b, Tensor& out);

}  // namespace pdserve::ops::cpu
