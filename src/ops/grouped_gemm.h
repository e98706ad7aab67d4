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

}  // namespace pdserve::ops
