// `pdserve router`: SGLang's router in front of plain workers (--worker-urls) or prefill/decode
// pairs (--pd-disaggregation). One process: an HTTP server for clients with one I/O thread per
// usable CPU, which also runs the requests to the workers (upstream.h), an upstream loop for health
// checks and fan-outs, a health-check thread and a maintenance thread (queue deadlines, tree
// eviction).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "http/server.h"
#include "router/admission.h"
#include "router/pd_request.h"
#include "router/policy.h"
#include "router/retry.h"
#include "router/router_args.h"
#include "router/router_metrics.h"
#include "router/upstream.h"
#include "router/worker.h"

namespace pdserve::router {

struct ProxyRequest;

class Router {
 public:
  // Registers the initial workers and binds nothing yet.
  static Result<std::unique_ptr<Router>> create(RouterArgs args);
  ~Router();

  // Waits for the initial workers to be healthy (--worker-startup-timeout-secs), binds the ports
  // and starts serving; returns once serving.
  Status start();
  void wait();
  // Stops accepting, lets in-flight requests finish briefly, stops. Idempotent.
  void shutdown();

  uint16_t port() const { return http_->port(); }
  // 0 when there is no separate Prometheus listener.
  uint16_t prometheus_port() const { return prometheus_ ? prometheus_->port() : 0; }
  const RouterArgs& args() const { return args_; }
  WorkerRegistry& workers() { return registry_; }
  RouterMetrics& metrics() { return metrics_; }
  std::string render_metrics();

 private:
  friend struct ProxyRequest;
  Router() = default;
  CircuitBreakerConfig breaker_config() const;
  Status wait_for_workers();
  void register_routes(http::Server& s);
  void register_info_routes(http::Server& s);
  void register_worker_routes(http::Server& s);
  void handle_generation(RouteKind kind, std::string path, http::Request req, std::shared_ptr<http::Responder> r);
  // Runs health checks of every worker once (concurrently) and records the results.
  void check_health_once();
  void health_loop();
  void maintenance_loop();
  Policy& policy_for(WorkerType type);
  // `method` `path` on each of `targets` concurrently; `done` gets (worker, result) pairs in
  // target order, on an upstream thread.
  using FanOutResult = std::vector<std::pair<WorkerPtr, Result<http::Response>>>;
  void fan_out(std::vector<WorkerPtr> targets, std::string method, std::string path, std::string body,
               std::chrono::milliseconds timeout, std::function<void(FanOutResult)> done);
  // GET `target` on the first available worker (prefill in PD mode) and relay the answer.
  void proxy_first(const std::string& target, std::shared_ptr<http::Responder> r);
  void count_breaker(const WorkerPtr& w, bool success);
  http::ClientOptions upstream_client_options() const;

  RouterArgs args_;
  RetryConfig retry_;
  WorkerRegistry registry_;
  std::unique_ptr<Policy> policy_;          // plain mode
  std::unique_ptr<Policy> prefill_policy_;  // PD mode
  std::unique_ptr<Policy> decode_policy_;
  RouterMetrics metrics_;
  std::shared_ptr<Admission> admission_;
  std::unique_ptr<UpstreamLoops> loops_;
  std::unique_ptr<http::Server> http_;
  // On http_'s io_context, so declared after it: destroyed first, while that io_context exists.
  std::unique_ptr<UpstreamLanes> lanes_;
  std::unique_ptr<http::Server> prometheus_;
  std::thread health_thread_, maintenance_thread_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};
  // The per-route series every request updates, by RouteKind, bound at their first update.
  struct RouteRefs {
    RouterMetrics::CounterRef requests;
    RouterMetrics::HistogramRef duration, generate_duration;
  };
  std::array<RouteRefs, 3> route_refs_;
};

// Registers `router`; the returned callback runs it (exit code).
std::function<int()> add_router_command(CLI::App& root);

}  // namespace pdserve::router
