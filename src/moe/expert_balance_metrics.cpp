#include "moe/expert_balance_metrics.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <numeric>

#include <fmt/format.h>

#include "base/logging.h"

namespace pdserve::moe {

namespace {
constexpr int kWindows[] = {10, 100, 1000};
constexpr int64_t kLagPasses = 8;  // a pass this far behind the newest is complete with what it has
}  // namespace

double pass_balancedness(std::span<const int64_t> physical, const ExpertLayout& lay) {
  if (lay.num_layers <= 0 || lay.ep_size <= 0) return 1.0;
  const int per_rank = lay.num_local_physical();
  double sum = 0;
  for (int l = 0; l < lay.num_layers; ++l) {
    std::vector<double> rank(static_cast<size_t>(lay.ep_size), 0.0);
    for (int p = 0; p < lay.num_physical; ++p)
      rank[static_cast<size_t>(p / per_rank)] += static_cast<double>(physical[static_cast<size_t>(l) * lay.num_physical + p]);
    const double mx = *std::max_element(rank.begin(), rank.end());
    const double mean = std::accumulate(rank.begin(), rank.end(), 0.0) / lay.ep_size;
    sum += (mean + 1e-5) / (mx + 1e-5);  // SGLang's smoothing: an unused layer is balanced
  }
  return sum / lay.num_layers;
}

bool balancedness_metric_from_env() {
  const char* v = std::getenv("SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC");
  if (!v) return false;
  std::string s(v);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s == "1" || s == "true" || s == "yes";
}

ExpertBalanceMetrics::ExpertBalanceMetrics(ExpertLayout layout, bool as_metric,
                                           std::function<void(const PassReport&)> sink)
    : layout_(layout), as_metric_(as_metric), sink_(std::move(sink)) {}

void ExpertBalanceMetrics::add_rank() {
  std::lock_guard lock(mu_);
  ++num_ranks_;
}

Status ExpertBalanceMetrics::add(const PassRouting& pass, std::span<const int64_t> physical) {
  const size_t size = static_cast<size_t>(layout_.num_layers) * layout_.num_physical;
  if (!physical.empty() && physical.size() != size)
    return make_error(ErrorCode::kInvalidArgument, "expert balancedness: {} counts for {} layers x {} physical experts",
                      physical.size(), layout_.num_layers, layout_.num_physical);
  std::lock_guard lock(mu_);
  if (pass.forward_pass_id <= newest_ - kLagPasses) return ok_status();  // its pass was completed without it
  Pending& p = pending_[pass.forward_pass_id];
  if (p.physical.empty()) p.physical.assign(size, 0);
  for (size_t i = 0; i < physical.size(); ++i) p.physical[i] += physical[i];
  ++p.reported;
  if (pass.rank == 0) {
    p.forward_mode = pass.forward_mode;
    p.from_rank0 = true;
  } else if (!p.from_rank0 && p.forward_mode.empty()) {
    p.forward_mode = pass.forward_mode;
  }
  newest_ = std::max(newest_, pass.forward_pass_id);
  // Complete, in pass order: this pass if every rank reported it, and every pass left too far behind.
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->second.reported >= std::max(1, num_ranks_) || it->first <= newest_ - kLagPasses) {
      complete_locked(it->first, it->second);
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  return ok_status();
}

void ExpertBalanceMetrics::complete_locked(int64_t pass_id, Pending& p) {
  PassReport r;
  r.forward_pass_id = pass_id;
  r.balancedness = pass_balancedness(p.physical, layout_);
  r.count_sum = std::accumulate(p.physical.begin(), p.physical.end(), int64_t{0});
  r.forward_mode = p.forward_mode;
  history_.push_back(r.balancedness);
  if (history_.size() > 1000) history_.pop_front();
  for (int w : kWindows) {
    const size_t n = std::min(history_.size(), static_cast<size_t>(w));
    r.window_averages.emplace_back(w, std::accumulate(history_.end() - static_cast<std::ptrdiff_t>(n), history_.end(), 0.0) /
                                          static_cast<double>(n));
  }
  if (sink_) {
    sink_(r);
  } else if (as_metric_) {
    Summary& s = summaries_[r.forward_mode.empty() ? "unknown" : r.forward_mode];
    ++s.count;
    s.sum += r.balancedness;
  } else {
    std::string windows;
    for (const auto& [w, avg] : r.window_averages) windows += fmt::format("last_{}_average_balancedness={:.3f} ", w, avg);
    log::info("[Expert Balancedness] forward_pass_id={} current_pass_balancedness={:.3f} {}gpu_physical_count_sum={}",
              r.forward_pass_id, r.balancedness, windows, r.count_sum);
  }
}

std::string ExpertBalanceMetrics::render_metrics(const std::string& labels) const {
  std::lock_guard lock(mu_);
  if (summaries_.empty()) return "";
  std::string out =
      "# HELP sglang:eplb_balancedness Balancedness of MoE in expert parallelism.\n"
      "# TYPE sglang:eplb_balancedness summary\n";
  const std::string sep = labels.empty() ? "" : ",";
  for (const auto& [mode, s] : summaries_) {
    out += fmt::format("sglang:eplb_balancedness_count{{{}{}forward_mode=\"{}\"}} {}\n", labels, sep, mode, s.count);
    out += fmt::format("sglang:eplb_balancedness_sum{{{}{}forward_mode=\"{}\"}} {}\n", labels, sep, mode, s.sum);
  }
  return out;
}

}  // namespace pdserve::moe
