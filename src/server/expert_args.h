// The expert-placement and recorder flags of `pdserve serve` (SGLang's names and defaults,
// sglang-spec §1.3), kept apart from server_args.h so that it stays light.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace pdserve::server {

struct ExpertArgs {
  std::string recorder_mode;           // --expert-distribution-recorder-mode; empty: no recorder
  int64_t recorder_buffer_size = 1000;  // passes; -1 unbounded
  int ep_num_redundant_experts = 0;
  std::string init_expert_location = "trivial";
  std::string eplb_algorithm = "auto";
  std::string ep_dispatch_algorithm = "static";
  bool enable_eplb = false;
  int64_t eplb_rebalance_num_iterations = 1000;
  int64_t eplb_rebalance_layers_per_chunk = -1;
  double eplb_min_rebalancing_utilization_threshold = 1.0;
  bool enable_expert_distribution_metrics = false;  // per-pass balancedness; records from startup
  nlohmann::json to_json() const;
};

void add_expert_flags(CLI::App& app, ExpertArgs& args);

}  // namespace pdserve::server
