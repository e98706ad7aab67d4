// Workers as the router sees them: URL, role, health (from background checks), a circuit breaker
// (from request outcomes) and the router-side in-flight load that policies read. The registry is
// the one list of workers, changed at run time through /workers.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "router/router_metrics.h"

namespace pdserve::router {

using SteadyTime = std::chrono::steady_clock::time_point;

enum class WorkerType { kRegular, kPrefill, kDecode };
const char* worker_type_name(WorkerType t);

struct CircuitBreakerConfig {
  bool enabled = true;
  int failure_threshold = 10;
  int success_threshold = 3;
  std::chrono::milliseconds timeout{60'000};   // open -> half-open
  std::chrono::milliseconds window{120'000};   // failures further apart than this do not add up
};

// Closed: requests flow; `failure_threshold` consecutive failures (within the window) open it.
// Open: no requests until `timeout` passed, then half-open. Half-open: requests flow as probes;
// `success_threshold` successes close it, one failure opens it again.
class CircuitBreaker {
 public:
  enum class State { kClosed = 0, kOpen = 1, kHalfOpen = 2 };
  explicit CircuitBreaker(CircuitBreakerConfig config = {}) : config_(config) {}

  bool allows(SteadyTime now);
  // Returns the state transition this outcome caused, if any ({from, to}).
  std::optional<std::pair<State, State>> record(bool success, SteadyTime now);
  State state() const;
  static const char* state_name(State s);

 private:
  CircuitBreakerConfig config_;
  mutable std::mutex mu_;
  State state_ = State::kClosed;
  int failures_ = 0, successes_ = 0;
  SteadyTime last_failure_{}, opened_at_{};
};

class Worker {
 public:
  Worker(std::string url, WorkerType type, std::optional<int> bootstrap_port, CircuitBreakerConfig cb)
      : url_(std::move(url)), type_(type), bootstrap_port_(bootstrap_port), breaker_(cb) {}

  const std::string& url() const { return url_; }
  WorkerType type() const { return type_; }
  std::optional<int> bootstrap_port() const { return bootstrap_port_; }
  // Host of the URL as a bootstrap_host value: IPv6 in brackets, as MiniLB sends it.
  std::string bootstrap_host() const;

  // Healthy and the circuit breaker lets requests through.
  bool available(SteadyTime now = std::chrono::steady_clock::now()) { return healthy() && breaker_.allows(now); }
  bool healthy() const { return healthy_.load(std::memory_order_relaxed); }
  // A worker added at run time starts as its first probe found it.
  void set_healthy(bool healthy) { healthy_ = healthy; }
  // One health check result; returns true if it changed the healthy flag.
  bool record_health(bool ok, int failure_threshold, int success_threshold);
  CircuitBreaker& breaker() { return breaker_; }

  int64_t load() const { return load_.load(std::memory_order_relaxed); }
  void add_load(int64_t d) { load_.fetch_add(d, std::memory_order_relaxed); }
  uint64_t processed() const { return processed_.load(std::memory_order_relaxed); }
  void count_processed() { processed_.fetch_add(1, std::memory_order_relaxed); }

  // This worker's series of the per-request metrics, bound at their first update.
  struct MetricRefs {
    RouterMetrics::CounterRef decisions, cb_success, cb_failure;
  };
  MetricRefs& metric_refs() { return metric_refs_; }

 private:
  std::string url_;
  WorkerType type_;
  std::optional<int> bootstrap_port_;
  CircuitBreaker breaker_;
  std::atomic<bool> healthy_{true};
  std::mutex health_mu_;
  int consecutive_ok_ = 0, consecutive_fail_ = 0;
  std::atomic<int64_t> load_{0};
  std::atomic<uint64_t> processed_{0};
  MetricRefs metric_refs_;
};

using WorkerPtr = std::shared_ptr<Worker>;

// Counts a request on a worker for as long as it runs (power_of_two and cache_aware read it).
class LoadGuard {
 public:
  explicit LoadGuard(WorkerPtr w) : w_(std::move(w)) { if (w_) w_->add_load(1); }
  ~LoadGuard() { if (w_) w_->add_load(-1); }
  LoadGuard(const LoadGuard&) = delete;
  LoadGuard& operator=(const LoadGuard&) = delete;

 private:
  WorkerPtr w_;
};

class WorkerRegistry {
 public:
  // An error if the URL is invalid or already registered with that role.
  Result<WorkerPtr> add(const std::string& url, WorkerType type, std::optional<int> bootstrap_port,
                        CircuitBreakerConfig cb);
  // True if a worker with that URL (any role) was removed.
  bool remove(const std::string& url);
  std::vector<WorkerPtr> all() const;
  std::vector<WorkerPtr> of_type(WorkerType type) const;
  // Workers of `type` that are healthy and whose breaker allows a request.
  std::vector<WorkerPtr> available(WorkerType type) const;

 private:
  mutable std::mutex mu_;
  std::vector<WorkerPtr> workers_;
};

}  // namespace pdserve::router
