#include "router/router.h"

#include <sched.h>

#include <future>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "base/logging.h"
#include "http/signals.h"

namespace pdserve::router {

namespace asio = boost::asio;
using json = nlohmann::json;

Result<std::unique_ptr<Router>> Router::create(RouterArgs args) {
  std::unique_ptr<Router> r(new Router());
  r->args_ = std::move(args);
  const RouterArgs& a = r->args_;
  r->retry_ = RetryConfig{!a.disable_retries,         a.retry_max_retries,        a.retry_initial_backoff_ms,
                          a.retry_max_backoff_ms,     a.retry_backoff_multiplier, a.retry_jitter_factor};
  PolicyConfig pc{a.cache_threshold, a.balance_abs_threshold, a.balance_rel_threshold, a.max_tree_size};
  PDSERVE_ASSIGN_OR_RETURN(r->policy_, make_policy(a.policy, pc));
  PDSERVE_ASSIGN_OR_RETURN(r->prefill_policy_, make_policy(a.effective_prefill_policy(), pc));
  PDSERVE_ASSIGN_OR_RETURN(r->decode_policy_, make_policy(a.effective_decode_policy(), pc));
  const auto cb = r->breaker_config();
  for (const auto& u : a.worker_urls) PDSERVE_RETURN_IF_ERROR(r->registry_.add(u, WorkerType::kRegular, std::nullopt, cb));
  for (const auto& p : a.prefill) PDSERVE_RETURN_IF_ERROR(r->registry_.add(p.url, WorkerType::kPrefill, p.bootstrap_port, cb));
  for (const auto& d : a.decode) PDSERVE_RETURN_IF_ERROR(r->registry_.add(d, WorkerType::kDecode, std::nullopt, cb));
  r->admission_ = Admission::create(a.max_concurrent_requests, a.queue_size, std::chrono::seconds(a.queue_timeout_secs));
  // Health checks and fan-outs only: requests go through the server's own threads (lanes_).
  r->loops_ = std::make_unique<UpstreamLoops>(1, r->upstream_client_options());
  return r;
}

namespace {

// The CPUs this process may run on (taskset / cgroup cpusets shrink it), as nginx's
// `worker_processes auto` counts them; hardware_concurrency() would count the whole machine.
int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

http::ClientOptions Router::upstream_client_options() const {
  http::ClientOptions co;
  co.user_agent = "pdserve-router";
  co.max_idle_per_host = 4096;
  // Pooled connections to a worker that died or closed them go within a second, traffic or not.
  co.idle_sweep_interval = std::chrono::seconds(1);
  return co;
}

Router::~Router() { shutdown(); }

CircuitBreakerConfig Router::breaker_config() const {
  return CircuitBreakerConfig{!args_.disable_circuit_breaker, args_.cb_failure_threshold, args_.cb_success_threshold,
                              std::chrono::seconds(args_.cb_timeout_duration_secs),
                              std::chrono::seconds(args_.cb_window_duration_secs)};
}

Policy& Router::policy_for(WorkerType type) {
  switch (type) {
    case WorkerType::kPrefill: return *prefill_policy_;
    case WorkerType::kDecode: return *decode_policy_;
    default: return *policy_;
  }
}

void Router::count_breaker(const WorkerPtr& w, bool success) {
  auto& refs = w->metric_refs();
  metrics_.inc(success ? refs.cb_success : refs.cb_failure, "sgl_router_cb_outcomes_total",
               {{"worker", w->url()}, {"outcome", success ? "success" : "failure"}});
  if (auto t = w->breaker().record(success, std::chrono::steady_clock::now())) {
    const char* from = CircuitBreaker::state_name(t->first);
    const char* to = CircuitBreaker::state_name(t->second);
    metrics_.inc("sgl_router_cb_state_transitions_total", {{"worker", w->url()}, {"from", from}, {"to", to}});
    log::warning("router: circuit breaker of {} {} -> {}", w->url(), from, to);
  }
}

void Router::fan_out(std::vector<WorkerPtr> targets, std::string method, std::string path, std::string body,
                     std::chrono::milliseconds timeout, std::function<void(FanOutResult)> done) {
  struct State {
    std::vector<std::optional<Result<http::Response>>> results;
    std::vector<WorkerPtr> targets;
    std::size_t left = 0;
    std::function<void(FanOutResult)> done;
  };
  auto st = std::make_shared<State>();
  st->results.resize(targets.size());
  st->targets = std::move(targets);
  st->left = st->targets.size();
  st->done = std::move(done);
  if (st->left == 0) {
    st->done({});
    return;
  }
  auto& loop = loops_->next();  // all on one loop: State needs no lock
  http::Headers headers{{"Content-Type", "application/json"}};
  if (!args_.api_key.empty()) headers.add("Authorization", "Bearer " + args_.api_key);
  for (std::size_t i = 0; i < st->targets.size(); ++i) {
    auto* client = loop.client.get();
    http::ClientRequest req(method, st->targets[i]->url() + path, body, headers, timeout);
    asio::co_spawn(loop.io, [st, i, client, req]() -> asio::awaitable<void> {
      st->results[i].emplace(co_await client->request(req));
      if (--st->left == 0) {
        FanOutResult out;
        for (std::size_t k = 0; k < st->targets.size(); ++k) out.emplace_back(st->targets[k], std::move(*st->results[k]));
        st->done(std::move(out));
      }
    }, asio::detached);
  }
}

void Router::proxy_first(const std::string& target, std::shared_ptr<http::Responder> r) {
  auto avail = registry_.available(args_.pd_disaggregation ? WorkerType::kPrefill : WorkerType::kRegular);
  if (avail.empty()) {
    r->respond_error(503, "No available workers");
    return;
  }
  fan_out({avail[0]}, "GET", target, "", std::chrono::seconds(args_.request_timeout_secs), [r](FanOutResult res) {
    auto& [w, resp] = res[0];
    if (!resp) {
      r->respond_error(502, "worker " + w->url() + ": " + resp.error().message());
      return;
    }
    r->respond(resp->status, resp->body, std::string(resp->headers.get_or("content-type", "application/json")));
  });
}

Status Router::wait_for_workers() {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args_.worker_startup_timeout_secs);
  for (;;) {
    std::promise<FanOutResult> p;
    auto f = p.get_future();
    fan_out(registry_.all(), "GET", args_.health_check_endpoint, "", std::chrono::seconds(args_.health_check_timeout_secs),
            [&p](FanOutResult r) { p.set_value(std::move(r)); });
    auto results = f.get();
    std::vector<std::string> down;
    for (auto& [w, r] : results)
      if (!r || r->status != 200) down.push_back(w->url());
    if (down.empty()) return ok_status();
    if (std::chrono::steady_clock::now() >= deadline || stopping_)
      return make_error(ErrorCode::kIo, "workers not healthy after {} s: {}", args_.worker_startup_timeout_secs,
                        fmt::format("{}", fmt::join(down, ", ")));
    log::info("router: waiting for {} worker(s) to become healthy: {}", down.size(), fmt::format("{}", fmt::join(down, ", ")));
    std::unique_lock lock(stop_mu_);
    stop_cv_.wait_for(lock, std::chrono::seconds(args_.worker_startup_check_interval), [&] { return stopping_.load(); });
  }
}

void Router::check_health_once() {
  std::promise<FanOutResult> p;
  auto f = p.get_future();
  fan_out(registry_.all(), "GET", args_.health_check_endpoint, "", std::chrono::seconds(args_.health_check_timeout_secs),
          [&p](FanOutResult r) { p.set_value(std::move(r)); });
  for (auto& [w, r] : f.get()) {
    const bool ok = r && r->status == 200;
    if (w->record_health(ok, args_.health_failure_threshold, args_.health_success_threshold))
      log::warning("router: worker {} is now {}", w->url(), ok ? "healthy" : "unhealthy");
  }
}

void Router::health_loop() {
  while (!stopping_) {
    {
      std::unique_lock lock(stop_mu_);
      stop_cv_.wait_for(lock, std::chrono::seconds(args_.health_check_interval_secs), [&] { return stopping_.load(); });
    }
    if (stopping_) break;
    check_health_once();
  }
}

void Router::maintenance_loop() {
  auto next_eviction = std::chrono::steady_clock::now() + std::chrono::seconds(args_.eviction_interval_secs);
  while (!stopping_) {
    {
      std::unique_lock lock(stop_mu_);
      stop_cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stopping_.load(); });
    }
    auto now = std::chrono::steady_clock::now();
    admission_->expire(now);
    if (now >= next_eviction) {
      policy_->maintain();
      prefill_policy_->maintain();
      decode_policy_->maintain();
      next_eviction = now + std::chrono::seconds(args_.eviction_interval_secs);
    }
  }
}

