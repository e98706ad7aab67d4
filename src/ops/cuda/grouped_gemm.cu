// Grouped expert GEMMs as one cuBLASLt GEMM per expert (CUDA 13.0's cuBLASLt has no grouped GEMM
// with block-scaled FP8; its pointer-array batch mode needs equal shapes and host-known sizes).
// Activations are quantized (or converted) by one or a few launches first, then the experts' GEMMs
// run back to back on the current stream.
//
// Masked layout: the per-group counts stay on the device. The quantizer reads them and writes
// q = 0, scale = 0 for rows at or beyond the count, and every group's GEMM runs over all max_m rows,
// so those rows come out as exact zeros with no host synchronization (CUDA-graph friendly). The
// price is that a group with count << max_m costs as much as a full one.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/quant.h"

namespace pdserve::ops::cuda {

namespace {

using detail::kQuantGroup;

const char* byte_ptr(const Tensor& t) { return static_cast<const char*>(t.raw_data()); }
char* byte_ptr(Tensor& t) { return static_cast<char*>(t.raw_data()); }

void require_fp8_k(const char* op, int64_t k) {
  if (k % kQuantGroup != 0)
    throw std::invalid_argument(std::string(op) + ": fp8 experts on CUDA need in-features divisible by 128, got " +
                                std::to_string(k));
}

}  // namespace

void grouped_linear_contiguous(const Tensor& x, const std::vector<int64_t>& offsets, const std::vector<Weight>& experts,
                               Tensor& y) {
  constexpr const char* op = "grouped_linear_contiguous";
  const Weight& w0 = experts.front();
  const int64_t groups = static_cast<int64_t>(experts.size());
  const int64_t m = x.size(0), n = w0.rows(), k = w0.cols();
  const int64_t xes = static_cast<int64_t>(dtype_size(x.dtype())), yes = static_cast<int64_t>(dtype_size(y.dtype()));
  const cudaStream_t stream = current_stream();
  if (m == 0 || n == 0) return;
  if (k == 0) return check(cudaMemsetAsync(y.raw_data(), 0, y.nbytes(), stream), "cudaMemsetAsync");

  if (w0.is_block_fp8()) {
    require_fp8_k(op, k);
    const int64_t kb = k / kQuantGroup;
    // Each expert's rows become their own operand (own padding and M-major scale region).
    std::vector<int64_t> q_off(groups), s_off(groups);
    int64_t q_total = 0, s_total = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t mp = detail::padded_rows(offsets[g + 1] - offsets[g]);
      q_off[g] = q_total;
      s_off[g] = s_total;
      q_total += mp * k;
      s_total += kb * mp;
    }
    const detail::InputScratch sc = detail::reserve_inputs(static_cast<size_t>(q_total), static_cast<size_t>(s_total), 0);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t rows = offsets[g + 1] - offsets[g];
      if (rows == 0) continue;
      detail::QuantJob j;
      j.x = byte_ptr(x) + offsets[g] * k * xes;
      j.x_dtype = x.dtype();
      j.k = k;
      j.rows = rows;
      j.rows_padded = detail::padded_rows(rows);
      j.split = detail::main_rows(rows);
      j.tail_ld = detail::kRowAlign;
      j.q = sc.q + q_off[g];
      j.s = sc.s + s_off[g];
      detail::launch_quantize(j, stream);
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t rows = offsets[g + 1] - offsets[g];
      if (rows == 0) continue;
      detail::fp8_gemm(detail::Fp8Operand{sc.q + q_off[g], sc.s + s_off[g], rows, k}, experts[g],
                       byte_ptr(y) + offsets[g] * n * yes, y.dtype(), n);
    }
    return;
  }

  const DType wt = w0.weight.dtype();
  const char* xin = byte_ptr(x);
  if (x.dtype() != wt) {
    const detail::InputScratch sc = detail::reserve_inputs(0, 0, static_cast<size_t>(m * k) * dtype_size(wt));
    detail::ConvertJob j;
    j.src = x.raw_data();
    j.src_dtype = x.dtype();
    j.src_ld = k;
    j.dst = sc.x;
    j.dst_dtype = wt;
    j.dst_ld = k;
    j.cols = k;
    j.rows = m;
    j.rows_padded = m;
    detail::launch_convert_rows(j, stream);
    xin = static_cast<const char*>(sc.x);
  }
  const int64_t wes = static_cast<int64_t>(dtype_size(wt));
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rows = offsets[g + 1] - offsets[g];
    if (rows == 0) continue;
    detail::dense_gemm(xin + offsets[g] * k * wes, rows, experts[g], byte_ptr(y) + offsets[g] * n * yes, y.dtype(), n);
  }
}

