#include "ops/elementwise.h"

#include <algorithm>

#include "ops/check.h"
#include "ops/cpu/elementwise.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/norm.h"
#endif

namespace pdserve::ops {

using detail::fail;

namespace {

// Activations: f32 everywhere; device tensors may also be bf16 (the GPU model path).
void check_act(const char* op, const char* name, const Tensor& t) {
  if (t.defined() && t.device() == Device::kCuda && t.dtype() == DType::kBF16) return;
  detail::check_dtype(op, name, t, DType::kF32);
}

// The gated activation's operands: of one activation dtype and one shape of `rank` dimensions; out
// contiguous; gate and up with a contiguous last dimension and any strides above it, so they can
// be the two halves of one fused gate|up GEMM output. out may alias gate only when gate is
// contiguous too (a strided gate laid over a contiguous out would be overwritten before it is read).
void check_gated(const char* op, const Tensor& gate, const Tensor& up, const Tensor& out, int rank) {
  check_act(op, "gate", gate);
  detail::check_rank(op, "gate", gate, rank);
  detail::check_last_dim_contiguous(op, "gate", gate);
  detail::check_dtype(op, "up", up, gate.dtype());
  detail::check_shape(op, "up", up, gate.shape());
  detail::check_last_dim_contiguous(op, "up", up);
  detail::check_dtype(op, "out", out, gate.dtype());
  detail::check_shape(op, "out", out, gate.shape());
  detail::check_contiguous(op, "out", out);
  if (out.raw_data() == gate.raw_data() && !gate.is_contiguous())
    fail(op, "out may alias gate only when gate is contiguous");
}

}  // namespace

void embedding(const Tensor& ids, const Weight& table, Tensor& out) {
  constexpr const char* op = "embedding";
  detail::check_rank(op, "ids", ids, 1);
  if (ids.dtype() != DType::kI32 && ids.dtype() != DType::kI64)
    fail(op, fmt::format("ids must be i32 or i64, got {}", dtype_name(ids.dtype())));
  detail::check_weight(op, "table", table);
  check_act(op, "out", out);
  detail::check_shape(op, "out", out, {ids.size(0), table.cols()});
  detail::check_contiguous(op, "out", out);
  if (!detail::all_on_cpu(op, {&ids, &table.weight, &table.scale_inv, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    // Out-of-range ids give zero rows on the device (a kernel cannot throw); see ops/cuda/embedding.h.
    return cuda::embedding(ids, table, out);
#else
    detail::no_cuda(op);
#endif
  }
  cpu::embedding(ids, table, out);
}

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  constexpr const char* op = "rms_norm";
  check_act(op, "x", x);
  detail::check_rank(op, "x", x, 2);
  detail::check_last_dim_contiguous(op, "x", x);
  const int64_t d = x.size(1);
  detail::check_shape(op, "weight", weight, {d});
  if (!detail::is_float_dtype(weight.dtype()) || weight.dtype() == DType::kF8E4M3)
    fail(op, fmt::format("weight must be f32, bf16 or f16, got {}", dtype_name(weight.dtype())));
  check_act(op, "out", out);
  detail::check_shape(op, "out", out, x.shape());
  detail::check_last_dim_contiguous(op, "out", out);
  if (!(eps >= 0.0f)) fail(op, fmt::format("eps must be >= 0, got {}", eps));
  if (!detail::all_on_cpu(op, {&x, &weight, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::rms_norm(x, weight, eps, out);
#else
    detail::no_cuda(op);
#endif
  }
  cpu::rms_norm(x, weight, eps, out);
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  constexpr const char* op = "silu_mul";
  check_gated(op, gate, up, out, 2);
  if (!detail::all_on_cpu(op, {&gate, &up, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::silu_mul(gate, up, out);
#else
    detail::no_cuda(op);
#endif
  }
  cpu::silu_mul(gate, up, out);
}

void silu_mul_masked(const Tensor& gate, const Tensor& up, const Tensor& counts, Tensor& out) {
  constexpr const char* op = "silu_mul_masked";
  check_gated(op, gate, up, out, 3);
  detail::check_dtype(op, "counts", counts, DType::kI32);
  detail::check_shape(op, "counts", counts, {gate.size(0)});
  if (!detail::all_on_cpu(op, {&gate, &up, &counts, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::silu_mul_masked(gate, up, counts, out);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t M = gate.size(1);
  for (int64_t g = 0; g < gate.size(0); ++g) {
    const int64_t rows = std::clamp<int64_t>(counts.data<int32_t>()[g], 0, M);
    if (rows == 0) continue;
    Tensor o = out.select(g).slice(0, 0, rows);
    cpu::silu_mul(gate.select(g).slice(0, 0, rows), up.select(g).slice(0, 0, rows), o);
  }
}

void add_inplace(Tensor& y, const Tensor& x) {
  constexpr const char* op = "add_inplace";
  check_act(op, "y", y);
  detail::check_contiguous(op, "y", y);
  detail::check_dtype(op, "x", x, y.dtype());
  detail::check_shape(op, "x", x, y.shape());
  detail::check_contiguous(op, "x", x);
  if (!detail::all_on_cpu(op, {&y, &x})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::add_inplace(y, x);
#else
    detail::no_cuda(op);
#endif
  }
  cpu::add_inplace(y, x);
}

void cast(const Tensor& x, Tensor& out) {
  constexpr const char* op = "cast";
  const bool narrowing = x.dtype() == DType::kF32 && out.dtype() == DType::kBF16;
  if (!narrowing && !(x.dtype() == DType::kBF16 && out.dtype() == DType::kF32))
    fail(op, fmt::format("converts f32 to bf16 or bf16 to f32, got {} to {}", dtype_name(x.dtype()), dtype_name(out.dtype())));
  detail::check_shape(op, "out", out, x.shape());
  detail::check_contiguous(op, "x", x);
  detail::check_contiguous(op, "out", out);
  if (!detail::all_on_cpu(op, {&x, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::cast(x, out);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t n = x.numel();
  if (narrowing) {
    for (int64_t i = 0; i < n; ++i) out.data<uint16_t>()[i] = f32_to_bf16(x.data<float>()[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out.data<float>()[i] = bf16_to_f32(x.data<uint16_t>()[i]);
  }
}

}  // namespace pdserve::ops
