// Routing tokens to expert rows and back: the single-device form of EP dispatch/combine (model-spec
// §6). The routed experts' grouped GEMMs (ops/grouped_gemm.h) want each expert's tokens as
// consecutive rows, either contiguous (prefill) or in fixed per-expert blocks (decode, masked).
//
// Order: entry (t, j) of topk_ids [T, k] goes to expert e = topk_ids[t, j]; its rank is the number
// of earlier entries (in (t, j) row-major order) routed to the same e. So the layout is a pure
// function of topk_ids, identical on the CPU and the GPU, and run-to-run deterministic.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops {

// counts[e] = entries of topk_ids [T, k] (i32) routed to expert e; counts: [E] i32. Ids outside
// [0, E) are not counted.
void moe_count(const Tensor& topk_ids, Tensor& counts);

// topk_ids[t, :] = -1 for every row t with seq_lens[t] == 0: the padding rows of a batch run by a
// CUDA graph of a larger captured size (model/gpu_host_inputs.h gives them length 0), so that
// they reach no expert (the ops above, and EP dispatch/combine, skip id -1). seq_lens: [T] i32,
// topk_ids: [T, k] i32, both on one device; nothing synchronizes on the GPU (graph safe).
void moe_drop_padding_rows(const Tensor& seq_lens, Tensor& topk_ids);

// out[t, j] = table[ids[t, j]] for ids in [0, L), else -1: a rank's logical -> physical expert map
// (moe/expert_location.h: with redundant experts each logical expert has one or more physical
// copies, and each rank sends to the copy its static dispatch map names). ids, out: [T, k] i32
// (out may be ids itself); table: [L] i32; all on one device; nothing synchronizes on the GPU.
void moe_map_expert_ids(const Tensor& ids, const Tensor& table, Tensor& out);

// --ep-dispatch-algorithm dynamic: out[i] = replicas[ids[i], c] for ids in [0, L), c a copy drawn
// uniformly from [0, copies[ids[i]]) by ops/replica_pick.h's hash of (seed, draw[0], i), else -1;
// then draw[0] += 1, so the next call (or the next replay of a CUDA graph holding this one) draws
// afresh. ids, out: [T, k] i32 (out may be ids); replicas: [L, C] i32, a logical expert's physical
// copies in its first copies[e] columns; copies: [L] i32 in [1, C] (values outside are clamped
// there); draw: [1] i64. All on one device; nothing synchronizes on the GPU. The CPU and the GPU
// pick the same copies for the same inputs.
void moe_pick_expert_replicas(const Tensor& ids, const Tensor& replicas, const Tensor& copies, uint64_t seed,
                              Tensor& draw, Tensor& out);

// x_out[row_base[e] + rank] = x[t] for every entry (t, j), and slots[t, j] = that row, or -1 when
// the id is outside [0, E) or the row is outside x_out (then nothing is written for it).
// x: [T, K], x_out: [R, K] of x's dtype (f32; also bf16 on the GPU), row_base: [E] i32 (masked
// layout: e * max_m; contiguous: exclusive prefix sum of moe_count), slots: [T, k] i32,
// counts: [E] i32 = entries routed to e (as moe_count). Rows of x_out no entry maps to are left as
// they were. All on one device; on the GPU nothing synchronizes (CUDA-graph safe).
void moe_scatter(const Tensor& x, const Tensor& topk_ids, const Tensor& row_base, Tensor& x_out, Tensor& slots,
                 Tensor& counts);

// out[t] += sum over j (in order) of weights[t, j] * y[slots[t, j]], summed in f32 and added once;
// entries with slot -1 contribute nothing. y: [R, N] (f32; also bf16 on the GPU), slots: [T, k]
// i32, weights: [T, k] f32, out: [T, N] f32 contiguous.
void moe_combine(const Tensor& y, const Tensor& slots, const Tensor& weights, Tensor& out);

}  // namespace pdserve::ops