std::string Router::render_metrics() {
  std::vector<Sample> s;
  auto workers = registry_.all();
  int64_t active = 0, max_load = 0, min_load = workers.empty() ? 0 : INT64_MAX;
  for (const auto& w : workers) {
    const bool avail = w->available();
    active += avail ? 1 : 0;
    max_load = std::max(max_load, w->load());
    min_load = std::min(min_load, w->load());
    const Labels wl{{"worker", w->url()}};
    s.push_back({"sgl_router_worker_health", {{"worker", w->url()}, {"type", worker_type_name(w->type())}},
                 w->healthy() ? 1.0 : 0.0});
    s.push_back({"sgl_router_worker_load", wl, static_cast<double>(w->load())});
    s.push_back({"sgl_router_running_requests", wl, static_cast<double>(w->load())});
    s.push_back({"sgl_router_processed_requests_total", wl, static_cast<double>(w->processed())});
    s.push_back({"sgl_router_cb_state", wl, static_cast<double>(static_cast<int>(w->breaker().state()))});
  }
  s.push_back({"sgl_router_active_workers", {}, static_cast<double>(active)});
  s.push_back({"sgl_router_max_load", {}, static_cast<double>(max_load)});
  s.push_back({"sgl_router_min_load", {}, static_cast<double>(min_load)});
  uint64_t hits = 0, misses = 0, balance = 0;
  std::vector<Policy*> policies{policy_.get()};
  if (args_.pd_disaggregation) policies = {prefill_policy_.get(), decode_policy_.get()};
  for (Policy* p : policies) {
    hits += p->stats().cache_hits;
    misses += p->stats().cache_misses;
    balance += p->stats().balance_events;
    for (const auto& [url, size] : p->tree_sizes())
      s.push_back({"sgl_router_tree_size", {{"worker", url}}, static_cast<double>(size)});
  }
  s.push_back({"sgl_router_cache_hits_total", {}, static_cast<double>(hits)});
  s.push_back({"sgl_router_cache_misses_total", {}, static_cast<double>(misses)});
  s.push_back({"sgl_router_load_balancing_events_total", {}, static_cast<double>(balance)});
  s.push_back({"sgl_router_queued_requests", {}, static_cast<double>(admission_->queued())});
  s.push_back({"sgl_router_rejected_requests_total", {{"reason", "queue_full"}}, static_cast<double>(admission_->rejected())});
  s.push_back(
      {"sgl_router_rejected_requests_total", {{"reason", "queue_timeout"}}, static_cast<double>(admission_->timed_out())});
  return metrics_.render(s);
}

