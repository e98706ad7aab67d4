#include "router/worker.h"

#include <algorithm>

#include "http/client.h"

namespace pdserve::router {

const char* worker_type_name(WorkerType t) {
  switch (t) {
    case WorkerType::kRegular: return "regular";
    case WorkerType::kPrefill: return "prefill";
    case WorkerType::kDecode: return "decode";
  }
  return "regular";
}

bool CircuitBreaker::allows(SteadyTime now) {
  if (!config_.enabled) return true;
  std::lock_guard lock(mu_);
  if (state_ == State::kOpen && now - opened_at_ >= config_.timeout) {
    // Let probes through; record() decides whether the worker is back.
    state_ = State::kHalfOpen;
    successes_ = 0;
  }
  return state_ != State::kOpen;
}

std::optional<std::pair<CircuitBreaker::State, CircuitBreaker::State>> CircuitBreaker::record(bool success,
                                                                                              SteadyTime now) {
  if (!config_.enabled) return std::nullopt;
  std::lock_guard lock(mu_);
  const State before = state_;
  if (success) {
    failures_ = 0;
    if (state_ == State::kHalfOpen && ++successes_ >= config_.success_threshold) state_ = State::kClosed;
  } else {
    // Failures far apart are noise, not an outage: the count restarts after a quiet window.
    if (failures_ > 0 && now - last_failure_ > config_.window) failures_ = 0;
    last_failure_ = now;
    ++failures_;
    successes_ = 0;
    if (state_ == State::kHalfOpen || (state_ == State::kClosed && failures_ >= config_.failure_threshold)) {
      state_ = State::kOpen;
      opened_at_ = now;
    }
  }
  if (state_ == before) return std::nullopt;
  return std::make_pair(before, state_);
}

CircuitBreaker::State CircuitBreaker::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

const char* CircuitBreaker::state_name(State s) {
  switch (s) {
    case State::kClosed: return "closed";
    case State::kOpen: return "open";
    case State::kHalfOpen: return "half_open";
  }
  return "closed";
}

std::string Worker::bootstrap_host() const {
  auto u = http::Url::parse(url_);
  if (!u) return "";
  if (u->host.find(':') != std::string::npos) return "[" + u->host + "]";
  return u->host;
}

bool Worker::record_health(bool ok, int failure_threshold, int success_threshold) {
  std::lock_guard lock(health_mu_);
  const bool was = healthy_.load();
  if (ok) {
    consecutive_fail_ = 0;
    if (!was && ++consecutive_ok_ >= success_threshold) healthy_ = true;
  } else {
    consecutive_ok_ = 0;
    if (was && ++consecutive_fail_ >= failure_threshold) healthy_ = false;
  }
  return healthy_.load() != was;
}

Result<WorkerPtr> WorkerRegistry::add(const std::string& url, WorkerType type, std::optional<int> bootstrap_port,
                                      CircuitBreakerConfig cb) {
  auto parsed = http::Url::parse(url);
  if (!parsed) return make_error(ErrorCode::kInvalidArgument, "worker URL '{}': {}", url, parsed.error().message());
  std::lock_guard lock(mu_);
  for (const auto& w : workers_) {
    if (w->url() == url && w->type() == type)
      return make_error(ErrorCode::kInvalidArgument, "worker {} is already registered as {}", url, worker_type_name(type));
  }
  auto w = std::make_shared<Worker>(url, type, bootstrap_port, cb);
  workers_.push_back(w);
  return w;
}

bool WorkerRegistry::remove(const std::string& url) {
  std::lock_guard lock(mu_);
  auto n = std::erase_if(workers_, [&](const WorkerPtr& w) { return w->url() == url; });
  return n > 0;
}

std::vector<WorkerPtr> WorkerRegistry::all() const {
  std::lock_guard lock(mu_);
  return workers_;
}

std::vector<WorkerPtr> WorkerRegistry::of_type(WorkerType type) const {
  std::lock_guard lock(mu_);
  std::vector<WorkerPtr> out;
  for (const auto& w : workers_)
    if (w->type() == type) out.push_back(w);
  return out;
}

std::vector<WorkerPtr> WorkerRegistry::available(WorkerType type) const {
  auto now = std::chrono::steady_clock::now();
  std::vector<WorkerPtr> out;
  std::lock_guard lock(mu_);
  for (const auto& w : workers_)
    if (w->type() == type && w->available(now)) out.push_back(w);
  return out;
}

}  // namespace pdserve::router
