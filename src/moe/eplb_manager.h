// Online expert rebalancing (SGLang's EPLBManager + ExpertLocationUpdater, sglang-spec §8.4): every
// `rebalance_num_iterations` forward passes, EPLB is run on the recorder's window and the new
// placement is published `layers_per_chunk` layers at a time, one chunk per following pass.
//
// Serving never stops for it. The placement is an immutable ExpertLocation snapshot; a rebalance
// publishes a new snapshot (old layers + the next chunk of new layers) and bumps a version. Each
// rank's scheduler thread owns its ExpertDispatcher and swaps in the snapshot itself at the start of
// its next forward pass when it sees a new version (sync()), so no map is ever mutated while a
// forward reads it, and a rank that is mid-pass finishes it on the snapshot it started with.
//
// Forward passes are counted per server, not per rank: ranks number their own passes, and the
// recorder sums the ranks' counts by pass id, so a server step is "the highest pass id any rank has
// finished". Exactly one rank thread sees each step first and drives the rebalance for it.
//
// On the CPU backend every rank holds every expert, so publishing the maps is the whole move. On GPU
// EP the expert weights would also be copied between ranks per chunk (not built here).
//
// Expert-parallel groups (--moe-a2a-backend deepep) cannot switch rank by rank: a token sent to
// physical slot p must find p's new expert on p's rank in the same pass. Their ranks run in
// lockstep (one begin_step per agreed group step on every rank), so they drive the manager with
// on_group_step and read location_at(step): a placement published while step s runs takes effect
// at step s + 1 on every rank. No rank can be past step s then (step s + 1 needs the publishing
// rank's agreement), and a rank still at step s keeps the snapshot every rank uses for s.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "base/status.h"
#include "moe/eplb.h"
#include "moe/expert_distribution.h"
#include "moe/expert_location.h"
#include "moe/expert_location_dispatch.h"

namespace pdserve::moe {

struct EplbManagerOptions {
  int64_t rebalance_num_iterations = 1000;  // server forward passes between rebalances
  int64_t layers_per_chunk = -1;            // layers published per pass; <= 0: all at once
  // --eplb-min-rebalancing-utilization-threshold: a rebalance is skipped (and logged, as SGLang
  // does) when the window's balancedness under the current placement is above it; 1.0: never.
  double min_rebalancing_utilization_threshold = 1.0;
  EplbOptions eplb;                         // algorithm, groups, nodes (sizes come from the layout)
};

class EplbManager {
 public:
  // kInvalidArgument for rebalance_num_iterations < 1. `recorder` must outlive the manager and
  // have the same layout as `initial`; it is started (recording from startup, as SGLang).
  static Result<std::unique_ptr<EplbManager>> create(EplbManagerOptions opts,
                                                     std::shared_ptr<const ExpertLocation> initial,
                                                     ExpertDistributionRecorder* recorder);

  // The placement in effect now (a snapshot: never changes after it is returned) and its version.
  std::shared_ptr<const ExpertLocation> location() const;
  uint64_t version() const { return version_.load(std::memory_order_acquire); }

  // Called by a rank's thread after its forward pass `pass_id` (the rank's own 0-based count).
  // Starts a rebalance when the server step crosses a multiple of rebalance_num_iterations, and
  // publishes the next chunk of a rebalance in progress on each new step.
  void on_forward_pass(int64_t pass_id);

  // The lockstep form (EP groups; above): called by every rank at the start of group step `step`
  // (0-based, the same numbering on every rank), before location_at(step). A chunk published here
  // takes effect at step + 1. Use one form per manager.
  void on_group_step(int64_t step);
  // The placement in effect at group step `step`: the newest published with effect <= step.
  std::shared_ptr<const ExpertLocation> location_at(int64_t step) const;

  // Runs EPLB on the window now and publishes the first chunk (tests of the on_forward_pass form;
  // on_forward_pass calls it).
  // False when nothing was started: empty window, a rebalance already in progress, or an error
  // (logged).
  bool start_rebalance();

