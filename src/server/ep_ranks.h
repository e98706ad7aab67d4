// Expert parallelism inside one server process (docs/parallel.md §6): the DP ranks of
// --tp N --dp N --enable-dp-attention --moe-a2a-backend deepep as CPU ranks, each with its slice of
// every MoE layer's routed experts (moe::EpModelExperts) and its hook into the group's lockstep
// (scheduler::StepSync over the EP communicator of a parallel::LocalWorld).
//
// Collective timeout: half of --watchdog-timeout, so that a stalled or dead rank turns into a
// clear error (requests answered, the message naming the ranks that did not arrive) before the
// watchdog ends the process.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/deepseek_v3.h"
#include "parallel/local_world.h"
#include "scheduler/step_sync.h"

namespace pdserve::server {

class EpRanks {
 public:
  // Every rank of `layout` (one process, all nodes' ranks here). `max_dispatch_tokens_per_rank`:
  // the low-latency buffers (SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK).
  static Result<std::unique_ptr<EpRanks>> create(const parallel::RankLayout& layout,
                                                 std::shared_ptr<const model::DeepseekV3Model> model,
                                                 std::chrono::milliseconds timeout, int64_t max_dispatch_tokens_per_rank);
  ~EpRanks();

  std::shared_ptr<model::RoutedExperts> experts(int rank) const { return ranks_.at(static_cast<size_t>(rank)).experts; }
  std::shared_ptr<scheduler::StepSync> sync(int rank) const { return ranks_.at(static_cast<size_t>(rank)).sync; }
  // Breaks every group (blocked ranks return errors naming `reason`).
  void abort(const std::string& reason);

 private:
  struct Rank {
    std::shared_ptr<model::RoutedExperts> experts;
    std::shared_ptr<scheduler::StepSync> sync;
  };
  EpRanks() = default;
  std::unique_ptr<parallel::LocalWorld> world_;
  std::vector<Rank> ranks_;
};

}  // namespace pdserve::server
