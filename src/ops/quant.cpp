#include "ops/quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/check.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/quant.h"
#endif

namespace pdserve::ops {

namespace {

constexpr int64_t kGroup = 128;

// The reference: row by row, group by group, exactly the arithmetic of model-spec §4.2.
void quantize_cpu(const Tensor& x, Tensor& q, Tensor& scales) {
  const int64_t m = x.size(0), k = x.size(1), groups = (k + kGroup - 1) / kGroup;
  std::vector<float> row(static_cast<size_t>(k));
  uint8_t* qd = q.data<uint8_t>();
  float* sd = scales.data<float>();
  for (int64_t r = 0; r < m; ++r) {
    convert_to_f32(x.dtype(), static_cast<const char*>(x.raw_data()) + r * k * dtype_size(x.dtype()), row.data(),
                   static_cast<size_t>(k));
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * kGroup, c1 = std::min(k, c0 + kGroup);
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(row[c]));
      amax = std::fmax(amax, 1e-4f);
      const float s = amax / kFp8E4M3Max;
      for (int64_t c = c0; c < c1; ++c) qd[r * k + c] = f32_to_fp8e4m3(row[c] / s);
      sd[g * m + r] = s;
    }
  }
}

}  // namespace

void quantize_fp8_per_token_group(const Tensor& x, Tensor& q, Tensor& scales) {
  constexpr const char* op = "quantize_fp8_per_token_group";
  detail::check_rank(op, "x", x, 2);
  detail::check_contiguous(op, "x", x);
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kBF16)
    detail::fail(op, fmt::format("x must be f32 or bf16, got {}", dtype_name(x.dtype())));
  const int64_t m = x.size(0), k = x.size(1);
  detail::check_dtype(op, "q", q, DType::kF8E4M3);
  detail::check_shape(op, "q", q, {m, k});
  detail::check_contiguous(op, "q", q);
  detail::check_dtype(op, "scales", scales, DType::kF32);
  detail::check_shape(op, "scales", scales, {(k + kGroup - 1) / kGroup, m});
  detail::check_contiguous(op, "scales", scales);
  if (!detail::all_on_cpu(op, {&x, &q, &scales})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::quantize_fp8_per_token_group(x, q, scales);
#else
    detail::no_cuda(op);
#endif
  }
  quantize_cpu(x, q, scales);
}

}  // namespace pdserve::ops
