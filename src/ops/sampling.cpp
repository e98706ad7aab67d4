#include "ops/sampling.h"

#include <cmath>

#include "ops/check.h"
#include "ops/cpu/sampling.h"

namespace pdserve::ops {

using detail::fail;

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p, std::mt19937_64& rng) {
  constexpr const char* op = "sample_token";
  if (logits == nullptr || vocab <= 0) fail(op, fmt::format("needs logits and vocab > 0, got vocab {}", vocab));
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    fail(op, fmt::format("temperature must be finite and >= 0, got {}", p.temperature));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail(op, fmt::format("top_p must be in (0, 1], got {}", p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) fail(op, fmt::format("min_p must be in [0, 1], got {}", p.min_p));
  if (p.top_k < -1) fail(op, fmt::format("top_k must be -1, 0 (all) or positive, got {}", p.top_k));
  // Logits are a host pointer: this entry point is CPU-only by construction.
  return cpu::sample_token(logits, vocab, p, rng);
}

}  // namespace pdserve::ops
