#include "router/policy.h"

#include <algorithm>
#include <random>

namespace pdserve::router {

uint64_t random_u64() {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  return gen();
}

std::size_t random_index(std::size_t n) { return static_cast<std::size_t>(random_u64() % n); }

namespace {

class RandomPolicy final : public Policy {
 public:
  const char* name() const override { return "random"; }
  std::size_t select(const std::vector<WorkerPtr>& w, std::string_view) override { return random_index(w.size()); }
};

class RoundRobinPolicy final : public Policy {
 public:
  const char* name() const override { return "round_robin"; }
  std::size_t select(const std::vector<WorkerPtr>& w, std::string_view) override {
    return next_.fetch_add(1, std::memory_order_relaxed) % w.size();
  }

 private:
  std::atomic<uint64_t> next_{0};
};

class PowerOfTwoPolicy final : public Policy {
 public:
  const char* name() const override { return "power_of_two"; }
  std::size_t select(const std::vector<WorkerPtr>& w, std::string_view) override {
    if (w.size() == 1) return 0;
    std::size_t a = random_index(w.size());
    std::size_t b = random_index(w.size() - 1);
    if (b >= a) ++b;  // two distinct workers
    return w[b]->load() < w[a]->load() ? b : a;
  }
};

class CacheAwarePolicy final : public Policy {
 public:
  explicit CacheAwarePolicy(PolicyConfig c) : config_(c) {}
  const char* name() const override { return "cache_aware"; }

  std::size_t select(const std::vector<WorkerPtr>& w, std::string_view text) override {
    int64_t max_load = w[0]->load(), min_load = w[0]->load();
    std::size_t least = 0;
    for (std::size_t i = 1; i < w.size(); ++i) {
      int64_t l = w[i]->load();
      max_load = std::max(max_load, l);
      if (l < min_load) {
        min_load = l;
        least = i;
      }
    }
    std::size_t pick;
    // Imbalance (both thresholds exceeded) overrides affinity: a hot prefix must not pile every
    // request onto one worker.
    if (max_load - min_load > config_.balance_abs_threshold &&
        static_cast<double>(max_load) > static_cast<double>(min_load) * config_.balance_rel_threshold) {
      stats_.balance_events.fetch_add(1, std::memory_order_relaxed);
      pick = least;
    } else {
      auto match = tree_.prefix_match(text, [&](const std::string& url) {
        return std::any_of(w.begin(), w.end(), [&](const WorkerPtr& x) { return x->url() == url; });
      });
      const double rate = text.empty() ? 0.0 : static_cast<double>(match.matched) / static_cast<double>(text.size());
      if (!match.tenant.empty() && rate > config_.cache_threshold) {
        stats_.cache_hits.fetch_add(1, std::memory_order_relaxed);
        pick = static_cast<std::size_t>(
            std::find_if(w.begin(), w.end(), [&](const WorkerPtr& x) { return x->url() == match.tenant; }) - w.begin());
      } else {
        // A miss goes where the least text was sent: that worker has the most room to cache it.
        stats_.cache_misses.fetch_add(1, std::memory_order_relaxed);
        pick = 0;
        std::size_t smallest = tree_.tenant_size(w[0]->url());
        for (std::size_t i = 1; i < w.size(); ++i) {
          std::size_t s = tree_.tenant_size(w[i]->url());
          if (s < smallest) {
            smallest = s;
            pick = i;
          }
        }
      }
    }
    tree_.insert(text, w[pick]->url());
    return pick;
  }

  void maintain() override { tree_.evict(static_cast<std::size_t>(config_.max_tree_size)); }
  void remove_worker(const std::string& url) override { tree_.remove_tenant(url); }
  std::map<std::string, std::size_t> tree_sizes() const override { return tree_.tenant_sizes(); }

 private:
  PolicyConfig config_;
  ApproxTree tree_;
};

}  // namespace

Result<std::unique_ptr<Policy>> make_policy(const std::string& name, const PolicyConfig& config) {
  if (name == "random") return std::unique_ptr<Policy>(std::make_unique<RandomPolicy>());
  if (name == "round_robin") return std::unique_ptr<Policy>(std::make_unique<RoundRobinPolicy>());
  if (name == "power_of_two") return std::unique_ptr<Policy>(std::make_unique<PowerOfTwoPolicy>());
  if (name == "cache_aware") return std::unique_ptr<Policy>(std::make_unique<CacheAwarePolicy>(config));
  return make_error(ErrorCode::kInvalidArgument, "unknown policy '{}' (random, round_robin, power_of_two, cache_aware)",
                    name);
}

}  // namespace pdserve::router
