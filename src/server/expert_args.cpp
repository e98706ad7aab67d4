#include "server/expert_args.h"

namespace pdserve::server {

using nlohmann::json;

nlohmann::json ExpertArgs::to_json() const {
  return {{"expert_distribution_recorder_mode", recorder_mode.empty() ? json(nullptr) : json(recorder_mode)},
          {"expert_distribution_recorder_buffer_size", recorder_buffer_size},
          {"ep_num_redundant_experts", ep_num_redundant_experts},
          {"init_expert_location", init_expert_location},
          {"eplb_algorithm", eplb_algorithm},
          {"ep_dispatch_algorithm", ep_dispatch_algorithm},
          {"enable_eplb", enable_eplb},
          {"eplb_rebalance_num_iterations", eplb_rebalance_num_iterations},
          {"eplb_rebalance_layers_per_chunk",
           eplb_rebalance_layers_per_chunk < 0 ? json(nullptr) : json(eplb_rebalance_layers_per_chunk)},
          {"eplb_min_rebalancing_utilization_threshold", eplb_min_rebalancing_utilization_threshold},
          {"enable_expert_distribution_metrics", enable_expert_distribution_metrics}};
}

void add_expert_flags(CLI::App& app, ExpertArgs& a) {
  app.add_option("--expert-distribution-recorder-mode", a.recorder_mode,
                 "Record expert usage: stat | stat_approx | per_pass | per_token (default: off)")
      ->check(CLI::IsMember({"stat", "stat_approx", "per_pass", "per_token"}));
  app.add_option("--expert-distribution-recorder-buffer-size", a.recorder_buffer_size,
                 "Forward passes the recorder keeps (-1: unbounded, summed)")->capture_default_str();
  app.add_option("--ep-num-redundant-experts", a.ep_num_redundant_experts,
                 "Extra physical expert slots for copies of hot experts")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--init-expert-location", a.init_expert_location,
                 "trivial | placement or recorded distribution (.json, .safetensors, SGLang .pt) | inline JSON")
      ->capture_default_str();
  app.add_option("--eplb-algorithm", a.eplb_algorithm, "deepseek | deepseek_hierarchical | auto")
      ->capture_default_str()->check(CLI::IsMember({"deepseek", "deepseek_hierarchical", "auto"}));
  app.add_option("--ep-dispatch-algorithm", a.ep_dispatch_algorithm, "Replica choice: static | dynamic | fake")
      ->capture_default_str()->check(CLI::IsMember({"static", "dynamic", "random", "fake"}));
  app.add_flag("--enable-eplb", a.enable_eplb,
               "Online expert rebalancing from the recorded window (records in stat mode unless a mode is given)");
  app.add_option("--eplb-rebalance-num-iterations", a.eplb_rebalance_num_iterations,
                 "Forward passes between online rebalances")->capture_default_str();
  app.add_option("--eplb-rebalance-layers-per-chunk", a.eplb_rebalance_layers_per_chunk,
                 "Layers whose new placement is applied per forward pass (default: all at once)");
  app.add_option("--eplb-min-rebalancing-utilization-threshold", a.eplb_min_rebalancing_utilization_threshold,
                 "Skip a rebalance while the window's balancedness is above this (1.0: never skip)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app.add_flag("--enable-expert-distribution-metrics", a.enable_expert_distribution_metrics,
               "Log each forward pass's expert balancedness (or, with SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC=1, "
               "the sglang:eplb_balancedness summary); records in stat mode from startup");
}

}  // namespace pdserve::server
