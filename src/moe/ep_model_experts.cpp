#include "moe/ep_model_experts.h"

#include <algorithm>
#include <cstring>

#include "base/logging.h"
#include "moe/eplb_manager.h"

namespace pdserve::moe {

Result<std::unique_ptr<EpModelExperts>> EpModelExperts::create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                               parallel::Communicator& ep, parallel::DeepEpMode mode,
                                                               EpMoeOptions opts, EpPlacement placement) {
  const auto& cfg = model->config();
  PDSERVE_RETURN_IF_ERROR(check_placement(placement, cfg, ep.size()));
  auto e = std::unique_ptr<EpModelExperts>(new EpModelExperts());
  e->model_ = model;
  e->geo_.num_experts = placement.num_physical(cfg);
  e->geo_.ep_size = ep.size();
  e->geo_.ep_rank = ep.rank();
  PDSERVE_RETURN_IF_ERROR(e->geo_.validate());
  const auto& layers = model->weights().layers;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!layers[l].is_moe) continue;
    std::vector<model::MlpWeights> mine;
    if (placement.location) {
      mine = e->slot_experts(*placement.location, l);
    } else {
      PDSERVE_ASSIGN_OR_RETURN(mine, local_experts(layers[l].moe.experts, e->geo_));
    }
    PDSERVE_ASSIGN_OR_RETURN(EpMoe m, EpMoe::create(e->geo_, std::move(mine), opts));
    e->layers_.emplace(static_cast<int64_t>(l), std::move(m));
  }
  if (placement.rebalancer && !placement.location)
    return make_error(ErrorCode::kInvalidArgument, "EP MoE: a rebalancer needs the placement it starts from");
  if (placement.location) e->dispatcher_.emplace(placement.location, placement.algorithm, ep.rank());
  if (placement.rebalancer) e->lockstep_.emplace(placement.rebalancer, placement.location);
  e->ep_ = &ep;
  e->configured_ = mode;
  e->opts_ = opts;
  return e;
}

std::vector<model::MlpWeights> EpModelExperts::slot_experts(const ExpertLocation& loc, size_t l) const {
  // Each local physical slot holds the weights of its logical expert (views: a copy of an expert
  // costs no host memory here, and a rebalance moves no bytes).
  std::vector<model::MlpWeights> mine;
  for (int p : loc.local_physical(geo_.ep_rank))
    mine.push_back(model_->weights().layers[l].moe.experts.at(static_cast<size_t>(loc.logical_of(static_cast<int>(l), p))));
  return mine;
}

Status EpModelExperts::follow_rebalancer() {
  const auto sw = lockstep_->begin_step();
  if (!sw) return ok_status();
  const ExpertLocation &from = *sw->from, &to = *sw->to;
  int changed = 0;
  const std::vector<int> slots = to.local_physical(geo_.ep_rank);
  for (auto& [l, moe] : layers_) {
    const int li = static_cast<int>(l);
    const bool same =
        std::all_of(slots.begin(), slots.end(), [&](int p) { return to.logical_of(li, p) == from.logical_of(li, p); });
    if (same) continue;
    PDSERVE_RETURN_IF_ERROR(moe.set_experts(slot_experts(to, static_cast<size_t>(l))));
    ++changed;
  }
  dispatcher_->set_location(sw->to);
  log::debug("EP rank {}: a new placement is in effect ({} layers with new local experts)", geo_.ep_rank, changed);
  return ok_status();
}

void EpModelExperts::begin_step(int64_t group_max_tokens, bool group_extends) {
  if (lockstep_ && !rebalance_error_) {
    // Every rank makes this call once per group step, so every rank swaps at the same step.
    if (Status st = follow_rebalancer(); !st.has_value()) {
      log::error("EP rank {}: the rebalanced placement could not be applied: {}", geo_.ep_rank, st.error().message());
      rebalance_error_ = st;
    }
  }
  step_mode_ = parallel::resolve_deepep_mode(configured_, group_extends);
  if (step_mode_ == parallel::DeepEpMode::kLowLatency && group_max_tokens > opts_.max_dispatch_tokens_per_rank) {
    // Every rank sees the same group_max_tokens, so every rank switches together.
    if (!warned_overflow_)
      log::warning("a pass with {} tokens on one rank exceeds the low-latency buffers "
                   "(SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK={}): such passes run in normal mode",
                   group_max_tokens, opts_.max_dispatch_tokens_per_rank);
    warned_overflow_ = true;
    step_mode_ = parallel::DeepEpMode::kNormal;
  }
}

Status EpModelExperts::forward(int64_t layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                               Tensor& out) {
  if (rebalance_error_) return *rebalance_error_;
  auto it = layers_.find(layer);
  if (it == layers_.end())
    return make_error(ErrorCode::kInternal, "EP MoE: layer {} is not a MoE layer of this model", layer);
  if (!dispatcher_) return it->second.forward(*ep_, step_mode_, x, topk_ids, topk_weights, out);
  // The gate chose logical experts; the exchange sends to physical copies (in a buffer reused
  // layer after layer, not a tensor per layer).
  if (topk_ids.dtype() != DType::kI32 || !topk_ids.is_contiguous())
    return make_error(ErrorCode::kInvalidArgument, "EP MoE: topk_ids must be contiguous i32");
  Tensor physical = mapped_ids_.view(topk_ids.shape(), DType::kI32);
  std::memcpy(physical.raw_data(), topk_ids.raw_data(), topk_ids.nbytes());
  dispatcher_->to_physical(static_cast<int>(layer),
                           std::span<int32_t>(physical.data<int32_t>(), static_cast<size_t>(physical.numel())));
  return it->second.forward(*ep_, step_mode_, x, physical, topk_weights, out);
}

}  // namespace pdserve::moe
