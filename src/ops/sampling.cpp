#include "ops/sampling.h"

#include <cmath>

#include "ops/check.h"
#include "ops/cpu/sampling.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/sampling.h"
#endif

namespace pdserve::ops {

using detail::fail;

namespace {

void check_params(const char* op, const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    fail(op, fmt::format("temperature must be finite and >= 0, got {}", p.temperature));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail(op, fmt::format("top_p must be in (0, 1], got {}", p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) fail(op, fmt::format("min_p must be in [0, 1], got {}", p.min_p));
  if (p.top_k < -1) fail(op, fmt::format("top_k must be -1, 0 (all) or positive, got {}", p.top_k));
}

void check_param(const char* op, const char* name, const Tensor& t, DType dtype, int64_t rows) {
  detail::check_dtype(op, name, t, dtype);
  detail::check_shape(op, name, t, {rows});
  detail::check_contiguous(op, name, t);
}

}  // namespace

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p, std::mt19937_64& rng) {
  constexpr const char* op = "sample_token";
  if (logits == nullptr || vocab <= 0) fail(op, fmt::format("needs logits and vocab > 0, got vocab {}", vocab));
  check_params(op, p);
  // Logits are a host pointer: this entry point is CPU-only by construction.
  return cpu::sample_token(logits, vocab, p, rng);
}

void sample_batch(const Tensor& logits, const SamplingBatch& params, Tensor& out_ids) {
  constexpr const char* op = "sample_batch";
  detail::check_rank(op, "logits", logits, 2);
  detail::check_last_dim_contiguous(op, "logits", logits);
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  if (vocab <= 0) fail(op, fmt::format("needs vocab > 0, got logits {}", shape_to_string(logits.shape())));
  check_param(op, "temperature", params.temperature, DType::kF32, rows);
  check_param(op, "top_p", params.top_p, DType::kF32, rows);
  check_param(op, "top_k", params.top_k, DType::kI32, rows);
  check_param(op, "min_p", params.min_p, DType::kF32, rows);
  check_param(op, "seed", params.seed, DType::kI64, rows);
  check_param(op, "offset", params.offset, DType::kI64, rows);
  check_param(op, "out_ids", out_ids, DType::kI32, rows);
  if (!detail::all_on_cpu(op, {&logits, &params.temperature, &params.top_p, &params.top_k, &params.min_p,
                               &params.seed, &params.offset, &out_ids})) {
#ifdef PDSERVE_HAVE_CUDA
    if (logits.dtype() != DType::kBF16) detail::check_dtype(op, "logits", logits, DType::kF32);
    return cuda::sample_batch(logits, params, out_ids);
#else
    detail::no_cuda(op);
#endif
  }
  detail::check_dtype(op, "logits", logits, DType::kF32);
  for (int64_t b = 0; b < rows; ++b) {
    SamplingParams p;
    p.temperature = params.temperature.data<float>()[b];
    p.top_p = params.top_p.data<float>()[b];
    p.top_k = params.top_k.data<int32_t>()[b];
    p.min_p = params.min_p.data<float>()[b];
    check_params(op, p);
    const auto seed = static_cast<uint64_t>(params.seed.data<int64_t>()[b]);
    const auto offset = static_cast<uint64_t>(params.offset.data<int64_t>()[b]);
    std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(offset),
                      static_cast<uint32_t>(offset >> 32)};
    std::mt19937_64 rng(seq);
    const float* row = logits.data<float>() + b * logits.strides()[0];
    out_ids.data<int32_t>()[b] = cpu::sample_token(row, vocab, p, rng);
  }
}

}  // namespace pdserve::ops
