// Grouped linear layers for the routed experts, in the two layouts of wide expert parallelism
// (model-spec §6: DeepEP dispatch -> DeepGEMM). Expert g multiplies by its own W_g [N, K]; every
// expert has the same shape and dtype (bf16, or fp8 e4m3 with 128x128 block scales).
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace pdserve::ops {

// Contiguous layout (prefill, DeepEP normal mode): x [M, K] holds the rows of expert g in
// [offsets[g], offsets[g+1]); y [M, N] gets y[r] = x[r] @ W_g^T for those rows. offsets has
// experts.size() + 1 entries, starts at 0, ends at M and never decreases (empty experts are fine).
// The offsets are host values: each expert's GEMM needs its row count at launch, and DeepEP's
// normal mode hands the per-expert counts to the host anyway (it is not CUDA-graph captured).
// x, y: f32 on the CPU; f32 or bf16 on the GPU.
void grouped_linear_contiguous(const Tensor& x, const std::vector<int64_t>& offsets, const std::vector<Weight>& experts,
                               Tensor& y);

// Masked layout (decode, DeepEP low-latency mode): x [G, max_m, K], counts [G] i32 on x's device,
// y [G, max_m, N]. For each group g with c = clamp(counts[g], 0, max_m): y[g, r] = x[g, r] @ W_g^T
// for r < c, and y[g, r] = 0 for c <= r < max_m (rows of x from c on are never read, so stale
// data there, NaN included, does not matter). On the GPU the counts stay on the device: nothing
// synchronizes, so the call can be captured in a CUDA graph. The cost of that: every group is
// computed over all max_m rows (see docs/perf/kernels.md, GEMM).
void grouped_linear_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, Tensor& y);

// Small-batch form of the masked layout, for decode: only rows r < counts[g] are computed, so an
// expert no token chose reads no weights at all, and rows r >= counts[g] of y are left unwritten
// (callers read only the rows they routed to). The GEMMs above compute every expert over all
// max_m rows, which at decode batch sizes reads all experts' weights each step; this reads only the
// chosen ones, at CUDA-core speed, so it wins while counts are a few rows per expert.
// `table` comes from expert_pointer_table(experts) (built once, on the experts' device: the kernel
// finds each expert's weight and scales there, so the call needs no upload and can be captured).
// x [G, max_m, K], y [G, max_m, N]: f32 on the CPU; f32 or bf16 on the GPU; K % 16 == 0 on the GPU.
// x may also be fp8 e4m3 (CPU and GPU) with `x_scales` f32 [G, ceil(K/128), max_m]: row r of group g
// is x[g, r, c] * x_scales[g, c / 128, r], the layout the low-latency EP dispatch delivers
// (moe/cuda/ep_low_latency_gpu.h, recv_x / recv_scales), so the experts read the dispatched FP8
// rows as they arrived, with no dequantization pass.
void grouped_gemv_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table,
                         Tensor& y, const Tensor& x_scales = Tensor());
// grouped_gemv_masked's contract, computed by the fastest kernel that takes the operands: on the
// GPU, for fp8 block-scaled experts with N, K multiples of 128, x bf16 or fp8 with scales and y f32
// or bf16, the FP8 wgmma kernel (ops/cuda/grouped_gemm.h, grouped_gemm_masked_wgmma; bf16 rows are
// quantized per 128-group first, W8A8 like the dense layers); otherwise grouped_gemv_masked.
// PDSERVE_MASKED_EXPERTS=tc|gemv forces the mma.sync kernel or the GEMV (comparisons). The GEMV
// multiplies on CUDA cores: an H100 measured it ~100x slower than the wgmma kernel at 512 rows per
// expert (docs/perf/kernels.md), so the model's masked expert layers (decode, EP low-latency) call
// this one.
void grouped_masked_experts(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table,
                            Tensor& y, const Tensor& x_scales = Tensor());
// The second half of the routed experts' MLP over the masked layout: for r < counts[g],
// y[g, r] = (silu(gate_up[g, r, :I]) * gate_up[g, r, I:]) @ down_g^T, with I = down's in-features.
// gate_up [G, M, 2I] (the fused gate|up output), act [G, M, I] (the SiLU product's buffer, same
// dtype as gate_up), y [G, M, N]. Where grouped_masked_experts takes the FP8 wgmma kernel the SiLU
// product goes straight to FP8 rows (ops::cuda::silu_mul_quant_fp8_masked into the GEMM scratch)
// and act is not written; otherwise act gets it in gate_up's dtype. Rows past the counts are not
// written (y and act). Capturable.
void grouped_masked_silu_down(const Tensor& gate_up, const Tensor& counts, const std::vector<Weight>& down,
                              const Tensor& down_table, Tensor& act, Tensor& y);
// i64 [2, G] on the experts' device: each expert's weight address, then its scale_inv address (0
// when it has none). On the CPU an empty tensor (the reference reads `experts` directly).
Tensor expert_pointer_table(const std::vector<Weight>& experts);

}  // namespace pdserve::ops
