// --enable-expert-distribution-metrics (SGLang's utilization-rate accumulator, sglang-spec §7): the
// balancedness of every forward pass while the recorder records (the flag starts it at startup).
//
// A pass's balancedness, as SGLang computes it: per layer, the slots each EP rank's physical experts
// served, then (mean over ranks + 1e-5) / (busiest rank + 1e-5), averaged over all the model's
// layers (so a layer nobody used, a dense one included, counts as 1). Each complete pass is either
// logged, in SGLang's words,
//   [Expert Balancedness] forward_pass_id=12 current_pass_balancedness=0.812
//   last_10_average_balancedness=0.804 last_100_average_balancedness=0.790
//   last_1000_average_balancedness=0.790 gpu_physical_count_sum=2048
// (one line), or, with SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC=1, observed into the Prometheus
// summary sglang:eplb_balancedness{forward_mode="decode"|"extend"} instead, as SGLang does.
//
// Ranks report their passes separately (same forward pass id = same pass, as the recorder sums
// them); a pass is complete when every rank of this process has reported it, or, since DP ranks
// without EP count their own passes and an idle rank reports none, once a pass 8 ids newer exists.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "moe/expert_distribution.h"
#include "moe/expert_location.h"

namespace pdserve::moe {

// SGLang's compute_utilization_rate averaged over layers; physical: [layers * num_physical].
double pass_balancedness(std::span<const int64_t> physical, const ExpertLayout& layout);

// Whether SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC asks for the summary instead of the log lines
// (1, true or yes, any case).
bool balancedness_metric_from_env();

class ExpertBalanceMetrics {
 public:
  struct PassReport {
    int64_t forward_pass_id = 0;
    double balancedness = 1.0;
    std::vector<std::pair<int, double>> window_averages;  // (10 | 100 | 1000, mean of the last that many)
    int64_t count_sum = 0;                                // slots counted over all layers and ranks
    std::string forward_mode;                             // rank 0's if it reported, else the first
  };
  // `as_metric`: summary instead of log lines. `sink` sees every complete pass (tests); by default
  // each is logged or observed as above.
  explicit ExpertBalanceMetrics(ExpertLayout layout, bool as_metric,
                                std::function<void(const PassReport&)> sink = nullptr);

  // One more rank feeds this object (called once per wrapped rank runner at startup).
  void add_rank();
  // A rank's recorded pass: its id, rank and forward mode from `pass`, its counts flattened as
  // physical_counts_of(pass) makes them (the recorder's too: counted once); empty = nothing routed
  // (an idle rank). Thread safe. Counts of another size are kInvalidArgument, nothing recorded.
  Status add(const PassRouting& pass, std::span<const int64_t> physical);

  // sglang:eplb_balancedness summary lines (empty unless as_metric and something was observed).
  std::string render_metrics(const std::string& labels) const;

 private:
  struct Pending {
    std::vector<int64_t> physical;
    int reported = 0;
    std::string forward_mode;
    bool from_rank0 = false;
  };
  void complete_locked(int64_t pass_id, Pending& p);

  ExpertLayout layout_;
  bool as_metric_;
  std::function<void(const PassReport&)> sink_;
  mutable std::mutex mu_;
  int num_ranks_ = 0;
  std::map<int64_t, Pending> pending_;
  int64_t newest_ = -1;
  std::deque<double> history_;  // the last 1000 passes' balancedness
  struct Summary {
    int64_t count = 0;
    double sum = 0;
  };
  std::map<std::string, Summary> summaries_;  // by forward mode
};

}  // namespace pdserve::moe
