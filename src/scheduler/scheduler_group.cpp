// The scheduler's expert-parallel lockstep (step_sync.h). Every iteration of an awake group is
// exactly one agreement on every rank: the rank that builds a batch agrees just before its forward
// (join_group_pass), a rank that builds none agrees at the end of the iteration (idle_group_pass)
// and, if anyone runs a pass, runs an idle pass so that every MoE layer's exchange completes.
// After an agreement in which nobody has work, every rank sleeps (all at the same agreement);
// a message to any rank wakes the group.
#include <chrono>

#include "base/logging.h"
#include "scheduler/scheduler.h"

namespace pdserve::scheduler {

void Scheduler::set_step_sync(std::shared_ptr<StepSync> sync) {
  sync_ = std::move(sync);
  sync_->set_waker([this] {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    inbox_cv_.notify_all();
  });
}

bool Scheduler::wait_for_group_work() {
  if (group_error_) {
    // The group is gone: answer messages (requests fail at once in group_step), nothing else.
    std::unique_lock<std::mutex> lock(inbox_mu_);
    inbox_cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return !inbox_.empty() || stopping_.load(); });
    return !inbox_.empty() && !stopping_;
  }
  if (!group_asleep_) return true;
  bool own = false, woken = false;
  {
    std::unique_lock<std::mutex> lock(inbox_mu_);
    // The timeout only bounds how long a stop could go unnoticed; wake-ups come from notify.
    inbox_cv_.wait_for(lock, std::chrono::milliseconds(100),
                       [&] { return !inbox_.empty() || stopping_.load() || sync_->rung(agreements_); });
    if (stopping_) return false;
    own = !inbox_.empty();
    woken = sync_->rung(agreements_);
  }
  // Ring without holding our own inbox lock: the wakers take the peers' locks.
  if (own && !woken) sync_->ring(agreements_);
  if (!own && !woken) return false;
  group_asleep_ = false;
  return true;
}

bool Scheduler::group_step() {
  if (group_error_) {
    drain_inbox();
    fail_everything(*group_error_, 503);
    update_stats();
    return false;
  }
  agreed_this_step_ = false;
  bool worked = step_local();
  if (!agreed_this_step_ && idle_group_pass()) worked = true;
  return worked;
}

Status Scheduler::join_group_pass(int64_t tokens, bool extend) {
  if (!sync_) return ok_status();
  agreed_this_step_ = true;
  auto g = sync_->agree(tokens, extend, true);
  ++agreements_;
  if (!g) {
    group_failed(g.error().message());
    return g.error();
  }
  runner_->begin_group_step(*g);
  return ok_status();
}

bool Scheduler::idle_group_pass() {
  agreed_this_step_ = true;
  const bool awake = !waiting_.empty() || !running_.empty() || chunked_owner_ || disagg_busy();
  auto g = sync_->agree(0, false, awake);
  ++agreements_;
  if (!g) {
    group_failed(g.error().message());
    return false;
  }
  if (g->max_tokens == 0) {
    if (!g->any_awake) group_asleep_ = true;  // every rank decides this from the same facts
    return false;
  }
  runner_->begin_group_step(*g);
  if (Status s = runner_->idle_forward(); !s.has_value()) {
    log::error("idle pass failed: {}", s.error().message());
    group_failed(s.error().message());
  }
  return true;
}

void Scheduler::group_failed(const std::string& reason) {
  if (group_error_) return;
  group_error_ = "expert-parallel group failed: " + reason;
  log::error("{}; this rank fails its requests from now on", *group_error_);
  sync_->abort(reason);  // peers blocked in an exchange with us return at once
}

void Scheduler::fail_everything(const std::string& reason, int status) {
  int64_t n = 0;
  for (auto& r : waiting_) {
    if (r->slot >= 0) cache_->retract(static_cast<int32_t>(r->slot));
    emit(*r, true, abort_reason(reason, status));
    ++n;
  }
  waiting_.clear();
  if (chunked_owner_) {
    finish(chunked_owner_.get(), abort_reason(reason, status), false);
    ++n;
  }
  while (!running_.empty()) {
    finish(running_.back().get(), abort_reason(reason, status), false);
    ++n;
  }
  n += disagg_abort([](const Request&) { return true; }, reason);
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.num_aborted_total += n;
}

}  // namespace pdserve::scheduler
