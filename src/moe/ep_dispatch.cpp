#include "moe/ep_dispatch.h"

#include <cstring>

#include <fmt/format.h>

#include "moe/ep_dispatch_common.h"
#include "ops/moe_dispatch.h"

namespace pdserve::moe {

Status EpGeometry::validate() const {
  if (ep_size < 1 || ep_rank < 0 || ep_rank >= ep_size)
    return make_error(ErrorCode::kInvalidArgument, "EP rank {} of {} is out of range", ep_rank, ep_size);
  if (num_experts < 1 || num_experts % ep_size != 0)
    return make_error(ErrorCode::kInvalidArgument, "{} experts do not split evenly over {} EP ranks", num_experts,
                      ep_size);
  return ok_status();
}

Result<DispatchLayout> get_dispatch_layout(const Tensor& topk_ids, const EpGeometry& geo) {
  PDSERVE_RETURN_IF_ERROR(geo.validate());
  PDSERVE_RETURN_IF_ERROR(detail::check_topk_ids(topk_ids, geo.num_experts));
  const int64_t T = topk_ids.size(0), K = topk_ids.size(1), R = geo.ep_size;
  DispatchLayout l;
  l.tokens_per_rank.assign(static_cast<size_t>(R), 0);
  l.tokens_per_expert.assign(static_cast<size_t>(geo.num_experts), 0);
  l.token_in_rank.assign(static_cast<size_t>(T * R), 0);
  const int32_t* ids = topk_ids.data<int32_t>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = ids[t * K + j];
      if (e < 0) continue;
      ++l.tokens_per_expert[static_cast<size_t>(e)];
      uint8_t& in = l.token_in_rank[static_cast<size_t>(t * R + geo.owner(e))];
      if (!in) ++l.tokens_per_rank[static_cast<size_t>(geo.owner(e))];
      in = 1;
    }
  return l;
}

Result<NormalDispatchResult> NormalDispatcher::dispatch(parallel::Communicator& ep, const Tensor& x,
                                                        const Tensor& topk_ids, const Tensor& topk_weights) {
  const EpGeometry& geo = geo_;
  PDSERVE_RETURN_IF_ERROR(detail::abort_on_error(ep, detail::check_inputs(ep, geo, x, topk_ids, &topk_weights)));
  PDSERVE_ASSIGN_OR_RETURN(DispatchLayout layout, detail::abort_on_error(ep, get_dispatch_layout(topk_ids, geo)));
  const int64_t T = x.size(0), H = x.size(1), K = topk_ids.size(1), R = geo.ep_size;

  // Send buffers grouped by destination rank, tokens in order: x rows, and per row the global ids
  // and the weights (the receiver localises them; DeepEP sends both with the token as well).
  NormalDispatchResult out;
  NormalHandle& h = out.handle;
  h.num_tokens = T;
  h.send_rows = layout.tokens_per_rank;
  int64_t total = 0;
  for (int64_t c : h.send_rows) total += c;
  Tensor send_x = send_x_.view({total, H}, DType::kF32);
  Tensor send_meta = send_meta_.view({total, 2 * K}, DType::kI32);  // ids | weights (bit copies)
  h.send_token.resize(static_cast<size_t>(total));
  {
    std::vector<int64_t> next(static_cast<size_t>(R), 0);
    for (int64_t r = 1; r < R; ++r) next[static_cast<size_t>(r)] = next[static_cast<size_t>(r - 1)] + h.send_rows[static_cast<size_t>(r - 1)];
    for (int64_t r = 0; r < R; ++r)
      for (int64_t t = 0; t < T; ++t) {
        if (!layout.token_in_rank[static_cast<size_t>(t * R + r)]) continue;
        const int64_t row = next[static_cast<size_t>(r)]++;
        h.send_token[static_cast<size_t>(row)] = static_cast<int32_t>(t);
        std::memcpy(send_x.data<float>() + row * H, x.data<float>() + t * H, sizeof(float) * H);
        std::memcpy(send_meta.data<int32_t>() + row * 2 * K, topk_ids.data<int32_t>() + t * K, sizeof(int32_t) * K);
        std::memcpy(send_meta.data<int32_t>() + row * 2 * K + K, topk_weights.data<float>() + t * K, sizeof(float) * K);
      }
  }

  PDSERVE_ASSIGN_OR_RETURN(h.recv_rows, ep.all_to_all_values(h.send_rows));
  int64_t n_recv = 0;
  for (int64_t c : h.recv_rows) n_recv += c;
  out.recv_x = recv_x_.view({n_recv, H}, DType::kF32);
  Tensor recv_meta = recv_meta_.view({n_recv, 2 * K}, DType::kI32);
  PDSERVE_RETURN_IF_ERROR(ep.all_to_all_v(send_x, h.send_rows, out.recv_x, h.recv_rows));
  PDSERVE_RETURN_IF_ERROR(ep.all_to_all_v(send_meta, h.send_rows, recv_meta, h.recv_rows));

  // Global ids -> local ids; weights of other ranks' experts become 0, as DeepEP returns them.
  out.recv_topk_idx = recv_idx_.view({n_recv, K}, DType::kI32);
  out.recv_topk_weights = recv_w_.view({n_recv, K}, DType::kF32);
  out.recv_tokens_per_expert.assign(static_cast<size_t>(geo.local_experts()), 0);
  const int64_t first = geo.first_local_expert(), E_local = geo.local_experts();
  for (int64_t i = 0; i < n_recv; ++i)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = recv_meta.data<int32_t>()[i * 2 * K + j];
      float w = 0.0f;
      std::memcpy(&w, recv_meta.data<int32_t>() + i * 2 * K + K + j, sizeof(float));
      const bool local = e >= first && e < first + E_local;
      out.recv_topk_idx.data<int32_t>()[i * K + j] = local ? static_cast<int32_t>(e - first) : -1;
      out.recv_topk_weights.data<float>()[i * K + j] = local ? w : 0.0f;
      if (local) ++out.recv_tokens_per_expert[static_cast<size_t>(e - first)];
    }
  return out;
}

