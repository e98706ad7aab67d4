#include "moe/ep_model_experts.h"

#include "base/logging.h"

namespace pdserve::moe {

Status check_placement(const EpPlacement& placement, const model::ModelConfig& cfg, int ep_size) {
  if (!placement.location) {
    if (cfg.n_routed_experts % ep_size != 0)
      return make_error(ErrorCode::kInvalidArgument,
                        "expert parallelism needs the model's {} routed experts to split evenly over --ep-size {}",
                        cfg.n_routed_experts, ep_size);
    return ok_status();
  }
  const ExpertLayout& l = placement.location->layout();
  if (l.num_logical != cfg.n_routed_experts || l.num_layers != cfg.num_hidden_layers || l.ep_size != ep_size)
    return make_error(ErrorCode::kInvalidArgument,
                      "the expert placement is for {} layers x {} experts over {} ranks; the model has {} x {} and the "
                      "EP group {} ranks",
                      l.num_layers, l.num_logical, l.ep_size, cfg.num_hidden_layers, cfg.n_routed_experts, ep_size);
  if (placement.algorithm == DispatchAlgorithm::kFake)
    return make_error(ErrorCode::kInvalidArgument,
                      "--ep-dispatch-algorithm fake replaces the routing; with --moe-a2a-backend deepep use static or "
                      "dynamic");
  return ok_status();
}

Result<std::unique_ptr<EpModelExperts>> EpModelExperts::create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                               parallel::Communicator& ep, parallel::DeepEpMode mode,
                                                               EpMoeOptions opts, EpPlacement placement) {
  const auto& cfg = model->config();
  PDSERVE_RETURN_IF_ERROR(check_placement(placement, cfg, ep.size()));
  auto e = std::unique_ptr<EpModelExperts>(new EpModelExperts());
  e->geo_.num_experts = placement.location ? placement.location->layout().num_physical : cfg.n_routed_experts;
  e->geo_.ep_size = ep.size();
  e->geo_.ep_rank = ep.rank();
  PDSERVE_RETURN_IF_ERROR(e->geo_.validate());
  const auto& layers = model->weights().layers;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!layers[l].is_moe) continue;
    std::vector<model::MlpWeights> mine;
    if (placement.location) {
      // Each local physical slot holds the weights of its logical expert (views: a copy of an
      // expert costs no host memory here).
      for (int p : placement.location->local_physical(ep.rank()))
        mine.push_back(layers[l].moe.experts.at(static_cast<size_t>(placement.location->logical_of(static_cast<int>(l), p))));
    } else {
      PDSERVE_ASSIGN_OR_RETURN(mine, local_experts(layers[l].moe.experts, e->geo_));
    }
    PDSERVE_ASSIGN_OR_RETURN(EpMoe m, EpMoe::create(e->geo_, std::move(mine), opts));
    e->layers_.emplace(static_cast<int64_t>(l), std::move(m));
  }
  if (placement.location) e->dispatcher_.emplace(placement.location, placement.algorithm, ep.rank());
  e->model_ = std::move(model);
  e->ep_ = &ep;
  e->configured_ = mode;
  e->opts_ = opts;
  return e;
}

void EpModelExperts::begin_step(int64_t group_max_tokens, bool group_extends) {
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
  auto it = layers_.find(layer);
  if (it == layers_.end())
    return make_error(ErrorCode::kInternal, "EP MoE: layer {} is not a MoE layer of this model", layer);
  if (!dispatcher_) return it->second.forward(*ep_, step_mode_, x, topk_ids, topk_weights, out);
  // The gate chose logical experts; the exchange sends to physical copies.
  Tensor physical = topk_ids.clone();
  dispatcher_->to_physical(static_cast<int>(layer),
                           std::span<int32_t>(physical.data<int32_t>(), static_cast<size_t>(physical.numel())));
  return it->second.forward(*ep_, step_mode_, x, physical, topk_weights, out);
}

}  // namespace pdserve::moe
