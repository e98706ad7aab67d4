// Expert parallelism inside one server process (docs/parallelism.md §6, §8): the DP ranks of
// --tp N --dp N --enable-dp-attention --moe-a2a-backend deepep, each with its slice of every MoE
// layer's routed experts and its hook into the group's lockstep (scheduler::StepSync over the EP
// communicator of a parallel::LocalWorld). On CPU ranks the experts exchange tokens through that
// communicator (moe::EpModelExperts); on GPU ranks through the low-latency dispatch/combine
// kernels of one moe::gpu::LowLatencyGpuGroup (moe::gpu::GpuEpExperts), rank r on GPU
// base_gpu_id + r, or all on base_gpu_id when fewer GPUs are visible.
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
#include "moe/ep_placement.h"
#include "parallel/local_world.h"
#include "scheduler/step_sync.h"

namespace pdserve::server {

struct EpRanksOptions {
  std::chrono::milliseconds timeout{10000};  // every collective and exchange wait
  int64_t max_dispatch_tokens_per_rank = 128;  // the low-latency buffers (SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK)
  std::string device = "cpu";  // "cpu" or "cuda" (then base_gpu_id is the first GPU)
  int base_gpu_id = 0;
  // GPU ranks: the largest forward pass of one rank; they get a normal-mode exchange for passes
  // of up to that many tokens unless --deepep-mode is low_latency.
  int64_t max_forward_tokens = 0;
  moe::EpPlacement placement;  // where the experts live (none: physical = logical)
};

class EpRanks {
 public:
  // Every rank of `layout` (one process, all nodes' ranks here).
  static Result<std::unique_ptr<EpRanks>> create(const parallel::RankLayout& layout,
                                                 std::shared_ptr<const model::DeepseekV3Model> model,
                                                 const EpRanksOptions& opts);
  ~EpRanks();

  std::shared_ptr<model::RoutedExperts> experts(int rank) const { return ranks_.at(static_cast<size_t>(rank)).experts; }
  std::shared_ptr<scheduler::StepSync> sync(int rank) const { return ranks_.at(static_cast<size_t>(rank)).sync; }
  bool on_gpu() const { return gpu_group_ != nullptr; }
  // GPU ranks: the CUDA device of each rank.
  int gpu(int rank) const { return gpus_.at(static_cast<size_t>(rank)); }
  int size() const { return static_cast<int>(ranks_.size()); }
  // The low-latency buffers' tokens per rank: the largest decode batch a graph may be captured for.
  int64_t max_dispatch_tokens_per_rank() const { return opts_.max_dispatch_tokens_per_rank; }
  // Breaks every group (blocked ranks return errors naming `reason`).
  void abort(const std::string& reason);

 private:
  struct Rank {
    std::shared_ptr<model::RoutedExperts> experts;
    std::shared_ptr<scheduler::StepSync> sync;
  };
  EpRanks() = default;
  Status create_gpu_group(const parallel::RankLayout& layout, const model::DeepseekV3Model& model);
  Result<std::shared_ptr<model::RoutedExperts>> gpu_experts(std::shared_ptr<const model::DeepseekV3Model> model, int rank,
                                                            parallel::DeepEpMode mode);
  std::unique_ptr<parallel::LocalWorld> world_;
  // The moe::gpu::LowLatencyGpuGroup (no CUDA types in this header); declared before ranks_ so
  // that it outlives the experts holding its rank handles.
  std::shared_ptr<void> gpu_group_;
  std::shared_ptr<void> gpu_normal_group_;  // moe::gpu::NormalGpuGroup, or none (--deepep-mode low_latency)
  std::vector<int> gpus_;
  std::vector<Rank> ranks_;
  EpRanksOptions opts_;
};

}  // namespace pdserve::server