  bool rebalancing() const;
  int64_t num_rebalances() const { return num_rebalances_.load(); }
  // Balancedness (mean / max GPU load, 1 = perfect) of the recorder's current window under the
  // placement in effect; 1.0 while the window is empty.
  double current_balancedness() const;
  // The Prometheus lines: sglang:eplb_window_balancedness (gauge; not SGLang's sglang:eplb_balancedness,
  // a per-pass summary: moe/expert_balance_metrics.h), sglang:eplb_rebalances_total (counter).
  std::string render_metrics(const std::string& labels) const;

 private:
  EplbManager(EplbManagerOptions opts, std::shared_ptr<const ExpertLocation> initial,
              ExpertDistributionRecorder* recorder);
  void publish(std::shared_ptr<const ExpertLocation> loc);
  // The step bookkeeping of both forms: whether this call is the first to reach `step`; then,
  // unless another rank thread is computing, the next chunk or a new rebalance.
  void advance(int64_t step, int64_t effect_step);
  bool start_locked(int64_t step);
  void apply_chunk_locked();

  EplbManagerOptions opts_;
  ExpertLayout layout_;
  ExpertDistributionRecorder* recorder_;

  mutable std::mutex pub_mu_;  // guards location_ (short: pointer copies only)
  std::shared_ptr<const ExpertLocation> location_;
  std::atomic<uint64_t> version_{0};
  // Lockstep form: the last few placements with the group step each takes effect at (ranks are
  // at most one step apart, so two would do; a few more cost nothing). Guarded by pub_mu_.
  std::deque<std::pair<int64_t, std::shared_ptr<const ExpertLocation>>> history_;

  std::atomic<int64_t> max_step_{0};
  mutable std::mutex work_mu_;  // one rank thread runs the rebalance steps at a time
  std::shared_ptr<const ExpertLocation> target_;  // the rebalance in progress, or null
  int64_t next_trigger_ = 0;  // the server step of the next rebalance
  int64_t effect_step_ = 0;   // the step a publish takes effect at (lockstep: the next; else 0, now)
  int next_layer_ = 0;
  double started_at_ = 0;
  std::atomic<int64_t> num_rebalances_{0};
};

// A rank's view: its own dispatcher, re-pointed at the manager's placement when the version moves.
// Owned and used by one thread (the rank's scheduler thread).
class RankExpertLocation {
 public:
  RankExpertLocation(const EplbManager* manager, std::shared_ptr<const ExpertLocation> initial,
                     DispatchAlgorithm algorithm, int ep_rank);
  // Picks up a newer placement, if any; call at the start of a forward pass, never during one.
  void sync();
  ExpertDispatcher& dispatcher() { return dispatcher_; }
  uint64_t version() const { return version_; }

 private:
  const EplbManager* manager_;  // null: the placement is fixed
  uint64_t version_ = 0;        // before dispatcher_: read before the snapshot it stands for
  ExpertDispatcher dispatcher_;
};

// An EP rank's view in the lockstep form (EP ranks, CPU or GPU): the placement its slots hold, and
// the group step it is at. Owned and used by one thread (the rank's).
class LockstepExpertLocation {
 public:
  LockstepExpertLocation(EplbManager* manager, std::shared_ptr<const ExpertLocation> initial)
      : manager_(manager), held_(std::move(initial)) {}
  struct Switch {
    std::shared_ptr<const ExpertLocation> from, to;
  };
  // At the start of every group step (the rank's begin_step): drives the manager, then returns the
  // switch to the placement in effect for this step, if it differs from the one held (which it
  // becomes: the caller applies it before the step's pass, or fails every pass from here on).
  std::optional<Switch> begin_step() {
    const int64_t step = step_++;
    manager_->on_group_step(step);  // may publish a placement for step + 1, never for this one
    auto next = manager_->location_at(step);
    if (next == held_) return std::nullopt;
    Switch s{held_, next};
    held_ = std::move(next);
    return s;
  }

 private:
  EplbManager* manager_;
  std::shared_ptr<const ExpertLocation> held_;
  int64_t step_ = 0;  // begin_step calls so far: the same count on every rank
};

}  // namespace pdserve::moe
