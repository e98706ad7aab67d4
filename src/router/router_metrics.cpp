#include "router/router_metrics.h"

#include <array>
#include <cmath>

#include <fmt/format.h>

namespace pdserve::router {

namespace {

enum class Kind { kCounter, kGauge, kHistogram };

struct Family {
  const char* name;
  Kind kind;
  const char* help;
};

// Rendered in this order. Names follow sgl-router's metrics.rs; the last two are ours.
constexpr std::array kFamilies = {
    Family{"sgl_router_requests_total", Kind::kCounter, "Requests received, by route"},
    Family{"sgl_router_request_duration_seconds", Kind::kHistogram, "Request duration through the router, by route"},
    Family{"sgl_router_request_errors_total", Kind::kCounter, "Requests answered with an error, by route and type"},
    Family{"sgl_router_retries_total", Kind::kCounter, "Retried attempts, by route"},
    Family{"sgl_router_retries_exhausted_total", Kind::kCounter, "Requests that failed after every retry"},
    Family{"sgl_router_retry_backoff_duration_seconds", Kind::kHistogram, "Backoff slept before a retry"},
    Family{"sgl_router_pd_requests_total", Kind::kCounter, "PD requests, by route"},
    Family{"sgl_router_pd_request_duration_seconds", Kind::kHistogram, "PD request duration, by route"},
    Family{"sgl_router_pd_prefill_requests_total", Kind::kCounter, "Requests sent to each prefill worker"},
    Family{"sgl_router_pd_decode_requests_total", Kind::kCounter, "Requests sent to each decode worker"},
    Family{"sgl_router_pd_prefill_errors_total", Kind::kCounter, "Failed requests per prefill worker"},
    Family{"sgl_router_pd_decode_errors_total", Kind::kCounter, "Failed requests per decode worker"},
    Family{"sgl_router_pd_errors_total", Kind::kCounter, "PD failures, by type"},
    Family{"sgl_router_pd_stream_errors_total", Kind::kCounter, "Streams broken after they started, per worker"},
    Family{"sgl_router_generate_duration_seconds", Kind::kHistogram, "Generation request duration, by route"},
    Family{"sgl_router_worker_health", Kind::kGauge, "1 if the worker passes health checks"},
    Family{"sgl_router_worker_load", Kind::kGauge, "Requests in flight on the worker (router's count)"},
    Family{"sgl_router_running_requests", Kind::kGauge, "Requests in flight on the worker"},
    Family{"sgl_router_active_workers", Kind::kGauge, "Workers that are healthy and not cut off by their breaker"},
    Family{"sgl_router_processed_requests_total", Kind::kCounter, "Requests completed per worker"},
    Family{"sgl_router_policy_decisions_total", Kind::kCounter, "Workers picked, by policy and worker"},
    Family{"sgl_router_cache_hits_total", Kind::kCounter, "cache_aware: requests routed by prefix match"},
    Family{"sgl_router_cache_misses_total", Kind::kCounter, "cache_aware: requests routed to the smallest tree"},
    Family{"sgl_router_tree_size", Kind::kGauge, "cache_aware: bytes of text per worker in the tree"},
    Family{"sgl_router_load_balancing_events_total", Kind::kCounter, "cache_aware: picks overridden by imbalance"},
    Family{"sgl_router_max_load", Kind::kGauge, "Highest worker load"},
    Family{"sgl_router_min_load", Kind::kGauge, "Lowest worker load"},
    Family{"sgl_router_cb_state", Kind::kGauge, "Circuit breaker state (0 closed, 1 open, 2 half-open)"},
    Family{"sgl_router_cb_state_transitions_total", Kind::kCounter, "Circuit breaker transitions"},
    Family{"sgl_router_cb_outcomes_total", Kind::kCounter, "Request outcomes seen by the breaker"},
    Family{"sgl_router_queued_requests", Kind::kGauge, "Requests waiting for a concurrency slot"},
    Family{"sgl_router_rejected_requests_total", Kind::kCounter, "Requests refused by limits, by reason"},
};

// SGLang's duration buckets, 1 ms to 240 s.
constexpr std::array<double, 20> kBuckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                              5,     10,    15,   30,    45,   60,  90,   120, 180, 240};

// Appends `v` with Prometheus label-value escaping. Called for every counter update (several per
// request), so it appends in place instead of building temporaries.
void append_escaped(std::string& out, std::string_view v) {
  std::size_t plain = 0;  // start of the run of characters not yet appended
  for (std::size_t i = 0; i < v.size(); ++i) {
    const char c = v[i];
    if (c != '\\' && c != '"' && c != '\n') continue;
    out.append(v.substr(plain, i - plain));  // runs of plain characters in one append
    out += '\\';
    out += c == '\n' ? 'n' : c;
    plain = i + 1;
  }
  out.append(v.substr(plain));
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  return fmt::format("{}", v);
}

std::string braces(const std::string& labels) { return labels.empty() ? "" : "{" + labels + "}"; }

// `a="b",c="d"` appended to `out`.
template <typename Pairs>
void append_labels(std::string& out, const Pairs& labels) {
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    out.append(k).append("=\"");
    append_escaped(out, v);
    out += '"';
  }
}

