// Lockstep of the DP ranks of one expert-parallel group (scheduler_group.cpp): every MoE layer
// exchanges tokens among all of them, so they must run their passes together, a rank without
// requests running an idle pass. Before each pass the ranks agree on what the group runs
// (SGLang's prepare_mlp_sync_batch all-gather); when the agreement says nobody has work, all of
// them go to sleep at the same agreement, and the first rank that gets a message wakes the rest
// (ring). The scheduler codes against this interface; server/ep_ranks.h implements it over a
// parallel::Communicator.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "base/status.h"
#include "scheduler/model_runner.h"

namespace pdserve::scheduler {

class StepSync {
 public:
  virtual ~StepSync() = default;
  // Collective over the group: every rank calls it once per loop iteration of the group, in the
  // same order. tokens: new tokens of this rank's pass (0: none); extend: it is a prefill batch;
  // awake: the rank has queued or running work. Errors when the group is broken (a peer timed out,
  // failed or stopped); after that every call fails.
  virtual Result<GroupStep> agree(int64_t tokens, bool extend, bool awake) = 0;
  // Sleep and wake-up. Ranks fall asleep after the agreement numbered `epoch` (counted from 0 by
  // each rank: the same number everywhere). ring(epoch) wakes every rank asleep since it; rung
  // says whether anyone did, so a rank that comes to sleep late cannot miss the ring.
  virtual void ring(uint64_t epoch) = 0;
  virtual bool rung(uint64_t epoch) const = 0;
  // `wake` is called (from the ringing thread) so that a sleeping rank re-checks rung().
  virtual void set_waker(std::function<void()> wake) = 0;
  // Breaks the group: agree() calls blocked now and later return errors naming `reason`.
  virtual void abort(const std::string& reason) = 0;
};

}  // namespace pdserve::scheduler
