// DeepSeek's expert-parallel load balancer (EPLB): given how many tokens each logical expert of each
// MoE layer received, choose which experts get redundant copies and which GPU holds each copy, so
// that the busiest GPU (which sets the step time) carries as little as possible.
//
// The algorithm and its outputs follow deepseek-ai/EPLB `eplb.py` (which SGLang copies as its
// `deepseek` / `deepseek_hierarchical` algorithms, sglang-spec §8.1), so that a placement computed
// here equals the reference's on inputs without ties (tests/moe/golden checks this). Ties are broken
// towards the lower index everywhere (the reference's torch.sort does not promise an order).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace pdserve::moe {

// Loads or counts per layer and expert: rows x cols, row-major.
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> values;

  Matrix() = default;
  Matrix(int64_t r, int64_t c) : rows(r), cols(c), values(static_cast<size_t>(r * c), 0.0) {}
  double& at(int64_t r, int64_t c) { return values[static_cast<size_t>(r * cols + c)]; }
  double at(int64_t r, int64_t c) const { return values[static_cast<size_t>(r * cols + c)]; }
  std::span<const double> row(int64_t r) const { return {values.data() + r * cols, static_cast<size_t>(cols)}; }
};

// Items of one row packed into packs of equal item count (balanced_packing).
struct Packing {
  std::vector<int> pack_index;    // per item
  std::vector<int> rank_in_pack;  // per item: its slot inside the pack
};

// Puts n items (n divisible by num_packs) into num_packs packs of exactly n/num_packs items, heaviest
// item first into the lightest pack that still has room. One item per pack keeps the input order,
// as the reference's shortcut does.
Packing balanced_packing(std::span<const double> weight, int num_packs);

// Logical experts spread over num_physical >= weight.size() slots (replicate_experts).
struct Replication {
  std::vector<int> physical_to_logical;  // [num_physical]: slots 0..n-1 are experts 0..n-1
  std::vector<int> replica_rank;         // [num_physical]: ordinal of this copy of its expert
  std::vector<int> logical_count;        // [n]: copies of each expert
};

// Each extra slot goes to the expert with the highest load per copy.
Replication replicate_experts(std::span<const double> weight, int num_physical);

enum class EplbAlgorithm {
  kDeepseek,              // global policy: replicate over all slots, pack over all GPUs
  kDeepseekHierarchical,  // groups -> nodes, replicate inside nodes, pack onto each node's GPUs
  kAuto,                  // hierarchical when num_groups % num_nodes == 0, else global (SGLang)
};
Result<EplbAlgorithm> parse_eplb_algorithm(const std::string& name);  // "deepseek" | ... | "auto"
const char* eplb_algorithm_name(EplbAlgorithm a);

struct EplbOptions {
  int num_physical_experts = 0;  // logical + redundant; a multiple of num_gpus
  int num_groups = 1;            // expert groups of the router (DeepSeek-V3: n_group = 8)
  int num_nodes = 1;             // GPUs of one node talk over the fast links
  int num_gpus = 1;              // EP size
  EplbAlgorithm algorithm = EplbAlgorithm::kAuto;
};

// The algorithm actually run for `opts` (auto resolved).
EplbAlgorithm resolve_eplb_algorithm(const EplbOptions& opts);

// A placement of every layer's experts on physical slots; slot p lives on GPU p / (P / num_gpus).
struct Placement {
  int num_layers = 0, num_logical = 0, num_physical = 0;
  std::vector<std::vector<int>> physical_to_logical;                // [layers][P]
  std::vector<std::vector<std::vector<int>>> logical_to_physical;   // [layers][N][max copies], -1 padded
  std::vector<std::vector<int>> logical_count;                      // [layers][N]
};

// rebalance_experts: weight is [layers, logical experts]. Errors (kInvalidArgument) name the
// violated divisibility (experts by groups, groups by nodes, GPUs by nodes, slots by GPUs) or a
// negative / non-finite load.
Result<Placement> rebalance_experts(const Matrix& weight, const EplbOptions& opts);

// How evenly a placement spreads `weight` ([layers, logical]) over num_gpus GPUs, assuming each
// expert's tokens are split evenly over its copies (what dynamic dispatch does on average).
struct Balancedness {
  double mean = 1.0;              // mean over layers with load of (mean GPU load / max GPU load)
  double max_gpu_load = 0.0;      // summed over layers of each layer's busiest GPU
  double mean_gpu_load = 0.0;     // summed over layers of each layer's average GPU load
  std::vector<double> per_layer;  // mean/max per layer; 1.0 for layers without load
};
Result<Balancedness> compute_balancedness(const Matrix& weight,
                                          const std::vector<std::vector<int>>& physical_to_logical,
                                          int num_gpus);

}  // namespace pdserve::moe
