#include "moe/ep_moe.h"

#include <exception>
#include <utility>

#include <fmt/format.h>

#include "moe/ep_dispatch_common.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm.h"

namespace pdserve::moe {

Result<std::vector<model::MlpWeights>> local_experts(const std::vector<model::MlpWeights>& all, const EpGeometry& geo) {
  EpGeometry g = geo;
  g.num_experts = static_cast<int64_t>(all.size());
  PDSERVE_RETURN_IF_ERROR(g.validate());
  const auto first = all.begin() + g.first_local_expert();
  return std::vector<model::MlpWeights>(first, first + g.local_experts());
}

Result<EpMoe> EpMoe::create(const EpGeometry& geo, std::vector<model::MlpWeights> experts, EpMoeOptions opts) {
  PDSERVE_RETURN_IF_ERROR(geo.validate());
  if (static_cast<int64_t>(experts.size()) != geo.local_experts())
    return make_error(ErrorCode::kInvalidArgument, "EP rank {} got {} experts, expected {} ({} over {} ranks)",
                      geo.ep_rank, experts.size(), geo.local_experts(), geo.num_experts, geo.ep_size);
  EpMoe m;
  m.geo_ = geo;
  m.opts_ = opts;
  for (const auto& e : experts) {
    if (!e.gate_proj.weight.defined() || !e.up_proj.weight.defined() || !e.down_proj.weight.defined())
      return make_error(ErrorCode::kInvalidArgument, "EP rank {}: an expert has no weights", geo.ep_rank);
    m.gate_.push_back(e.gate_proj);
    m.up_.push_back(e.up_proj);
    m.down_.push_back(e.down_proj);
  }
  m.inter_ = m.gate_.front().rows();
  m.hidden_ = m.gate_.front().cols();
  if (opts.max_dispatch_tokens_per_rank < 1 || opts.max_dispatch_tokens_per_rank > kMaxDispatchTokensPerRankLimit)
    return make_error(ErrorCode::kInvalidArgument, "max dispatch tokens per rank {} must be in [1, {}]",
                      opts.max_dispatch_tokens_per_rank, kMaxDispatchTokensPerRankLimit);
  m.normal_.emplace(geo);
  return m;
}

Status EpMoe::set_experts(std::vector<model::MlpWeights> experts) {
  if (static_cast<int64_t>(experts.size()) != geo_.local_experts())
    return make_error(ErrorCode::kInvalidArgument, "EP rank {} got {} experts, expected {}", geo_.ep_rank,
                      experts.size(), geo_.local_experts());
  for (const auto& e : experts)
    if (!e.gate_proj.weight.defined() || e.gate_proj.rows() != inter_ || e.gate_proj.cols() != hidden_ ||
        !e.up_proj.weight.defined() || e.up_proj.rows() != inter_ || !e.down_proj.weight.defined() ||
        e.down_proj.rows() != hidden_)
      return make_error(ErrorCode::kInvalidArgument, "EP rank {}: a new expert's shape differs from the old ones'",
                        geo_.ep_rank);
  gate_.clear();
  up_.clear();
  down_.clear();
  for (const auto& e : experts) {
    gate_.push_back(e.gate_proj);
    up_.push_back(e.up_proj);
    down_.push_back(e.down_proj);
  }
  return ok_status();
}

Status EpMoe::prepare_low_latency() {
  if (ll_) return ok_status();
  // Allocated on first use: a prefill-only server never needs the slabs, which for DeepSeek-V3
  // shapes (64 local experts x 4 ranks x 128 tokens x 7168) are about a GB each in f32.
  PDSERVE_ASSIGN_OR_RETURN(LowLatencyDispatcher ll,
                           LowLatencyDispatcher::create(geo_, hidden_, opts_.max_dispatch_tokens_per_rank));
  const int64_t G = geo_.local_experts(), slab = geo_.ep_size * opts_.max_dispatch_tokens_per_rank;
  ll_gate_ = Tensor::empty({G, slab, inter_}, DType::kF32);
  ll_up_ = Tensor::empty({G, slab, inter_}, DType::kF32);
  ll_out_ = Tensor::empty({G, slab, hidden_}, DType::kF32);
  ll_.emplace(std::move(ll));
  return ok_status();
}

Status EpMoe::forward(parallel::Communicator& ep, parallel::DeepEpMode mode, const Tensor& x, const Tensor& topk_ids,
                      const Tensor& topk_weights, Tensor& out) {
  PDSERVE_RETURN_IF_ERROR(detail::abort_on_error(ep, detail::check_inputs(ep, geo_, x, topk_ids, &topk_weights)));
  auto bad = [&](const std::string& why) {
    return detail::abort_on_error(ep, Status(Error(ErrorCode::kInvalidArgument, "EP MoE: " + why)));
  };
  if (x.size(1) != hidden_) return bad(fmt::format("x {} does not match hidden {}", shape_to_string(x.shape()), hidden_));
  if (!out.defined() || out.dtype() != DType::kF32 || out.shape() != x.shape() || !out.is_contiguous())
    return bad(fmt::format("out must be f32 shaped like x {}", shape_to_string(x.shape())));
  // The ops throw on shapes they reject; checked above, so an exception here is a bug. It still must
  // not strand the other ranks in the next collective.
  try {
    switch (mode) {
      case parallel::DeepEpMode::kNormal: return forward_normal(ep, x, topk_ids, topk_weights, out);
      case parallel::DeepEpMode::kLowLatency: return forward_low_latency(ep, x, topk_ids, topk_weights, out);
      case parallel::DeepEpMode::kAuto: break;
    }
    return bad("mode auto must be resolved to normal or low_latency by the caller (the same on every rank)");
  } catch (const std::exception& e) {
    return detail::abort_on_error(ep, Status(make_error(ErrorCode::kInternal, "EP MoE: {}", e.what())));
  }
}

Status EpMoe::forward_normal(parallel::Communicator& ep, const Tensor& x, const Tensor& ids, const Tensor& w,
                             Tensor& out) {
  PDSERVE_ASSIGN_OR_RETURN(NormalDispatchResult d, normal_->dispatch(ep, x, ids, w));
  const ContiguousLayout layout = contiguous_layout(d.recv_tokens_per_expert, opts_.expert_alignment);
  const int64_t M = layout.rows(), n_recv = d.recv_x.size(0);
  Tensor xc = scratch_x_.view({M, hidden_}, DType::kF32), slots = scratch_slots_.view(d.recv_topk_idx.shape(), DType::kI32);
  to_contiguous(d, layout, xc, slots);
  Tensor g = scratch_gate_.view({M, inter_}, DType::kF32), u = scratch_up_.view({M, inter_}, DType::kF32);
  ops::grouped_linear_contiguous(xc, layout.offsets, gate_, g);
  ops::grouped_linear_contiguous(xc, layout.offsets, up_, u);
  ops::silu_mul(g, u, g);
  Tensor y = scratch_y_.view({M, hidden_}, DType::kF32);
  ops::grouped_linear_contiguous(g, layout.offsets, down_, y);
  Tensor partial = scratch_partial_.view({n_recv, hidden_}, DType::kF32);
  weighted_sum(y, slots, d, partial);
  return normal_->combine(ep, d.handle, partial, out);
}

Status EpMoe::forward_low_latency(parallel::Communicator& ep, const Tensor& x, const Tensor& ids, const Tensor& w,
                                  Tensor& out) {
  PDSERVE_RETURN_IF_ERROR(detail::abort_on_error(ep, prepare_low_latency()));
  PDSERVE_RETURN_IF_ERROR(ll_->dispatch(ep, x, ids));
  const Tensor& counts = ll_->recv_count();
  ops::grouped_linear_masked(ll_->recv_x(), counts, gate_, ll_gate_);
  ops::grouped_linear_masked(ll_->recv_x(), counts, up_, ll_up_);
  Tensor g2 = ll_gate_.reshape({-1, inter_}), u2 = ll_up_.reshape({-1, inter_});
  ops::silu_mul(g2, u2, g2);  // rows past the counts are zeros from the masked GEMM: silu(0) * 0 = 0
  ops::grouped_linear_masked(ll_gate_, counts, down_, ll_out_);
  return ll_->combine(ep, ll_out_, w, out);
}

}  // namespace pdserve::moe
