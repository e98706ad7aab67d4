// Worker selection policies, as SGLang's router defines them (sglang-spec §3.2): random,
// round_robin, power_of_two (two random workers, the less loaded wins) and cache_aware (prefix
// affinity through an approximate radix tree, overridden by load when the load is imbalanced).
// Load is the router's own in-flight count per worker.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "router/approx_tree.h"
#include "router/worker.h"

namespace pdserve::router {

struct PolicyConfig {
  double cache_threshold = 0.3;
  int64_t balance_abs_threshold = 64;
  double balance_rel_threshold = 1.5;
  int64_t max_tree_size = int64_t{1} << 26;
};

// What policies did, for /metrics.
struct PolicyStats {
  std::atomic<uint64_t> cache_hits{0}, cache_misses{0}, balance_events{0};
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;
  // Picks one of `workers` (non-empty, all available) for a request whose text is `text`
  // (cache_aware only). Returns an index into `workers`.
  virtual std::size_t select(const std::vector<WorkerPtr>& workers, std::string_view text) = 0;
  // Periodic upkeep (cache_aware evicts its tree) and worker removal.
  virtual void maintain() {}
  virtual void remove_worker(const std::string& url) { (void)url; }
  // cache_aware: bytes of text per worker in the tree.
  virtual std::map<std::string, std::size_t> tree_sizes() const { return {}; }
  const PolicyStats& stats() const { return stats_; }

 protected:
  PolicyStats stats_;
};

// kInvalidArgument for an unknown name.
Result<std::unique_ptr<Policy>> make_policy(const std::string& name, const PolicyConfig& config);

// Uniform in [0, n): a per-thread generator seeded from the OS (policies and bootstrap rooms).
uint64_t random_u64();
std::size_t random_index(std::size_t n);

}  // namespace pdserve::router
