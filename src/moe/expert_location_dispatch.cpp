#include "moe/expert_location_dispatch.h"

#include <algorithm>

namespace pdserve::moe {

Result<DispatchAlgorithm> parse_dispatch_algorithm(const std::string& name) {
  if (name == "static") return DispatchAlgorithm::kStatic;
  if (name == "dynamic" || name == "random") return DispatchAlgorithm::kDynamic;
  if (name == "fake") return DispatchAlgorithm::kFake;
  return make_error(ErrorCode::kInvalidArgument, "--ep-dispatch-algorithm must be static, dynamic or fake, got '{}'",
                    name);
}

const char* dispatch_algorithm_name(DispatchAlgorithm a) {
  switch (a) {
    case DispatchAlgorithm::kStatic: return "static";
    case DispatchAlgorithm::kDynamic: return "dynamic";
    case DispatchAlgorithm::kFake: return "fake";
  }
  return "?";
}

ExpertDispatcher::ExpertDispatcher(std::shared_ptr<const ExpertLocation> location, DispatchAlgorithm algorithm,
                                   int ep_rank, uint64_t seed)
    : algorithm_(algorithm), ep_rank_(ep_rank), rng_(seed + static_cast<uint64_t>(ep_rank)) {
  set_location(std::move(location));
}

void ExpertDispatcher::set_location(std::shared_ptr<const ExpertLocation> location) {
  location_ = std::move(location);
  static_map_.clear();
  if (algorithm_ == DispatchAlgorithm::kStatic) static_map_ = location_->static_dispatch_map(ep_rank_);
}

void ExpertDispatcher::to_physical(int layer, std::span<int32_t> ids) {
  if (algorithm_ == DispatchAlgorithm::kStatic) {
    const auto& row = static_map_[layer];
    for (int32_t& id : ids) id = id < 0 ? id : row[id];  // -1: no expert (a padding row)
    return;
  }
  for (int32_t& id : ids) {
    if (id < 0) continue;
    const auto& copies = location_->replicas(layer, id);
    id = copies.size() == 1 ? copies[0] : copies[rng_() % copies.size()];
  }
}

void ExpertDispatcher::counts_to_physical(int layer, std::span<const int64_t> logical_counts,
                                          std::span<int64_t> physical_counts) {
  std::vector<int> order;  // reused: this runs for every MoE layer of every recorded pass
  for (size_t e = 0; e < logical_counts.size(); ++e) {
    const int64_t c = logical_counts[e];
    if (c == 0) continue;
    if (algorithm_ == DispatchAlgorithm::kStatic) {
      physical_counts[static_cast<size_t>(static_map_[layer][e])] += c;
      continue;
    }
    const auto& copies = location_->replicas(layer, static_cast<int>(e));
    if (copies.size() == 1) {
      physical_counts[static_cast<size_t>(copies[0])] += c;
      continue;
    }
    const int64_t n = static_cast<int64_t>(copies.size()), each = c / n;
    for (int p : copies) physical_counts[static_cast<size_t>(p)] += each;
    // The remainder to distinct copies: a partial shuffle's first `c % n` entries.
    order.assign(copies.begin(), copies.end());
    for (int64_t i = 0; i < c % n; ++i) {
      std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(i + static_cast<int64_t>(rng_() % (n - i)))]);
      physical_counts[static_cast<size_t>(order[static_cast<size_t>(i)])] += 1;
    }
  }
}

void fake_routing(std::span<int32_t> ids, int top_k, int num_logical, std::mt19937_64& rng) {
  std::vector<int32_t> all(num_logical);
  for (int e = 0; e < num_logical; ++e) all[e] = e;
  for (size_t t = 0; t + top_k <= ids.size(); t += top_k) {
    // Partial Fisher-Yates: the first top_k of a shuffle are a uniform sample without repetition.
    for (int k = 0; k < top_k; ++k) {
      std::uniform_int_distribution<int> pick(k, num_logical - 1);
      std::swap(all[k], all[pick(rng)]);
    }
    std::copy(all.begin(), all.begin() + top_k, ids.begin() + static_cast<std::ptrdiff_t>(t));
    std::sort(ids.begin() + static_cast<std::ptrdiff_t>(t), ids.begin() + static_cast<std::ptrdiff_t>(t + top_k));
  }
}

}  // namespace pdserve::moe
