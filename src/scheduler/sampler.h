// Turns one row of logits into the next token for a request: penalties, logprobs, sampling.
#pragma once

#include <random>
#include <vector>

#include "ops/sampling.h"
#include "scheduler/request.h"

namespace pdserve::scheduler {

// log_softmax of `logits` at `token`, plus the `top_n` best (logprob, id), best first.
TokenLogprob token_logprob(const float* logits, int64_t vocab, int32_t token, int64_t top_n);

// Applies the request's penalties to a copy of the row (SGLang's semantics: repetition penalty
// over prompt and output tokens — divide positive logits, multiply negative ones; frequency and
// presence penalties over output tokens), then samples with temperature/top-k/top-p/min-p (or
// greedy). `scratch` is reused across calls to avoid allocations.
int32_t sample_next(const float* logits, int64_t vocab, const Request& req, std::mt19937_64& rng,
                    std::vector<float>& scratch);

// The op-level parameters of a request's sampling (greedy requests get temperature 0), as
// sample_next uses them and as device-side sampling receives them.
ops::SamplingParams sampling_op_params(const SamplingParams& sp);

}  // namespace pdserve::scheduler
