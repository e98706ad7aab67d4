#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "ops/check.h"
#include "ops/cpu/rope.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/rope.h"
#endif

namespace pdserve::ops {

using detail::fail;

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

namespace {

// torch: base ** (arange(0, dim, 2).float() / dim), every step in f32.
std::vector<float> pos_freqs(int64_t dim, double base) {
  std::vector<float> pf(static_cast<size_t>(dim / 2));
  const float fbase = static_cast<float>(base);
  const float fdim = static_cast<float>(dim);
  for (int64_t i = 0; i < dim / 2; ++i) pf[i] = std::pow(fbase, static_cast<float>(2 * i) / fdim);
  return pf;
}

// transformers' find_correction_dim, in double as Python evaluates it.
double correction_dim(double rotations, int64_t dim, double base, double orig_max) {
  return static_cast<double>(dim) * std::log(orig_max / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

RopeTable yarn_table(const RopeParams& p) {
  const int64_t dim = p.rotary_dim;
  const float factor = static_cast<float>(p.factor);
  RopeTable t;
  if (p.attention_factor != 0.0) {
    t.attention_factor = static_cast<float>(p.attention_factor);
  } else if (p.mscale != 0.0 && p.mscale_all_dim != 0.0) {
    t.attention_factor = static_cast<float>(yarn_get_mscale(p.factor, p.mscale) / yarn_get_mscale(p.factor, p.mscale_all_dim));
  } else {
    t.attention_factor = static_cast<float>(yarn_get_mscale(p.factor, 1.0));
  }

  double low = correction_dim(p.beta_fast, dim, p.theta, p.original_max_position_embeddings);
  double high = correction_dim(p.beta_slow, dim, p.theta, p.original_max_position_embeddings);
  if (p.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  // torch evaluates (arange_f32 - low) / (high - low) with the Python scalars taken as f32.
  const float flow = static_cast<float>(low);
  const float frange = static_cast<float>(high - low);

  const std::vector<float> pf = pos_freqs(dim, p.theta);
  t.inv_freq.resize(pf.size());
  for (size_t i = 0; i < pf.size(); ++i) {
    const float extrapolation = 1.0f / pf[i];
    const float interpolation = 1.0f / (factor * pf[i]);
    const float ramp = std::clamp((static_cast<float>(i) - flow) / frange, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    t.inv_freq[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return t;
}

}  // namespace

RopeTable make_rope_table(const RopeParams& p) {
  constexpr const char* op = "make_rope_table";
  if (p.rotary_dim <= 0 || p.rotary_dim % 2 != 0) fail(op, fmt::format("rotary_dim must be even and > 0, got {}", p.rotary_dim));
  if (!(p.theta > 1.0)) fail(op, fmt::format("theta must be > 1, got {}", p.theta));
  if (p.type == "default") {
    RopeTable t;
    const std::vector<float> pf = pos_freqs(p.rotary_dim, p.theta);
    t.inv_freq.resize(pf.size());
    for (size_t i = 0; i < pf.size(); ++i) t.inv_freq[i] = 1.0f / pf[i];
    return t;
  }
  if (p.type == "yarn") {
    if (!(p.factor > 0.0)) fail(op, fmt::format("yarn factor must be > 0, got {}", p.factor));
    if (!(p.original_max_position_embeddings > 0.0) || !(p.beta_fast > 0.0) || !(p.beta_slow > 0.0))
      fail(op, "yarn needs positive original_max_position_embeddings, beta_fast and beta_slow");
    return yarn_table(p);
  }
  fail(op, fmt::format("unsupported rope type '{}' (expected 'default' or 'yarn')", p.type));
}

void apply_rope_interleaved(Tensor& x, int64_t offset, const Tensor& positions, const RopeTable& table) {
  constexpr const char* op = "apply_rope_interleaved";
  // Device tensors may carry bf16 activations (the GPU model path); host ones are f32.
  if (!(x.defined() && x.device() == Device::kCuda && x.dtype() == DType::kBF16))
    detail::check_dtype(op, "x", x, DType::kF32);
  detail::check_rank(op, "x", x, 3);
  detail::check_last_dim_contiguous(op, "x", x);
  detail::check_rank(op, "positions", positions, 1);
  if (positions.dtype() != DType::kI32 && positions.dtype() != DType::kI64)
    fail(op, fmt::format("positions must be i32 or i64, got {}", dtype_name(positions.dtype())));
  if (positions.size(0) != x.size(0))
    fail(op, fmt::format("positions {} does not match x {}", shape_to_string(positions.shape()), shape_to_string(x.shape())));
  const int64_t rot = 2 * static_cast<int64_t>(table.inv_freq.size());
  if (offset < 0 || offset + rot > x.size(2))
    fail(op, fmt::format("rotary span [{}, {}) does not fit x {}", offset, offset + rot, shape_to_string(x.shape())));
  if (!detail::all_on_cpu(op, {&x, &positions})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::apply_rope_interleaved(x, offset, positions, table);
#else
    detail::no_cuda(op);
#endif
  }
  cpu::apply_rope_interleaved(x, offset, positions, table);
}

}  // namespace pdserve::ops
