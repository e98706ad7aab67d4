#include "moe/eplb_manager.h"

#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "base/clock.h"
#include "base/logging.h"

namespace pdserve::moe {

Result<std::unique_ptr<EplbManager>> EplbManager::create(EplbManagerOptions opts,
                                                         std::shared_ptr<const ExpertLocation> initial,
                                                         ExpertDistributionRecorder* recorder) {
  if (opts.rebalance_num_iterations < 1)
    return make_error(ErrorCode::kInvalidArgument, "--eplb-rebalance-num-iterations must be at least 1, got {}",
                      opts.rebalance_num_iterations);
  if (!(opts.min_rebalancing_utilization_threshold >= 0.0 && opts.min_rebalancing_utilization_threshold <= 1.0))
    return make_error(ErrorCode::kInvalidArgument, "--eplb-min-rebalancing-utilization-threshold must be in [0, 1], got {}",
                      opts.min_rebalancing_utilization_threshold);
  if (!initial || !recorder) return make_error(ErrorCode::kInvalidArgument, "EPLB manager: no placement or recorder");
  const ExpertLayout& l = initial->layout();
  opts.eplb.num_physical_experts = l.num_physical;
  opts.eplb.num_gpus = l.ep_size;
  // Fail at startup, not at the first rebalance, when the sizes do not divide.
  if (auto probe = rebalance_experts(Matrix(1, l.num_logical), opts.eplb); !probe.has_value())
    return probe.error().with_context("--enable-eplb");
  auto m = std::unique_ptr<EplbManager>(new EplbManager(std::move(opts), std::move(initial), recorder));
  recorder->start();
  log::info("[EPLBManager] system started, will rebalance per {} iterations.", m->opts_.rebalance_num_iterations);
  return m;
}

EplbManager::EplbManager(EplbManagerOptions opts, std::shared_ptr<const ExpertLocation> initial,
                         ExpertDistributionRecorder* recorder)
    : opts_(std::move(opts)), layout_(initial->layout()), recorder_(recorder), location_(std::move(initial)),
      next_trigger_(opts_.rebalance_num_iterations) {
  history_.emplace_back(0, location_);
}

std::shared_ptr<const ExpertLocation> EplbManager::location() const {
  std::lock_guard<std::mutex> lock(pub_mu_);
  return location_;
}

std::shared_ptr<const ExpertLocation> EplbManager::location_at(int64_t step) const {
  std::lock_guard<std::mutex> lock(pub_mu_);
  for (auto it = history_.rbegin(); it != history_.rend(); ++it)
    if (it->first <= step) return it->second;
  return history_.front().second;  // older than everything kept: cannot happen in lockstep
}

void EplbManager::publish(std::shared_ptr<const ExpertLocation> loc) {
  {
    std::lock_guard<std::mutex> lock(pub_mu_);
    history_.emplace_back(effect_step_, loc);
    if (history_.size() > 8) history_.pop_front();
    location_ = std::move(loc);
  }
  // After the pointer: a rank that sees the new version also gets the new snapshot.
  version_.fetch_add(1, std::memory_order_acq_rel);
}

bool EplbManager::rebalancing() const {
  std::lock_guard<std::mutex> lock(work_mu_);
  return target_ != nullptr;
}

void EplbManager::on_forward_pass(int64_t pass_id) { advance(pass_id + 1, 0); }

// Group step s starts after s passes: the same trigger arithmetic as on_forward_pass's "pass s - 1
// finished", with what it publishes taking effect at the next step.
void EplbManager::on_group_step(int64_t step) { advance(step, step + 1); }

void EplbManager::advance(int64_t step, int64_t effect_step) {
  int64_t prev = max_step_.load();
  while (step > prev && !max_step_.compare_exchange_weak(prev, step)) {
  }
  if (step <= prev) return;  // another rank already finished this server step
  // Ranks advance the step one at a time, so a busy lock means another rank is computing a
  // placement: skip rather than block (the chunk goes out at the next step).
  std::unique_lock<std::mutex> lock(work_mu_, std::try_to_lock);
  if (!lock.owns_lock()) return;
  effect_step_ = effect_step;
  if (target_) {
    apply_chunk_locked();
  } else if (step >= next_trigger_) {
    // Every N steps; a step skipped above (lock busy) triggers at the next one instead.
    next_trigger_ = (step / opts_.rebalance_num_iterations + 1) * opts_.rebalance_num_iterations;
    start_locked(step);
  }
}

bool EplbManager::start_rebalance() {
  std::lock_guard<std::mutex> lock(work_mu_);
  if (target_) return false;
  return start_locked(max_step_.load());
}

bool EplbManager::start_locked(int64_t step) {
  log::info("[EPLBManager] rebalance start");
  started_at_ = Clock::monotonic();
  auto current = location();
  Matrix counts = recorder_->window_logical_counts(*current);
  const double total = std::accumulate(counts.values.begin(), counts.values.end(), 0.0);
  if (!(total > 0)) {
    log::info("[EPLBManager] rebalance skipped: no expert usage recorded in the window (is the recorder stopped?)");
    return false;
  }
  // The window's balancedness (mean over MoE layers of mean / max rank load) under the placement in
  // effect. SGLang's utilization check: above the threshold the placement is kept.
  auto before = compute_balancedness(counts, current->physical_to_logical(), layout_.ep_size);
  const double threshold = opts_.min_rebalancing_utilization_threshold;
  if (before.has_value() && before->mean > threshold) {
    log::info("[EPLBManager] Skipped ep rebalancing: current GPU utilization {:.2f} > minimum rebalance threshold {:.2f}",
              before->mean, threshold);
    return false;
  }
  auto target = ExpertLocation::from_counts(layout_, counts, opts_.eplb);
  if (!target.has_value()) {
    log::warning("[EPLBManager] rebalance failed, keeping the placement: {}", target.error().message());
    return false;
  }
  auto after = compute_balancedness(counts, target->physical_to_logical(), layout_.ep_size);
  if (before.has_value() && after.has_value())
    log::info("[Expert Balancedness] forward_pass_id={} window_passes={} window_balancedness_before={:.3f} "
              "window_balancedness_after={:.3f} gpu_physical_count_sum={:.0f}",
              step, recorder_->num_passes(), before->mean, after->mean, total);
  int moved = 0;  // slots whose expert changes: what GPU EP would have to copy
  for (int l = 0; l < layout_.num_layers; ++l)
    for (int p = 0; p < layout_.num_physical; ++p) moved += target->logical_of(l, p) != current->logical_of(l, p);
  log::info("[EPLBManager] new placement changes {} of {} physical expert slots ({} layers, {} per chunk)", moved,
            layout_.num_layers * layout_.num_physical, layout_.num_layers,
            opts_.layers_per_chunk > 0 ? std::to_string(opts_.layers_per_chunk) : std::string("all"));
  target_ = std::make_shared<const ExpertLocation>(std::move(*target));
  next_layer_ = 0;
  apply_chunk_locked();  // the first chunk now, as SGLang's updater does
  return true;
}

void EplbManager::apply_chunk_locked() {
  const int num_layers = layout_.num_layers;
  const int k = opts_.layers_per_chunk > 0 ? static_cast<int>(std::min<int64_t>(opts_.layers_per_chunk, num_layers))
                                           : num_layers;
  const int end = std::min(num_layers, next_layer_ + k);
  auto current = location();
  std::vector<std::vector<int>> p2l = current->physical_to_logical();
  for (int l = next_layer_; l < end; ++l) p2l[l] = target_->physical_to_logical()[l];
  if (end == num_layers) {
    publish(target_);
  } else {
    auto mixed = ExpertLocation::from_mapping(layout_, p2l);  // every layer complete: cannot fail
    if (!mixed.has_value()) {
      log::warning("[EPLBManager] rebalance aborted: {}", mixed.error().message());
      target_.reset();
      return;
    }
    publish(std::make_shared<const ExpertLocation>(std::move(*mixed)));
  }
  next_layer_ = end;
  if (end < num_layers) return;
  target_.reset();
  num_rebalances_.fetch_add(1);
  // The window's physical counts were taken under the old maps; read under the new ones they would
  // be misattributed, so the next window starts now (unless someone stopped the recorder).
  if (recorder_->recording()) recorder_->start();
  log::info("[EPLBManager] rebalance end time={:.3f}s", Clock::monotonic() - started_at_);
}

double EplbManager::current_balancedness() const {
  auto loc = location();
  Matrix counts = recorder_->window_logical_counts(*loc);
  auto b = compute_balancedness(counts, loc->physical_to_logical(), layout_.ep_size);
  return b.has_value() ? b->mean : 1.0;
}

std::string EplbManager::render_metrics(const std::string& labels) const {
  return fmt::format(
      "# HELP sglang:eplb_window_balancedness Mean over MoE layers of mean/max EP rank load in the recorded "
      "window under the current expert placement (1 = balanced).\n# TYPE sglang:eplb_window_balancedness gauge\n"
      "sglang:eplb_window_balancedness{{{}}} {}\n"
      "# HELP sglang:eplb_rebalances_total Online expert rebalances completed.\n"
      "# TYPE sglang:eplb_rebalances_total counter\nsglang:eplb_rebalances_total{{{}}} {}\n",
      labels, current_balancedness(), labels, num_rebalances());
}

RankExpertLocation::RankExpertLocation(const EplbManager* manager, std::shared_ptr<const ExpertLocation> initial,
                                       DispatchAlgorithm algorithm, int ep_rank)
    : manager_(manager),
      version_(manager ? manager->version() : 0),
      dispatcher_(manager ? manager->location() : std::move(initial), algorithm, ep_rank) {}

void RankExpertLocation::sync() {
  if (!manager_) return;
  const uint64_t v = manager_->version();
  if (v == version_) return;
  // Read the version first: a publish racing with this read leaves v behind, caught next pass.
  dispatcher_.set_location(manager_->location());
  version_ = v;
}

}  // namespace pdserve::moe
