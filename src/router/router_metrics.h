// The router's Prometheus metrics with the Rust router's sgl_router_* names (sglang-spec §3.2),
// in the text exposition format that `promtool check metrics` accepts: every family has HELP and
// TYPE, counters end in _total, histograms have cumulative buckets with +Inf, _sum and _count.
//
// Counters and histograms are fed as requests finish; gauges (health, load, breaker state, tree
// size) are read from the workers at scrape time and passed to render().
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pdserve::router {

using Labels = std::vector<std::pair<std::string, std::string>>;
// Labels of an update, as views: several updates per request, and building a Labels (a vector and
// its strings) for each cost more than the update.
using LabelViews = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// One value read at scrape time.
struct Sample {
  std::string name;  // a family of kFamilies
  Labels labels;
  double value = 0;
};

class RouterMetrics {
  struct Histogram;

 public:
  // One series of a family, bound at its first update: that update formats and looks up the
  // series as inc()/observe() do, later ones only lock and add. For the per-request updates
  // (route and worker series). Every update through one ref must name the same series; a ref
  // must not outlive its RouterMetrics (series are never removed, so the binding stays valid).
  class CounterRef {
    friend class RouterMetrics;
    double* cell_ = nullptr;  // read and written under the RouterMetrics' lock
  };
  class HistogramRef {
    friend class RouterMetrics;
    Histogram* cell_ = nullptr;
  };

  RouterMetrics();
  void inc(std::string_view name, LabelViews labels, double by = 1);
  void observe(std::string_view name, LabelViews labels, double seconds);
  void inc(CounterRef& ref, std::string_view name, LabelViews labels, double by = 1);
  void observe(HistogramRef& ref, std::string_view name, LabelViews labels, double seconds);
  // All families, stored values and `scraped` ones together.
  std::string render(const std::vector<Sample>& scraped) const;
  // A stored counter's value (0 if never incremented); for tests.
  double counter(std::string_view name, const Labels& labels) const;

 private:
  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket, not cumulative; last is +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  // Under mu_: the series' cell, created at 0 if new.
  double& counter_cell(std::string_view name, LabelViews labels);
  Histogram& histogram_cell(std::string_view name, LabelViews labels);
  static void add(Histogram& h, double seconds);
  mutable std::mutex mu_;
  // family -> formatted labels -> value; std::less<> so that updates look up without a key copy.
  std::map<std::string, std::map<std::string, double, std::less<>>, std::less<>> counters_;
  std::map<std::string, std::map<std::string, Histogram, std::less<>>, std::less<>> histograms_;
};

// `a="b",c="d"` with Prometheus escaping.
std::string format_labels(const Labels& labels);

}  // namespace pdserve::router
