// CUDA grouped expert GEMMs (same contracts as ops/grouped_gemm.h, device tensors).
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

void grouped_linear_contiguous(const Tensor& x, const std::vector<int64_t>& offsets, const std::vector<Weight>& experts,
                               Tensor& y);
void grouped_linear_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, Tensor& y);
void grouped_gemv_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table,
                         Tensor& y, const Tensor& x_scales);

}  // namespace pdserve::ops::cuda
