#include "router/router_args.h"

#include <charconv>

#include "base/cli.h"
#include "http/client.h"

namespace pdserve::router {

namespace {

// The Rust router accepts every flag with a `--router-` prefix too (when embedded in
// sglang_router.launch_server); scripts written that way should work unchanged.
std::string names(const std::string& flag) { return "--" + flag + ",--router-" + flag; }

const std::vector<std::string> kPolicies = {"random", "round_robin", "cache_aware", "power_of_two"};

Status bad(const std::string& message) { return Error(ErrorCode::kInvalidArgument, message); }

}  // namespace

std::string normalize_worker_url(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

void add_router_flags(CLI::App& app, RouterArgs& a) {
  app.add_option(names("worker-urls"), a.worker_urls, "Worker base URLs (plain mode)")->expected(0, -1);
  app.add_flag(names("pd-disaggregation"), a.pd_disaggregation, "Route to prefill/decode pairs");
  app.add_flag(names("mini-lb"), a.mini_lb, "MiniLB compatibility: random pairing, as SGLang's debugging balancer");
  app.add_option(names("prefill"), a.prefill_groups, "Prefill worker: URL [BOOTSTRAP_PORT|none] (repeatable)")
      ->expected(1, 2)
      ->allow_extra_args();
  app.add_option(names("decode"), a.decode, "Decode worker URL (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);

  auto policy = CLI::IsMember(kPolicies);
  app.add_option(names("policy"), a.policy, "Load balancing policy")->capture_default_str()->check(policy);
  app.add_option(names("prefill-policy"), a.prefill_policy, "PD: policy for prefill workers (default --policy)")
      ->check(CLI::IsMember({"random", "round_robin", "cache_aware", "power_of_two", "bucket"}));
  app.add_option(names("decode-policy"), a.decode_policy, "PD: policy for decode workers (default --policy)")->check(policy);
  app.add_option(names("cache-threshold"), a.cache_threshold, "cache_aware: prefix match rate that keeps a request on its worker")
      ->capture_default_str();
  app.add_option(names("balance-abs-threshold"), a.balance_abs_threshold, "cache_aware: load gap that counts as imbalance")
      ->capture_default_str();
  app.add_option(names("balance-rel-threshold"), a.balance_rel_threshold, "cache_aware: load ratio that counts as imbalance")
      ->capture_default_str();
  app.add_option(names("eviction-interval-secs"), a.eviction_interval_secs, "cache_aware: seconds between tree evictions")
      ->capture_default_str();
  app.add_option(names("max-tree-size"), a.max_tree_size, "cache_aware: characters kept per worker")->capture_default_str();
  app.add_flag(names("dp-aware"), a.dp_aware, "Accepted; data-parallel ranks are chosen by the server from bootstrap_room");

  app.add_option(names("host"), a.host)->capture_default_str();
  app.add_option(names("port"), a.port)->capture_default_str()->check(CLI::Range(0, 65535));
  app.add_option(names("max-payload-size"), a.max_payload_size, "Largest request body in bytes (larger: 413)")
      ->capture_default_str();
  app.add_option(names("api-key"), a.api_key, "Require 'Authorization: Bearer KEY' (also sent to workers)");
  app.add_option(names("request-timeout-secs"), a.request_timeout_secs)->capture_default_str();
  app.add_option(names("worker-startup-timeout-secs"), a.worker_startup_timeout_secs)->capture_default_str();
  app.add_option(names("worker-startup-check-interval"), a.worker_startup_check_interval)->capture_default_str();
  add_log_level_flag(app, a.log_level);

  app.add_option(names("retry-max-retries"), a.retry_max_retries)->capture_default_str();
  app.add_option(names("retry-initial-backoff-ms"), a.retry_initial_backoff_ms)->capture_default_str();
  app.add_option(names("retry-max-backoff-ms"), a.retry_max_backoff_ms)->capture_default_str();
  app.add_option(names("retry-backoff-multiplier"), a.retry_backoff_multiplier)->capture_default_str();
  app.add_option(names("retry-jitter-factor"), a.retry_jitter_factor)->capture_default_str();
  app.add_flag(names("disable-retries"), a.disable_retries);

  app.add_option(names("cb-failure-threshold"), a.cb_failure_threshold)->capture_default_str();
  app.add_option(names("cb-success-threshold"), a.cb_success_threshold)->capture_default_str();
  app.add_option(names("cb-timeout-duration-secs"), a.cb_timeout_duration_secs)->capture_default_str();
  app.add_option(names("cb-window-duration-secs"), a.cb_window_duration_secs)->capture_default_str();
  app.add_flag(names("disable-circuit-breaker"), a.disable_circuit_breaker);

  app.add_option(names("health-failure-threshold"), a.health_failure_threshold)->capture_default_str();
  app.add_option(names("health-success-threshold"), a.health_success_threshold)->capture_default_str();
  app.add_option(names("health-check-timeout-secs"), a.health_check_timeout_secs)->capture_default_str();
  app.add_option(names("health-check-interval-secs"), a.health_check_interval_secs)->capture_default_str();
  app.add_option(names("health-check-endpoint"), a.health_check_endpoint)->capture_default_str();

  app.add_option(names("max-concurrent-requests"), a.max_concurrent_requests, "-1: unlimited")->capture_default_str();
  app.add_option(names("queue-size"), a.queue_size, "Requests waiting for a slot (beyond: 429)")->capture_default_str();
  app.add_option(names("queue-timeout-secs"), a.queue_timeout_secs, "Longest wait for a slot (then 408)")
      ->capture_default_str();

  app.add_option(names("prometheus-host"), a.prometheus_host)->capture_default_str();
  app.add_option(names("prometheus-port"), a.prometheus_port, "0: ephemeral; -1: only /metrics on --port")
      ->capture_default_str()
      ->check(CLI::Range(-1, 65535));
}

Status RouterArgs::resolve() {
  prefill.clear();  // idempotent: the groups are the source
  for (const auto& g : prefill_groups) {
    if (g.empty() || g.size() > 2) return bad("--prefill takes URL [BOOTSTRAP_PORT|none]");
    PrefillSpec spec{normalize_worker_url(g[0]), std::nullopt};
    if (g.size() == 2 && g[1] != "none") {
      int port = 0;
      auto [p, ec] = std::from_chars(g[1].data(), g[1].data() + g[1].size(), port);
      if (ec != std::errc() || p != g[1].data() + g[1].size() || port < 1 || port > 65535)
        return bad("--prefill " + g[0] + ": bootstrap port '" + g[1] + "' is not a port number or 'none'");
      spec.bootstrap_port = port;
    }
    prefill.push_back(std::move(spec));
  }
  for (auto& u : worker_urls) u = normalize_worker_url(u);
  for (auto& u : decode) u = normalize_worker_url(u);
  std::vector<std::string> all = worker_urls;
  for (const auto& p : prefill) all.push_back(p.url);
  all.insert(all.end(), decode.begin(), decode.end());
  for (const auto& u : all) {
    if (auto url = http::Url::parse(u); !url) return bad("worker URL '" + u + "': " + url.error().message());
  }
  if (pd_disaggregation) {
    if (!worker_urls.empty()) return bad("--worker-urls is for plain mode; use --prefill/--decode with --pd-disaggregation");
  } else if (!prefill.empty() || !decode.empty()) {
    return bad("--prefill/--decode need --pd-disaggregation");
  }
  if (mini_lb) {
    // MiniLB knew only random pairing (it warned and overrode other policies).
    policy = "random";
    prefill_policy.clear();
    decode_policy.clear();
  }
  if (prefill_policy == "bucket") return bad("--prefill-policy bucket is not supported by pdserve router");
  if (cache_threshold < 0 || cache_threshold > 1) return bad("--cache-threshold must be in [0, 1]");
  if (balance_rel_threshold < 1) return bad("--balance-rel-threshold must be >= 1");
  if (max_tree_size <= 0) return bad("--max-tree-size must be positive");
  if (eviction_interval_secs <= 0) return bad("--eviction-interval-secs must be positive");
  if (max_payload_size <= 0) return bad("--max-payload-size must be positive");
  if (request_timeout_secs <= 0) return bad("--request-timeout-secs must be positive");
  if (worker_startup_check_interval <= 0) return bad("--worker-startup-check-interval must be positive");
  if (retry_max_retries < 0) return bad("--retry-max-retries must be >= 0");
  if (retry_initial_backoff_ms < 0 || retry_max_backoff_ms < 0) return bad("retry backoffs must be >= 0");
  if (retry_backoff_multiplier < 1) return bad("--retry-backoff-multiplier must be >= 1");
  if (retry_jitter_factor < 0 || retry_jitter_factor > 1) return bad("--retry-jitter-factor must be in [0, 1]");
  if (cb_failure_threshold <= 0 || cb_success_threshold <= 0) return bad("circuit breaker thresholds must be positive");
  if (cb_timeout_duration_secs < 0 || cb_window_duration_secs <= 0) return bad("circuit breaker durations must be positive");
  if (health_failure_threshold <= 0 || health_success_threshold <= 0) return bad("health thresholds must be positive");
  if (health_check_timeout_secs <= 0 || health_check_interval_secs <= 0) return bad("health check times must be positive");
  if (health_check_endpoint.empty() || health_check_endpoint[0] != '/')
    return bad("--health-check-endpoint must start with '/'");
  if (max_concurrent_requests > 0 && queue_size < 0) return bad("--queue-size must be >= 0");
  if (queue_timeout_secs <= 0) return bad("--queue-timeout-secs must be positive");
  return ok_status();
}

}  // namespace pdserve::router
