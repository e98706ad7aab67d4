// Token sampling from logits: greedy, temperature, top-k, top-p, min-p, with a seeded generator.
#pragma once

#include <cstdint>
#include <random>

#include "tensor/tensor.h"

namespace pdserve::ops {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;        // (0, 1]
  int64_t top_k = -1;        // -1 or 0 = all
  float min_p = 0.0f;        // [0, 1]
};

// Greedy: the first index of the maximum. Otherwise, as SGLang: divide by temperature, softmax,
// keep top_k, keep the smallest prefix (by descending probability) whose mass reaches top_p,
// drop tokens with p < min_p * p_max, renormalize and draw with `rng`.
int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p, std::mt19937_64& rng);

// Per-row parameters of a batch: each a contiguous [B] tensor on the logits' device. On the GPU the
// scheduler keeps them in persistent device buffers, so a CUDA graph can capture the sampler.
struct SamplingBatch {
  Tensor temperature;  // f32; below 1e-6 = greedy
  Tensor top_p;        // f32 in (0, 1]
  Tensor top_k;        // i32; -1 or 0 = all, 1 = greedy
  Tensor min_p;        // f32 in [0, 1]
  Tensor seed;         // i64: the request's seed
  Tensor offset;       // i64: which draw of that seed's stream (e.g. tokens generated so far)
};

// One token per row of logits [B, V] (last dim contiguous) into out_ids [B] i32, with
// sample_token's semantics row by row; each draw is a pure function of (row, parameters, seed,
// offset), so the same seed and offset give the same token.
// Host tensors: logits f32; parameters validated as sample_token does; the generator is a
// mt19937_64 seeded from (seed, offset). Device tensors: logits f32 or bf16; see
// ops/cuda/sampling.h for the algorithm (Philox draws, so tokens differ from the host path for
// temperature > 0; greedy rows are identical) and for how out-of-range parameters are treated.
void sample_batch(const Tensor& logits, const SamplingBatch& params, Tensor& out_ids);

}  // namespace pdserve::ops
