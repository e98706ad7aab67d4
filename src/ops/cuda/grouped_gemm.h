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
// Tensor-core form of grouped_gemv_masked: the same arguments and contract (only rows r < counts[g]
// are read and written, counts stay on the device, capturable), computed in 64-row x 128-column
// tiles on mma.sync; a tile starting at or past counts[g] exits at once. Narrower scope: experts fp8
// e4m3 with 128x128 block scales, N and K positive multiples of 128, x bf16 or fp8 e4m3 with x_scales
// f32 [G, K/128, max_m], y f32 or bf16, all 16-byte aligned; anything else throws
// std::invalid_argument. Not yet used by the model (see grouped_gemm_masked_tc.cu).
void grouped_gemm_masked_tc(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts,
                            const Tensor& table, Tensor& out, const Tensor& x_scales = Tensor());

}  // namespace pdserve::ops::cuda
