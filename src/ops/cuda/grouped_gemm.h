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
// std::invalid_argument. W8A16 on mma.sync: 3.5x slower than grouped_gemm_masked_wgmma at 4 x 512
// rows on an H100; kept for PDSERVE_MASKED_EXPERTS=tc comparisons.
void grouped_gemm_masked_tc(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts,
                            const Tensor& table, Tensor& out, const Tensor& x_scales = Tensor());
// Hopper FP8 form of the same contract (sm_90a wgmma e4m3 x e4m3 -> f32, TMA, DeepSeek's 128-block
// scaling with the partial sums promoted to f32 every 128 K): x fp8 e4m3 [G, max_m, K] with
// x_scales f32 [G, K/128, max_m], counts i32 [G] on the device (clamped to [0, max_m]), experts fp8
// e4m3 [N, K] with scale_inv f32 [N/128, K/128], N and K positive multiples of 128, `table` =
// expert_pointer_table(experts) (the kernel reads the weight scales through it), y f32 or bf16
// [G, max_m, N]; x, the weights and y 16-byte aligned. Only rows r < counts[g] of y are written;
// counts stay on the device (graph-capturable; the weights' TMA maps are kernel parameters).
// Anything else throws std::invalid_argument. Column tiles of 256 where N is a multiple of 256,
// else 128. The model's masked expert layers use it (ops::grouped_masked_experts).
void grouped_gemm_masked_wgmma(const Tensor& x, const Tensor& x_scales, const Tensor& counts,
                               const std::vector<Weight>& experts, const Tensor& table, Tensor& y);
// The fp8 input of grouped_gemm_masked_wgmma from bf16 rows of the masked layout: for g < G and
// r < clamp(counts[g], 0, max_m), row r of x [G, max_m, K] bf16 is quantized per 128-column group
// exactly as quantize_fp8_per_token_group does (amax clamped to 1e-4, s = amax / 448, q = e4m3(x / s),
// the same bytes) into q fp8 e4m3 [G, max_m, K] and scales f32 [G, K/128, max_m]. Rows past the
// counts are neither read nor written. K a positive multiple of 128, x 16-byte aligned.
void quantize_fp8_masked(const Tensor& x, const Tensor& counts, Tensor& q, Tensor& scales);

namespace detail {
// grouped_gemm_masked_wgmma with a chosen column tile: block_n 128 (what the public call uses) or
// 256 (two 128-column halves per tile: half the x-tile traffic per FLOP; N must be a multiple of
// 256). For the tests and the benchmark.
void grouped_gemm_masked_wgmma_bn(const Tensor& x, const Tensor& x_scales, const Tensor& counts,
                                  const std::vector<Weight>& experts, const Tensor& table, Tensor& y, int block_n);
}  // namespace detail

}  // namespace pdserve::ops::cuda
