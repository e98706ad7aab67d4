// CUDA batch sampler: one 1024-thread block per row of logits [B, V] (V up to 2^31 - 1).
//
// Greedy rows (temperature < 1e-6, top_k == 1, or a top_p that is not > 0): the first index of
// the maximum, identical to the CPU op (NaN logits never win). One read of the row.
//
// Sampling rows, with key = logit * (1 / temperature) in f32 as the CPU op forms it and
// w = exp(key - max key) (the unnormalised probability):
//  1. the row maximum;
//  2. only when top_k or top_p filters: a 2048-bin histogram of (max key - key) in bands of 1/64
//     nat (count, and mass in 2^-40 fixed point so the sums are exact and run-to-run identical);
//     a scan finds the band holding the last kept token of the descending order;
//  3. that band's tokens (at most 4096) are sorted by (key descending, id ascending) and resolved
//     exactly: token j of the order is kept while j < top_k and the mass before it < top_p * total,
//     as sample_token does;
//  4. kept tokens with w >= min_p are drawn from by inverse CDF over a fixed traversal order, with
//     one 32-bit uniform from Philox4x32-10 (cuRAND) keyed by seed, subsequence = offset.
// Passes over the row: 1 greedy, 2 plain temperature, 4 with top_k/top_p.
// Approximations, all documented deviations from sample_token: the top_p mass is in 2^-40 units
// of the maximum's probability (plus tokens below that), the filtered path never keeps tokens with
// w < e^-32 (together below 2e-9 of the mass for V = 129280), and if more than 4096 tokens share
// the boundary band (probabilities within 1.6% of each other) the band is cut in id order, with the
// top_p count estimated from the band's mean probability.
//
// Parameters live in device memory, so they are sanitised rather than validated: temperature NaN
// or < 1e-6 -> greedy; top_p NaN or <= 0 -> greedy, > 1 -> 1; top_k <= 0 or >= V -> all;
// min_p NaN or < 0 -> 0, > 1 -> 1.
#pragma once

#include "ops/sampling.h"
#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// logits: [B, V] f32 or bf16 on the device (rows may be strided, last dim contiguous); params as
// in ops::SamplingBatch (device tensors); out_ids: [B] i32 on the device.
void sample_batch(const Tensor& logits, const SamplingBatch& params, Tensor& out_ids);

}  // namespace pdserve::ops::cuda
