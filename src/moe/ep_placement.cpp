#include "moe/ep_placement.h"

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

}  // namespace pdserve::moe