// The series key of an update, formatted into a buffer that keeps its capacity: no allocation
// per update once a thread has formatted its longest key.
const std::string& update_key(LabelViews labels) {
  thread_local std::string key;
  key.clear();
  append_labels(key, labels);
  return key;
}

// The value of series `key` in `family`, created on first use.
template <typename Family>
auto& series(Family& family, const std::string& key) {
  auto it = family.find(key);
  if (it == family.end()) it = family.emplace(key, typename Family::mapped_type{}).first;
  return it->second;
}

}  // namespace

std::string format_labels(const Labels& labels) {
  std::string out;
  append_labels(out, labels);
  return out;
}

RouterMetrics::RouterMetrics() = default;

double& RouterMetrics::counter_cell(std::string_view name, LabelViews labels) {
  const std::string& key = update_key(labels);
  auto it = counters_.find(name);
  if (it == counters_.end()) it = counters_.emplace(std::string(name), decltype(it->second){}).first;
  return series(it->second, key);
}

RouterMetrics::Histogram& RouterMetrics::histogram_cell(std::string_view name, LabelViews labels) {
  const std::string& key = update_key(labels);
  auto it = histograms_.find(name);
  if (it == histograms_.end()) it = histograms_.emplace(std::string(name), decltype(it->second){}).first;
  Histogram& h = series(it->second, key);
  if (h.counts.empty()) h.counts.assign(kBuckets.size() + 1, 0);
  return h;
}

void RouterMetrics::inc(std::string_view name, LabelViews labels, double by) {
  std::lock_guard lock(mu_);
  counter_cell(name, labels) += by;
}

void RouterMetrics::observe(std::string_view name, LabelViews labels, double seconds) {
  std::lock_guard lock(mu_);
  add(histogram_cell(name, labels), seconds);
}

void RouterMetrics::inc(CounterRef& ref, std::string_view name, LabelViews labels, double by) {
  std::lock_guard lock(mu_);
  if (ref.cell_ == nullptr) ref.cell_ = &counter_cell(name, labels);
  *ref.cell_ += by;
}

void RouterMetrics::observe(HistogramRef& ref, std::string_view name, LabelViews labels, double seconds) {
  std::lock_guard lock(mu_);
  if (ref.cell_ == nullptr) ref.cell_ = &histogram_cell(name, labels);
  add(*ref.cell_, seconds);
}

void RouterMetrics::add(Histogram& h, double seconds) {
  std::size_t b = 0;
  while (b < kBuckets.size() && seconds > kBuckets[b]) ++b;
  ++h.counts[b];
  h.sum += seconds;
  ++h.count;
}

double RouterMetrics::counter(std::string_view name, const Labels& labels) const {
  std::lock_guard lock(mu_);
  auto it = counters_.find(name);
  if (it == counters_.end()) return 0;
  auto v = it->second.find(format_labels(labels));
  return v == it->second.end() ? 0 : v->second;
}

std::string RouterMetrics::render(const std::vector<Sample>& scraped) const {
  std::string out;
  std::lock_guard lock(mu_);
  for (const Family& f : kFamilies) {
    const char* type = f.kind == Kind::kCounter ? "counter" : f.kind == Kind::kGauge ? "gauge" : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name, f.help, f.name, type);
    if (auto it = counters_.find(std::string_view(f.name)); it != counters_.end())
      for (const auto& [labels, v] : it->second) out += fmt::format("{}{} {}\n", f.name, braces(labels), number(v));
    for (const Sample& s : scraped)
      if (s.name == f.name) out += fmt::format("{}{} {}\n", f.name, braces(format_labels(s.labels)), number(s.value));
    if (f.kind != Kind::kHistogram) continue;
    auto it = histograms_.find(std::string_view(f.name));
    if (it == histograms_.end()) continue;
    for (const auto& [labels, h] : it->second) {
      const std::string sep = labels.empty() ? "" : ",";
      uint64_t cumulative = 0;
      for (std::size_t b = 0; b <= kBuckets.size(); ++b) {
        cumulative += h.counts[b];
        const std::string le = b < kBuckets.size() ? number(kBuckets[b]) : "+Inf";
        out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", f.name, labels, sep, le, cumulative);
      }
      out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", f.name, braces(labels), number(h.sum), f.name, braces(labels),
                         h.count);
    }
  }
  return out;
}

}  // namespace pdserve::router
