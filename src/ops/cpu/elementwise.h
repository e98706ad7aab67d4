// CPU reference for embedding, RMSNorm, SiLU-and-multiply and residual add.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops::cpu {

void embedding(const Tensor& ids, const Weight& table, Tensor& out);
void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);
void add_inplace(Tensor& y, const Tensor& x);

}  // namespace pdserve::ops::cpu
