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
#include "tensor/tensor.h"

namespace pdserve::moe {

class EplbManager;

// No location: physical = logical (no redundant experts).
struct EpPlacement {
  std::shared_ptr<const ExpertLocation> location;
  DispatchAlgorithm algorithm = DispatchAlgorithm::kStatic;
  // --enable-eplb: the rebalancer whose placements the ranks follow step by step (its lockstep
  // form, moe/eplb_manager.h); null: `location` holds for good. Outlives the ranks.
  EplbManager* rebalancer = nullptr;

  int64_t num_physical(const model::ModelConfig& cfg) const {
    return location ? location->layout().num_physical : cfg.n_routed_experts;
  }
};

// The placement's shape against the model's and the group's (and, without one, the routed experts
// against the group size); kInvalidArgument naming what differs. `fake` replaces the routing and
// is refused.
Status check_placement(const EpPlacement& placement, const model::ModelConfig& cfg, int ep_size);

// Dynamic dispatch's table for one layer, on the host: replicas i32 [logical, C] holds each logical
// expert's physical copies in its first copies[e] columns (the rest repeat the first copy),
// copies i32 [logical]; what ops::moe_pick_expert_replicas draws from. C = `columns`, or 0: the
// layer's most copies. A table that must keep its shape across placements (updated in place on a
// GPU) takes max_replica_columns.
struct ReplicaTables {
  Tensor replicas, copies;
};
ReplicaTables replica_tables(const ExpertLocation& location, int layer, int64_t columns = 0);
// The most copies one logical expert can have under any placement of this layout: all redundant
// slots on it, plus its own.
inline int64_t max_replica_columns(const ExpertLayout& l) { return l.num_physical - l.num_logical + 1; }

}  // namespace pdserve::moe
