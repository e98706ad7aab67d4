// Flags of `pdserve router`, named and defaulted as sglang_router.launch_router (sglang-spec §3.2),
// so that a launch line written for SGLang works after renaming the program.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/status.h"

namespace pdserve::router {

// One `--prefill URL [BOOTSTRAP_PORT|none]`.
struct PrefillSpec {
  std::string url;
  std::optional<int> bootstrap_port;  // nullopt: "none" or not given (JSON null on the wire)
};

struct RouterArgs {
  // Workers
  std::vector<std::string> worker_urls;  // plain mode
  bool pd_disaggregation = false;
  bool mini_lb = false;  // accepted; MiniLB forced the random policy, we do the same
  std::vector<PrefillSpec> prefill;
  std::vector<std::string> decode;
  // Raw `--prefill` groups as CLI11 collected them; resolve() turns them into `prefill`.
  std::vector<std::vector<std::string>> prefill_groups;

  // Routing policy
  std::string policy = "cache_aware";
  std::string prefill_policy;  // empty: --policy
  std::string decode_policy;   // empty: --policy
  double cache_threshold = 0.3;
  int64_t balance_abs_threshold = 64;
  double balance_rel_threshold = 1.5;
  int64_t eviction_interval_secs = 120;
  int64_t max_tree_size = int64_t{1} << 26;
  bool dp_aware = false;

  // Server
  // Loopback unless --host says otherwise (SGLang binds 0.0.0.0; exposing is an explicit choice here,
  // issue 12; scripts/slurm and scripts/local pass --host).
  std::string host = "127.0.0.1";
  int port = 30000;
  int64_t max_payload_size = int64_t{512} << 20;
  std::string api_key;
  int64_t request_timeout_secs = 1800;
  int64_t worker_startup_timeout_secs = 1800;
  int64_t worker_startup_check_interval = 30;
  std::string log_level = "info";

  // Retries
  int retry_max_retries = 5;
  int64_t retry_initial_backoff_ms = 50;
  int64_t retry_max_backoff_ms = 30000;
  double retry_backoff_multiplier = 1.5;
  double retry_jitter_factor = 0.2;
  bool disable_retries = false;

  // Circuit breaker
  int cb_failure_threshold = 10;
  int cb_success_threshold = 3;
  int64_t cb_timeout_duration_secs = 60;
  int64_t cb_window_duration_secs = 120;
  bool disable_circuit_breaker = false;

  // Health checks
  int health_failure_threshold = 3;
  int health_success_threshold = 2;
  int64_t health_check_timeout_secs = 5;
  int64_t health_check_interval_secs = 60;
  std::string health_check_endpoint = "/health";

  // Concurrency limit and queue
  int64_t max_concurrent_requests = -1;  // <= 0: unlimited
  int64_t queue_size = 100;
  int64_t queue_timeout_secs = 60;

  // Prometheus exporter (a second listener, as the Rust router; /metrics is on --port too)
  std::string prometheus_host = "127.0.0.1";  // as --host: loopback unless asked
  int prometheus_port = 29000;  // 0: an ephemeral port; -1: no separate listener

  // Checks combinations and fills `prefill` from `prefill_groups`; errors name the flag.
  Status resolve();
  const std::string& effective_prefill_policy() const { return prefill_policy.empty() ? policy : prefill_policy; }
  const std::string& effective_decode_policy() const { return decode_policy.empty() ? policy : decode_policy; }
};

void add_router_flags(CLI::App& app, RouterArgs& args);

// "http://10.0.0.1:30000/" -> "http://10.0.0.1:30000": a worker is known by its base URL.
std::string normalize_worker_url(std::string url);

}  // namespace pdserve::router