ContiguousLayout contiguous_layout(const std::vector<int64_t>& tokens_per_expert, int64_t alignment) {
  if (alignment < 1) alignment = 1;
  ContiguousLayout l;
  l.offsets.assign(tokens_per_expert.size() + 1, 0);
  for (size_t g = 0; g < tokens_per_expert.size(); ++g)
    l.offsets[g + 1] = l.offsets[g] + (tokens_per_expert[g] + alignment - 1) / alignment * alignment;
  return l;
}

void to_contiguous(const NormalDispatchResult& d, const ContiguousLayout& layout, Tensor& x_out, Tensor& slots) {
  const int64_t G = static_cast<int64_t>(layout.offsets.size()) - 1, H = d.recv_x.size(1);
  Tensor row_base = Tensor::empty({G}, DType::kI32), counts = Tensor::empty({G}, DType::kI32);
  for (int64_t g = 0; g < G; ++g) {
    row_base.data<int32_t>()[g] = static_cast<int32_t>(layout.offsets[static_cast<size_t>(g)]);
    // Padding rows are computed by the grouped GEMM too: zero them so they stay finite.
    const int64_t pad_from = layout.offsets[static_cast<size_t>(g)] + d.recv_tokens_per_expert[static_cast<size_t>(g)];
    const int64_t pad_to = layout.offsets[static_cast<size_t>(g + 1)];
    std::memset(x_out.data<float>() + pad_from * H, 0, sizeof(float) * static_cast<size_t>((pad_to - pad_from) * H));
  }
  ops::moe_scatter(d.recv_x, d.recv_topk_idx, row_base, x_out, slots, counts);
}

void weighted_sum(const Tensor& y, const Tensor& slots, const NormalDispatchResult& d, Tensor& partial) {
  std::memset(partial.raw_data(), 0, partial.nbytes());
  ops::moe_combine(y, slots, d.recv_topk_weights, partial);
}

Status NormalDispatcher::combine(parallel::Communicator& ep, const NormalHandle& h, const Tensor& partial, Tensor& out) {
  int64_t n_recv = 0, n_back = 0;
  for (int64_t c : h.recv_rows) n_recv += c;
  for (int64_t c : h.send_rows) n_back += c;
  if (!partial.defined() || partial.dim() != 2 || partial.size(0) != n_recv || partial.dtype() != DType::kF32 ||
      !out.defined() || out.dim() != 2 || out.size(0) != h.num_tokens || out.size(1) != partial.size(1) ||
      out.dtype() != DType::kF32)
    return detail::abort_on_error(
        ep, Status(make_error(ErrorCode::kInvalidArgument,
                              "normal combine: partial {} must be [{}, H] f32 and out {} [{}, H] f32",
                              partial.defined() ? shape_to_string(partial.shape()) : "undefined", n_recv,
                              out.defined() ? shape_to_string(out.shape()) : "undefined", h.num_tokens)));
  const int64_t H = partial.size(1);
  Tensor back = back_.view({n_back, H}, DType::kF32);
  // The reverse exchange: what arrived from rank s goes back to s.
  PDSERVE_RETURN_IF_ERROR(ep.all_to_all_v(partial, h.recv_rows, back, h.send_rows));
  for (int64_t row = 0; row < n_back; ++row) {
    float* dst = out.data<float>() + static_cast<int64_t>(h.send_token[static_cast<size_t>(row)]) * H;
    const float* src = back.data<float>() + row * H;
    for (int64_t c = 0; c < H; ++c) dst[c] += src[c];
  }
  return ok_status();
}

}  // namespace pdserve::moe
