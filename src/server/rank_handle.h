// What the server's front (tokenizer manager, control routes, metrics) needs from one DP rank,
// wherever the rank runs: a scheduler in this process (LocalRank) or on another node of a
// multi-node server, reached over ZeroMQ (remote_ranks.h).
#pragma once

#include <future>
#include <string>

#include <nlohmann/json.hpp>

#include "scheduler/scheduler.h"

namespace pdserve::server {

class RankHandle {
 public:
  virtual ~RankHandle() = default;
  virtual int dp_rank() const = 0;
  virtual void submit(scheduler::GenerateInput in) = 0;
  // Aborts requests whose rid starts with `rid_prefix`, or all; each answers with a final output.
  virtual void abort(const std::string& rid_prefix, bool all, const std::string& message) = 0;
  // A control command (flush_cache, slow_down, get_load, internal_state, start_profile, ...). A
  // remote rank that cannot be reached answers {"success": false, "message": ...}.
  virtual std::future<nlohmann::json> control(const std::string& command, nlohmann::json args) = 0;
  // The latest statistics (a remote rank's are at most a second old).
  virtual scheduler::SchedulerStats stats() const = 0;
};

class LocalRank final : public RankHandle {
 public:
  explicit LocalRank(scheduler::Scheduler* s) : s_(s) {}
  int dp_rank() const override { return s_->config().dp_rank; }
  void submit(scheduler::GenerateInput in) override { s_->submit(std::move(in)); }
  void abort(const std::string& rid_prefix, bool all, const std::string& message) override {
    s_->abort(rid_prefix, all, message);
  }
  std::future<nlohmann::json> control(const std::string& command, nlohmann::json args) override {
    return s_->control(command, std::move(args));
  }
  scheduler::SchedulerStats stats() const override { return s_->stats(); }

 private:
  scheduler::Scheduler* s_;
};

}  // namespace pdserve::server
