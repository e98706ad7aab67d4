#include "moe/ep_model_experts.h"

#include "base/logging.h"

namespace pdserve::moe {

Result<std::unique_ptr<EpModelExperts>> EpModelExperts::create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                               parallel::Communicator& ep, parallel::DeepEpMode mode,
                                                               EpMoeOptions opts) {
  const auto& cfg = model->config();
  auto e = std::unique_ptr<EpModelExperts>(new EpModelExperts());
  e->geo_.num_experts = cfg.n_routed_experts;
  e->geo_.ep_size = ep.size();
  e->geo_.ep_rank = ep.rank();
  if (cfg.n_routed_experts % ep.size() != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "expert parallelism needs the model's {} routed experts to split evenly over --ep-size {}",
                      cfg.n_routed_experts, ep.size());
  PDSERVE_RETURN_IF_ERROR(e->geo_.validate());
  const auto& layers = model->weights().layers;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!layers[l].is_moe) continue;
    PDSERVE_ASSIGN_OR_RETURN(auto mine, local_experts(layers[l].moe.experts, e->geo_));
    PDSERVE_ASSIGN_OR_RETURN(EpMoe m, EpMoe::create(e->geo_, std::move(mine), opts));
    e->layers_.emplace(static_cast<int64_t>(l), std::move(m));
  }
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
  return it->second.forward(*ep_, step_mode_, x, topk_ids, topk_weights, out);
}

}  // namespace pdserve::moe
