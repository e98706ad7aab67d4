// Token sampling from logits: greedy, temperature, top-k, top-p, min-p, with a seeded generator.
#pragma once

#include <cstdint>
#include <random>

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

}  // namespace pdserve::ops
