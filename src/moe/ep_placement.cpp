#include "moe/ep_placement.h"

#include <algorithm>

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

ReplicaTables replica_tables(const ExpertLocation& location, int layer, int64_t columns) {
  const int64_t logical = location.layout().num_logical;
  int64_t most = 1;
  for (int e = 0; e < logical; ++e) most = std::max<int64_t>(most, static_cast<int64_t>(location.replicas(layer, e).size()));
  if (columns > 0) most = std::max(most, columns);  // never fewer than an expert's copies
  ReplicaTables t{Tensor::empty({logical, most}, DType::kI32), Tensor::empty({logical}, DType::kI32)};
  for (int e = 0; e < logical; ++e) {
    const std::vector<int>& copies = location.replicas(layer, e);
    t.copies.data<int32_t>()[e] = static_cast<int32_t>(copies.size());
    for (int64_t c = 0; c < most; ++c)
      t.replicas.data<int32_t>()[e * most + c] = copies[static_cast<size_t>(c) < copies.size() ? c : 0];
  }
  return t;
}

}  // namespace pdserve::moe
