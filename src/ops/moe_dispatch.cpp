#include "ops/moe_dispatch.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/check.h"
#include "ops/replica_pick.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/moe_dispatch.h"
#endif

namespace pdserve::ops {

using detail::fail;

namespace {

void check_rows(const char* op, const char* name, const Tensor& t, bool cpu) {
  detail::check_rank(op, name, t, 2);
  detail::check_contiguous(op, name, t);
  if (cpu ? t.dtype() != DType::kF32 : (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16))
    fail(op, fmt::format("{} must be f32{}, got {}", name, cpu ? "" : " or bf16", dtype_name(t.dtype())));
}

void check_ids(const char* op, const Tensor& topk_ids) {
  detail::check_dtype(op, "topk_ids", topk_ids, DType::kI32);
  detail::check_rank(op, "topk_ids", topk_ids, 2);
  detail::check_contiguous(op, "topk_ids", topk_ids);
}

}  // namespace

void moe_count(const Tensor& topk_ids, Tensor& counts) {
  constexpr const char* op = "moe_count";
  check_ids(op, topk_ids);
  detail::check_dtype(op, "counts", counts, DType::kI32);
  detail::check_rank(op, "counts", counts, 1);
  detail::check_contiguous(op, "counts", counts);
  if (!detail::all_on_cpu(op, {&topk_ids, &counts})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::moe_count(topk_ids, counts);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t E = counts.size(0);
  std::memset(counts.raw_data(), 0, counts.nbytes());
  for (int64_t i = 0; i < topk_ids.numel(); ++i) {
    const int32_t e = topk_ids.data<int32_t>()[i];
    if (e >= 0 && e < E) ++counts.data<int32_t>()[e];
  }
}

void moe_drop_padding_rows(const Tensor& seq_lens, Tensor& topk_ids) {
  constexpr const char* op = "moe_drop_padding_rows";
  check_ids(op, topk_ids);
  detail::check_dtype(op, "seq_lens", seq_lens, DType::kI32);
  detail::check_shape(op, "seq_lens", seq_lens, {topk_ids.size(0)});
  detail::check_contiguous(op, "seq_lens", seq_lens);
  if (!detail::all_on_cpu(op, {&seq_lens, &topk_ids})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::moe_drop_padding_rows(seq_lens, topk_ids);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t T = topk_ids.size(0), k = topk_ids.size(1);
  for (int64_t t = 0; t < T; ++t)
    if (seq_lens.data<int32_t>()[t] == 0) std::fill_n(topk_ids.data<int32_t>() + t * k, k, -1);
}

void moe_map_expert_ids(const Tensor& ids, const Tensor& table, Tensor& out) {
  constexpr const char* op = "moe_map_expert_ids";
  check_ids(op, ids);
  check_ids(op, out);
  detail::check_shape(op, "out", out, ids.shape());
  detail::check_dtype(op, "table", table, DType::kI32);
  detail::check_rank(op, "table", table, 1);
  detail::check_contiguous(op, "table", table);
  if (!detail::all_on_cpu(op, {&ids, &table, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::moe_map_expert_ids(ids, table, out);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t n = ids.numel(), L = table.size(0);
  const int32_t* in = ids.data<int32_t>();
  int32_t* o = out.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) o[i] = in[i] >= 0 && in[i] < L ? table.data<int32_t>()[in[i]] : -1;
}

void moe_pick_expert_replicas(const Tensor& ids, const Tensor& replicas, const Tensor& copies, uint64_t seed,
                              Tensor& draw, Tensor& out) {
  constexpr const char* op = "moe_pick_expert_replicas";
  check_ids(op, ids);
  check_ids(op, out);
  detail::check_shape(op, "out", out, ids.shape());
  detail::check_dtype(op, "replicas", replicas, DType::kI32);
  detail::check_rank(op, "replicas", replicas, 2);
  detail::check_contiguous(op, "replicas", replicas);
  if (replicas.size(1) < 1) fail(op, "replicas needs at least one column");
  detail::check_dtype(op, "copies", copies, DType::kI32);
  detail::check_shape(op, "copies", copies, {replicas.size(0)});
  detail::check_dtype(op, "draw", draw, DType::kI64);
  detail::check_shape(op, "draw", draw, {1});
  if (!detail::all_on_cpu(op, {&ids, &replicas, &copies, &draw, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::moe_pick_expert_replicas(ids, replicas, copies, seed, draw, out);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t n = ids.numel(), L = replicas.size(0), C = replicas.size(1);
  const uint64_t d = static_cast<uint64_t>(draw.data<int64_t>()[0]);
  const int32_t* in = ids.data<int32_t>();
  int32_t* o = out.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = in[i];
    if (e < 0 || e >= L) {
      o[i] = -1;
      continue;
    }
    const auto c = static_cast<uint32_t>(std::clamp<int64_t>(copies.data<int32_t>()[e], 1, C));
    o[i] = replicas.data<int32_t>()[e * C + pick_replica(seed, d, static_cast<uint64_t>(i), c)];
  }
  draw.data<int64_t>()[0] += 1;
}

void moe_scatter(const Tensor& x, const Tensor& topk_ids, const Tensor& row_base, Tensor& x_out, Tensor& slots,
                 Tensor& counts) {
  constexpr const char* op = "moe_scatter";
  const bool cpu = detail::all_on_cpu(op, {&x, &topk_ids, &row_base, &x_out, &slots, &counts});
  check_rows(op, "x", x, cpu);
  check_rows(op, "x_out", x_out, cpu);
  check_ids(op, topk_ids);
  if (x_out.dtype() != x.dtype() || x_out.size(1) != x.size(1))
    fail(op, fmt::format("x_out {} {} must have x's dtype and width ({} {})", dtype_name(x_out.dtype()),
                         shape_to_string(x_out.shape()), dtype_name(x.dtype()), shape_to_string(x.shape())));
  if (topk_ids.size(0) != x.size(0))
    fail(op, fmt::format("topk_ids {} and x {} disagree on tokens", shape_to_string(topk_ids.shape()),
                         shape_to_string(x.shape())));
  detail::check_dtype(op, "row_base", row_base, DType::kI32);
  detail::check_rank(op, "row_base", row_base, 1);
  detail::check_dtype(op, "slots", slots, DType::kI32);
  detail::check_shape(op, "slots", slots, topk_ids.shape());
  detail::check_dtype(op, "counts", counts, DType::kI32);
  detail::check_shape(op, "counts", counts, row_base.shape());
  if (!cpu) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::moe_scatter(x, topk_ids, row_base, x_out, slots, counts);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t E = row_base.size(0), K = x.size(1), R = x_out.size(0);
  std::memset(counts.raw_data(), 0, counts.nbytes());
  const int64_t k = topk_ids.size(1);
  for (int64_t i = 0; i < topk_ids.numel(); ++i) {
    const int32_t e = topk_ids.data<int32_t>()[i];
    int32_t slot = -1;
    if (e >= 0 && e < E) {
      const int64_t row = static_cast<int64_t>(row_base.data<int32_t>()[e]) + counts.data<int32_t>()[e]++;
      if (row >= 0 && row < R) {
        slot = static_cast<int32_t>(row);
        std::memcpy(x_out.data<float>() + row * K, x.data<float>() + (i / k) * K, sizeof(float) * K);
      }
    }
    slots.data<int32_t>()[i] = slot;
  }
}

void moe_combine(const Tensor& y, const Tensor& slots, const Tensor& weights, Tensor& out) {
  constexpr const char* op = "moe_combine";
  const bool cpu = detail::all_on_cpu(op, {&y, &slots, &weights, &out});
  check_rows(op, "y", y, cpu);
  detail::check_dtype(op, "slots", slots, DType::kI32);
  detail::check_rank(op, "slots", slots, 2);
  detail::check_contiguous(op, "slots", slots);
  detail::check_dtype(op, "weights", weights, DType::kF32);
  detail::check_shape(op, "weights", weights, slots.shape());
  detail::check_contiguous(op, "weights", weights);
  detail::check_dtype(op, "out", out, DType::kF32);
  detail::check_shape(op, "out", out, {slots.size(0), y.size(1)});
  detail::check_contiguous(op, "out", out);
  if (!cpu) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::moe_combine(y, slots, weights, out);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t T = slots.size(0), k = slots.size(1), N = y.size(1), R = y.size(0);
  std::vector<float> acc(static_cast<size_t>(N));
  for (int64_t t = 0; t < T; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t s = slots.data<int32_t>()[t * k + j];
      if (s < 0 || s >= R) continue;
      const float w = weights.data<float>()[t * k + j];
      const float* row = y.data<float>() + s * N;
      for (int64_t c = 0; c < N; ++c) acc[c] += w * row[c];
    }
    float* dst = out.data<float>() + t * N;
    for (int64_t c = 0; c < N; ++c) dst[c] += acc[c];
  }
}

}  // namespace pdserve::ops
