// Where an EP group's experts live (moe/expert_location.h) as the EP ranks take it: physical
// expert p on rank p / local, holding logical expert location->logical_of(layer, p); after the
// gate each rank maps its tokens' logical experts to physical copies by `algorithm` (static: the
// rank's static dispatch map; dynamic: a random copy per entry). Shared by the CPU ranks
// (moe/ep_model_experts.h) and the GPU ranks (moe/cuda/ep_gpu_experts.h).
#pragma once

#include <memory>

#include "base/status.h"
#include "model/config.h"
#include "moe/expert_location.h"
#include "moe/expert_location_dispatch.h"

namespace pdserve::moe {

// No location: physical = logical (no redundant experts).
struct EpPlacement {
  std::shared_ptr<const ExpertLocation> location;
  DispatchAlgorithm algorithm = DispatchAlgorithm::kStatic;

  int64_t num_physical(const model::ModelConfig& cfg) const {
    return location ? location->layout().num_physical : cfg.n_routed_experts;
  }
};

// The placement's shape against the model's and the group's (and, without one, the routed experts
// against the group size); kInvalidArgument naming what differs. `fake` replaces the routing and
// is refused.
Status check_placement(const EpPlacement& placement, const model::ModelConfig& cfg, int ep_size);

}  // namespace pdserve::moe
