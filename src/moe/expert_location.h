// Where each expert lives: the physical <-> logical expert maps of every MoE layer (SGLang's
// ExpertLocationMetadata, sglang-spec §8.2), built trivially, from a given physical_to_logical_map,
// or by running EPLB on recorded counts; and how `--init-expert-location` is read.
//
// Physical expert p lives on EP rank p / num_local_physical. A logical expert may have several
// physical copies; its copies are listed in ascending physical id.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "moe/eplb.h"

namespace pdserve::moe {

// The shape every map of one server shares.
struct ExpertLayout {
  int num_layers = 0;    // all hidden layers (dense ones included, as SGLang counts them)
  int num_logical = 0;   // n_routed_experts
  int num_physical = 0;  // logical + --ep-num-redundant-experts
  int ep_size = 1;
  int num_local_physical() const { return num_physical / ep_size; }
  // kInvalidArgument unless sizes are positive, physical >= logical and physical % ep_size == 0.
  Status validate() const;
};

class ExpertLocation {
 public:
  // Physical p holds logical p % num_logical (redundant slots repeat the first experts), as SGLang.
  static Result<ExpertLocation> trivial(const ExpertLayout& layout);
  // From [layers][physical] logical ids. Every logical expert of every layer needs a copy (a token
  // routed to a missing expert would have nowhere to go); errors name the layer and expert.
  static Result<ExpertLocation> from_mapping(const ExpertLayout& layout,
                                             const std::vector<std::vector<int>>& physical_to_logical);
  // Runs EPLB on counts [layers][logical] (summed over recorded passes by the caller).
  static Result<ExpertLocation> from_counts(const ExpertLayout& layout, const Matrix& logical_count,
                                            EplbOptions opts);

  const ExpertLayout& layout() const { return layout_; }
  int logical_of(int layer, int physical) const { return physical_to_logical_[layer][physical]; }
  const std::vector<std::vector<int>>& physical_to_logical() const { return physical_to_logical_; }
  // Copies of a logical expert, ascending physical id.
  const std::vector<int>& replicas(int layer, int logical) const { return logical_to_all_physical_[layer][logical]; }
  int rank_of_physical(int physical) const { return physical / layout_.num_local_physical(); }
  // Physical experts rank `rank` owns: [rank * local, (rank + 1) * local).
  std::vector<int> local_physical(int rank) const;

  // SGLang's static dispatch map for one EP rank, [layers][logical]: the first copy on the rank
  // itself if it has one, else a copy spread fairly over the ranks that lack one (every copy
  // chosen by about the same number of ranks). Deterministic (seeded); the same policy as SGLang's
  // compute_logical_to_rank_dispatch_physical_map, not its random stream.
  std::vector<std::vector<int>> static_dispatch_map(int ep_rank, uint64_t seed = 42) const;

  // {"physical_to_logical_map": [[...]]}: exactly the keys SGLang's --init-expert-location accepts
  // for a mapping, so the file works with both servers.
  nlohmann::json to_json() const;

 private:
  ExpertLayout layout_;
  std::vector<std::vector<int>> physical_to_logical_;
  std::vector<std::vector<std::vector<int>>> logical_to_all_physical_;
};

// What `--init-expert-location` (or `pdserve eplb --input`) held: a mapping or counts.
struct ExpertLocationSource {
  enum class Kind { kTrivial, kMapping, kCounts } kind = Kind::kTrivial;
  std::vector<std::vector<int>> physical_to_logical;  // kMapping
  // kCounts: [passes][layers][logical] (a 2-D input is one pass), and the summed [layers][logical].
  std::vector<Matrix> passes;
  Matrix summed_counts() const;
  std::string origin;  // for messages: the file name or "inline JSON"
};

// "trivial"; a path ending in .pt (SGLang's torch.save dump), .safetensors (our dump's twin) or
// .json; else inline JSON text. A dict with physical_to_logical_map is a mapping; with
// logical_count ([layers][logical] or [passes][layers][logical]) counts. Errors say what was found.
Result<ExpertLocationSource> read_expert_location_source(const std::string& value);
// The same for an already parsed JSON object.
Result<ExpertLocationSource> expert_location_source_from_json(const nlohmann::json& j, const std::string& origin);

// Builds the server's location: trivial, the mapping (checked against `layout`), or EPLB on the
// counts. Logs SGLang's "init_expert_location from init_by_mapping/init_by_eplb ..." line.
Result<ExpertLocation> build_expert_location(const ExpertLocationSource& source, const ExpertLayout& layout,
                                             const EplbOptions& eplb);

}  // namespace pdserve::moe