void grouped_linear_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, Tensor& y) {
  constexpr const char* op = "grouped_linear_masked";
  const Weight& w0 = experts.front();
  const int64_t groups = static_cast<int64_t>(experts.size());
  const int64_t max_m = x.size(1), n = w0.rows(), k = w0.cols();
  const int64_t yes = static_cast<int64_t>(dtype_size(y.dtype()));
  const cudaStream_t stream = current_stream();
  if (max_m == 0 || n == 0) return;
  if (k == 0) return check(cudaMemsetAsync(y.raw_data(), 0, y.nbytes(), stream), "cudaMemsetAsync");
  const int32_t* cnt = counts.data<int32_t>();

  if (w0.is_block_fp8()) {
    require_fp8_k(op, k);
    const int64_t kb = k / kQuantGroup, mp = detail::padded_rows(max_m);
    const detail::InputScratch sc =
        detail::reserve_inputs(static_cast<size_t>(groups * mp * k), static_cast<size_t>(groups * kb * mp), 0);
    detail::QuantJob j;
    j.x = x.raw_data();
    j.x_dtype = x.dtype();
    j.x_group_stride = max_m * k;
    j.k = k;
    j.rows = max_m;
    j.counts = cnt;
    j.rows_padded = mp;
    j.split = detail::main_rows(max_m);
    j.tail_ld = detail::kRowAlign;
    j.q = sc.q;
    j.q_group_stride = mp * k;
    j.s = sc.s;
    j.s_group_stride = kb * mp;
    j.groups = groups;
    detail::launch_quantize(j, stream);
    for (int64_t g = 0; g < groups; ++g)
      detail::fp8_gemm(detail::Fp8Operand{sc.q + g * mp * k, sc.s + g * kb * mp, max_m, k}, experts[g],
                       byte_ptr(y) + g * max_m * n * yes, y.dtype(), n);
    return;
  }

  // Dense experts: copy x into the weight's dtype with the rows past each count zeroed, so the
  // GEMMs (over all max_m rows) write zeros there too.
  const DType wt = w0.weight.dtype();
  const int64_t wes = static_cast<int64_t>(dtype_size(wt));
  const detail::InputScratch sc = detail::reserve_inputs(0, 0, static_cast<size_t>(groups * max_m * k * wes));
  detail::ConvertJob j;
  j.src = x.raw_data();
  j.src_dtype = x.dtype();
  j.src_group_stride = max_m * k;
  j.src_ld = k;
  j.dst = sc.x;
  j.dst_dtype = wt;
  j.dst_group_stride = max_m * k;
  j.dst_ld = k;
  j.cols = k;
  j.rows = max_m;
  j.rows_padded = max_m;
  j.counts = cnt;
  j.groups = groups;
  detail::launch_convert_rows(j, stream);
  for (int64_t g = 0; g < groups; ++g)
    detail::dense_gemm(static_cast<const char*>(sc.x) + g * max_m * k * wes, max_m, experts[g],
                       byte_ptr(y) + g * max_m * n * yes, y.dtype(), n);
}

}  // namespace pdserve::ops::cuda
