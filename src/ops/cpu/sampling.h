// CPU reference sampler (host logits).
#pragma once

#include "ops/sampling.h"

namespace pdserve::ops::cpu {

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p, std::mt19937_64& rng);

}  // namespace pdserve::ops::cpu
