// CUDA versions of the elementwise ops (same contracts as ops/elementwise.h, device tensors).
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);
void add_inplace(Tensor& y, const Tensor& x);

}  // namespace pdserve::ops::cuda
