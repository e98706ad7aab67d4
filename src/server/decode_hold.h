// /hold_decode: the hold fill of `pdserve repro` (docs/repro.md), a faster alternative to
// SGLang's /slow_down fill. While a hold is on, no DP rank runs a decode step (prefill batches and
// PD KV transfers go on), so the requests that arrive pile up in the running batch and none
// finishes; once Σ over ranks of #running-req reaches the target, or the timeout passes, every rank
// is released and the next decode step runs the full batch.
//
// Why on the server and not in each scheduler: the target is global (the sum over DP ranks, as the
// published fill counts it) and requests are not spread evenly over ranks. A watcher thread sums
// the ranks' statistics; each rank also gets the deadline (plus a margin) so that a hold ends even
// if the watcher's release were lost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "http/server.h"
#include "server/rank_handle.h"

namespace pdserve::server {

class DecodeHold {
 public:
  explicit DecodeHold(std::vector<RankHandle*> ranks);
  // Releases a hold in progress and joins the watcher. Destroy it before the ranks.
  ~DecodeHold();
  DecodeHold(const DecodeHold&) = delete;
  DecodeHold& operator=(const DecodeHold&) = delete;

  // Starts a hold, or replaces the one in progress (new target and deadline).
  void hold(int64_t until_running, double timeout_s);
  // Ends a hold in progress now (`reason` is logged and reported).
  void release(const std::string& reason);
  // {"holding", "until_running", "timeout", "running", "held_seconds", "released_by",
  //  "running_at_release"}: the hold in progress, else the last one.
  nlohmann::json state() const;

 private:
  using Clock = std::chrono::steady_clock;
  void watch();
  int64_t running() const;  // Σ over ranks of #running-req (the ranks' latest statistics)
  void release_locked(const std::string& reason, int64_t running);

  std::vector<RankHandle*> ranks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool holding_ = false, quit_ = false;
  int64_t target_ = 0;
  double timeout_s_ = 0;
  Clock::time_point since_, deadline_;
  std::string released_by_;
  int64_t running_at_release_ = 0;
  double held_seconds_ = 0;
  std::thread watcher_;  // started by the first hold, runs until destruction
};

// POST /hold_decode {"until_running": N, "timeout": S} starts a hold (S default 300 s);
// {"until_running": null} releases it; GET /hold_decode answers the state. Bad input: 400.
void register_hold_decode_route(http::Server& server, DecodeHold& hold, const std::string& api_key);

}  // namespace pdserve::server