Status Router::start() {
  PDSERVE_RETURN_IF_ERROR(wait_for_workers());
  http::ServerOptions so;
  so.host = args_.host;
  so.port = static_cast<uint16_t>(args_.port);
  so.io_threads = usable_cpus();
  so.max_body_bytes = static_cast<std::size_t>(args_.max_payload_size);
  so.max_connections = 100'000;
  http_ = std::make_unique<http::Server>(so);
  lanes_ = std::make_unique<UpstreamLanes>(http_->io_context(), static_cast<std::size_t>(so.io_threads),
                                           upstream_client_options());
  register_routes(*http_);
  if (auto st = http_->start(); !st) return st.error().with_context("router --port");
  if (args_.prometheus_port >= 0) {
    http::ServerOptions po;
    po.host = args_.prometheus_host;
    po.port = static_cast<uint16_t>(args_.prometheus_port);
    prometheus_ = std::make_unique<http::Server>(po);
    prometheus_->route("GET", "/metrics", [this](http::Request, std::shared_ptr<http::Responder> r) {
      r->respond(200, render_metrics(), "text/plain; version=0.0.4");
    });
    if (auto st = prometheus_->start(); !st) {
      http_->stop(std::chrono::milliseconds(0));
      return st.error().with_context("router --prometheus-port");
    }
  }
  health_thread_ = std::thread([this] { health_loop(); });
  maintenance_thread_ = std::thread([this] { maintenance_loop(); });
  log::info("router: {} mode, {} worker(s), policy {}; listening on {}:{}{}",
            args_.pd_disaggregation ? "PD" : "regular", registry_.all().size(),
            args_.pd_disaggregation ? args_.effective_prefill_policy() + "/" + args_.effective_decode_policy() : args_.policy,
            args_.host, http_->port(),
            prometheus_ ? fmt::format(", metrics on {}:{}", args_.prometheus_host, prometheus_->port()) : std::string());
  return ok_status();
}

void Router::wait() {
  if (http_) http_->wait();
  std::unique_lock lock(stop_mu_);
  stop_cv_.wait(lock, [&] { return stopped_.load(); });
}

void Router::shutdown() {
  if (stopping_.exchange(true)) {
    return;
  }
  stop_cv_.notify_all();
  admission_->close();
  if (http_) http_->stop(std::chrono::seconds(5));
  if (prometheus_) prometheus_->stop(std::chrono::milliseconds(0));
  if (health_thread_.joinable()) health_thread_.join();
  if (maintenance_thread_.joinable()) maintenance_thread_.join();
  loops_->stop();
  {
    std::lock_guard lock(stop_mu_);
    stopped_ = true;
  }
  stop_cv_.notify_all();
}

std::function<int()> add_router_command(CLI::App& root) {
  auto args = std::make_shared<RouterArgs>();
  CLI::App* app = root.add_subcommand("router", "Load balancer for workers or prefill/decode pairs (sglang_router)");
  add_router_flags(*app, *args);
  return [args]() -> int {
    // Usage problems (flags, workers) exit 2 like argparse; failing to serve exits 1.
    auto fail = [](int code, const std::string& message) {
      std::fprintf(stderr, "error: %s\n", message.c_str());
      return code;
    };
    auto level = log::parse_level(args->log_level);
    if (!level) return fail(2, "unknown --log-level " + args->log_level);
    log::set_level(*level);
    if (auto st = args->resolve(); !st) return fail(2, st.error().message());
    auto created = Router::create(*args);
    if (!created) return fail(2, created.error().message());
    std::unique_ptr<Router> router = std::move(*created);
    http::SignalWatcher watcher([r = router.get()](int signo) {
      log::info("Received {}, shutting down", signo == SIGTERM ? "SIGTERM" : "SIGINT");
      r->shutdown();
    });
    Status started = router->start();
    if (!started) {
      router->shutdown();
      return fail(1, started.error().message());
    }
    router->wait();
    return 0;
  };
}

}  // namespace pdserve::router
