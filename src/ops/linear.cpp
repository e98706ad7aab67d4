#include "ops/linear.h"

#include "ops/check.h"
#include "ops/cpu/linear.h"
#ifdef PDSERVE_HAVE_CUDA
#include <utility>

#include "ops/cuda/linear.h"
#endif

namespace pdserve::ops {

using detail::fail;

namespace {

void check_linear(const char* op, const Tensor& x, const Weight& w, const Tensor& y) {
  detail::check_weight(op, "W", w);
  detail::check_rank(op, "x", x, 2);
  detail::check_contiguous(op, "x", x);
  if (x.size(1) != w.cols())
    fail(op, fmt::format("x {} does not match W {} (in-features)", shape_to_string(x.shape()),
                         shape_to_string(w.weight.shape())));
  detail::check_shape(op, "y", y, {x.size(0), w.rows()});
  detail::check_contiguous(op, "y", y);
}

}  // namespace

void linear_add(const Tensor& x, const Weight& w, Tensor& y) {
  constexpr const char* op = "linear_add";
  check_linear(op, x, w, y);
  detail::check_dtype(op, "y", y, DType::kF32);
  if (!detail::all_on_cpu(op, {&x, &w.weight, &w.scale_inv, &y})) {
#ifdef PDSERVE_HAVE_CUDA
    if (x.dtype() != DType::kF32 && x.dtype() != DType::kBF16)
      fail(op, fmt::format("x must be f32 or bf16 on the GPU, got {}", dtype_name(x.dtype())));
    return cuda::linear(x, w, y, /*accumulate=*/true);
#else
    detail::no_cuda(op);
#endif
  }
  detail::check_dtype(op, "x", x, DType::kF32);
  Tensor product = Tensor::empty(y.shape(), DType::kF32);
  cpu::linear(x, w, product);
  float* yp = y.data<float>();
  const float* pp = product.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) yp[i] += pp[i];
}

void linear(const Tensor& x, const Weight& w, Tensor& y) {
  constexpr const char* op = "linear";
  check_linear(op, x, w, y);
  if (!detail::all_on_cpu(op, {&x, &w.weight, &w.scale_inv, &y})) {
#ifdef PDSERVE_HAVE_CUDA
    // The GPU path also takes bf16 activations (the GPU model keeps them in bf16).
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"x", &x}, {"y", &y}})
      if (t->dtype() != DType::kF32 && t->dtype() != DType::kBF16)
        fail(op, fmt::format("{} must be f32 or bf16 on the GPU, got {}", name, dtype_name(t->dtype())));
    return cuda::linear(x, w, y);
#else
    detail::no_cuda(op);
#endif
  }
  detail::check_dtype(op, "x", x, DType::kF32);
  detail::check_dtype(op, "y", y, DType::kF32);
  cpu::linear(x, w, y);
}

void per_head_matmul(const Tensor& a, const Tensor& b, bool transpose_b, Tensor& out) {
  constexpr const char* op = "per_head_matmul";
  detail::check_dtype(op, "a", a, DType::kF32);
  detail::check_dtype(op, "b", b, DType::kF32);
  detail::check_dtype(op, "out", out, DType::kF32);
  detail::check_rank(op, "a", a, 3);
  detail::check_rank(op, "b", b, 3);
  detail::check_last_dim_contiguous(op, "a", a);
  detail::check_contiguous(op, "b", b);
  const int64_t t = a.size(0), h = a.size(1), p = a.size(2);
  const int64_t b_inner = transpose_b ? b.size(2) : b.size(1);
  if (b.size(0) != h || b_inner != p)
    fail(op, fmt::format("a {} does not match b {} (transpose_b={})", shape_to_string(a.shape()),
                         shape_to_string(b.shape()), transpose_b));
  const int64_t q = transpose_b ? b.size(1) : b.size(2);
  detail::check_shape(op, "out", out, {t, h, q});
  detail::check_contiguous(op, "out", out);
  if (!detail::all_on_cpu(op, {&a, &b, &out})) detail::no_cuda(op);
  cpu::per_head_matmul(a, b, transpose_b, out);
}

}  // namespace pdserve::ops
