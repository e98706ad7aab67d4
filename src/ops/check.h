// Argument checks shared by the public op entry points. Every failure names the op, so a shape
// error deep inside a forward pass says which call was wrong.
#pragma once

#include <initializer_list>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "tensor/tensor.h"

namespace pdserve::ops::detail {

[[noreturn]] inline void fail(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string(op) + ": " + msg);
}

inline void check_defined(const char* op, const char* name, const Tensor& t) {
  if (!t.defined()) fail(op, fmt::format("{} is undefined", name));
}

inline void check_dtype(const char* op, const char* name, const Tensor& t, DType want) {
  check_defined(op, name, t);
  if (t.dtype() != want)
    fail(op, fmt::format("{} must be {}, got {} {}", name, dtype_name(want), dtype_name(t.dtype()),
                         shape_to_string(t.shape())));
}

inline bool is_float_dtype(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16 || t == DType::kF8E4M3;
}

inline void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank) {
  check_defined(op, name, t);
  if (t.dim() != rank) fail(op, fmt::format("{} must have {} dims, got {}", name, rank, shape_to_string(t.shape())));
}

inline void check_shape(const char* op, const char* name, const Tensor& t, const Shape& want) {
  check_defined(op, name, t);
  if (t.shape() != want)
    fail(op, fmt::format("{} must be {}, got {}", name, shape_to_string(want), shape_to_string(t.shape())));
}

inline void check_contiguous(const char* op, const char* name, const Tensor& t) {
  if (!t.is_contiguous()) fail(op, fmt::format("{} {} must be contiguous", name, shape_to_string(t.shape())));
}

// The innermost dim must be unit-stride; outer dims may be strided (views into wider buffers).
inline void check_last_dim_contiguous(const char* op, const char* name, const Tensor& t) {
  if (t.dim() > 0 && t.size(-1) > 1 && t.strides().back() != 1)
    fail(op, fmt::format("{} {} needs a unit-stride last dim", name, shape_to_string(t.shape())));
}

// A Weight [out, in]: floating dtype, contiguous, and for fp8 a block-scale tensor of the right size.
inline void check_weight(const char* op, const char* name, const Weight& w) {
  check_rank(op, name, w.weight, 2);
  check_contiguous(op, name, w.weight);
  if (!is_float_dtype(w.weight.dtype()))
    fail(op, fmt::format("{} has non-floating dtype {}", name, dtype_name(w.weight.dtype())));
  if (!w.is_block_fp8()) return;
  const Shape want = {(w.rows() + Weight::kBlock - 1) / Weight::kBlock, (w.cols() + Weight::kBlock - 1) / Weight::kBlock};
  if (!w.scale_inv.defined())
    fail(op, fmt::format("fp8 {} {} has no scale_inv", name, shape_to_string(w.weight.shape())));
  if (w.scale_inv.dtype() != DType::kF32 || w.scale_inv.shape() != want || !w.scale_inv.is_contiguous())
    fail(op, fmt::format("fp8 {} {} needs contiguous f32 scale_inv {}, got {} {}", name,
                         shape_to_string(w.weight.shape()), shape_to_string(want), dtype_name(w.scale_inv.dtype()),
                         shape_to_string(w.scale_inv.shape())));
}

// True when every defined tensor lives on the host. Mixed host/device arguments are a caller bug.
inline bool all_on_cpu(const char* op, std::initializer_list<const Tensor*> ts) {
  bool any_cpu = false, any_dev = false;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    (t->device() == Device::kCpu ? any_cpu : any_dev) = true;
  }
  if (any_cpu && any_dev) fail(op, "arguments are on different devices");
  return !any_dev;
}

[[noreturn]] inline void no_cuda(const char* op) {
  throw std::runtime_error(std::string(op) + ": no CUDA implementation in this build");
}

}  // namespace pdserve::ops::detail
