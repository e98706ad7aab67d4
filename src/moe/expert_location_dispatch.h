// Replica choice: after the router picks logical experts for a token, which physical copy serves
// it (SGLang's --ep-dispatch-algorithm, sglang-spec §8.3).
//   static:  each EP rank always uses the same copy per (layer, expert): its own if it has one
//            (ExpertLocation::static_dispatch_map). No randomness on the hot path.
//   dynamic: a uniformly random copy per token slot (SGLang's old name: random), spreading a hot
//            expert's tokens over all its copies.
//   fake:    for balanced benchmarks: the router's choice is replaced by uniformly random distinct
//            experts (fake_routing), then dispatched as dynamic.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "moe/expert_location.h"

namespace pdserve::moe {

enum class DispatchAlgorithm { kStatic, kDynamic, kFake };
Result<DispatchAlgorithm> parse_dispatch_algorithm(const std::string& name);  // static|dynamic|random|fake
const char* dispatch_algorithm_name(DispatchAlgorithm a);

// One per EP rank (not thread safe: the rank's scheduler thread owns it).
class ExpertDispatcher {
 public:
  ExpertDispatcher(std::shared_ptr<const ExpertLocation> location, DispatchAlgorithm algorithm, int ep_rank,
                   uint64_t seed = 42);

  // Rewrites logical expert ids of `layer` (any number of tokens x top-k, flattened) into physical
  // ids in place. Ids must be valid logical experts (the router produced them).
  void to_physical(int layer, std::span<int32_t> ids);
  // The same for counts: logical_counts [num_logical] (slots per logical expert) added into
  // physical_counts [num_physical]. static: each expert's count to this rank's copy, as
  // to_physical sends every slot; dynamic/fake: spread evenly over the expert's copies, the
  // remainder to copies drawn at random (what to_physical's uniform draws give on average, the
  // total unchanged).
  void counts_to_physical(int layer, std::span<const int64_t> logical_counts, std::span<int64_t> physical_counts);
  // Swaps in a new placement (online rebalancing), recomputing the static map.
  void set_location(std::shared_ptr<const ExpertLocation> location);

  DispatchAlgorithm algorithm() const { return algorithm_; }
  const ExpertLocation& location() const { return *location_; }

 private:
  std::shared_ptr<const ExpertLocation> location_;
  DispatchAlgorithm algorithm_;
  int ep_rank_;
  std::vector<std::vector<int>> static_map_;  // [layers][logical], static only
  std::mt19937_64 rng_;
};

// `fake` routing: each token's top_k experts drawn uniformly without repetition from num_logical.
// `ids` is [tokens][top_k] flattened; every row is sorted, as the model's RoutingTrace rows are.
void fake_routing(std::span<int32_t> ids, int top_k, int num_logical, std::mt19937_64& rng);

}  // namespace pdserve::moe
