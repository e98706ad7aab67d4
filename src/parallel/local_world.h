// All ranks of one RankLayout as threads of this process ("CPU virtual ranks"): the groups of the
// layout wired up as LocalGroups, and a runner that starts one thread per rank with its log prefix
// (DP/TP/EP), the way `pdserve serve` will run one scheduler thread per rank.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "parallel/communicator.h"
#include "parallel/local_group.h"
#include "parallel/rank_layout.h"

namespace pdserve::parallel {

// One rank's handles on the groups it belongs to.
struct RankComms {
  std::unique_ptr<Communicator> tp;       // all ranks of the replica (the "world" of one server)
  std::unique_ptr<Communicator> attn_tp;  // ranks sharing one attention (size 1 with full DP attention)
  std::unique_ptr<Communicator> ep;       // ranks exchanging MoE tokens
};

class LocalWorld {
 public:
  LocalWorld(const RankLayout& layout, CollectiveOptions opts = {});
  LocalWorld(const LocalWorld&) = delete;
  LocalWorld& operator=(const LocalWorld&) = delete;

  const RankLayout& layout() const { return layout_; }
  RankComms& comms(int global_rank) { return comms_.at(static_cast<size_t>(global_rank)); }

  // Breaks every group (ranks blocked in a collective return an error naming `reason`).
  void abort_all(const std::string& reason);

  // Calls fn(rank, comms) on one thread per rank and returns every rank's Status, in rank order.
  // A rank that fails (an error, or an exception, which becomes an error) aborts all groups, so
  // its peers stop at their next collective instead of waiting out the timeout.
  using RankFn = std::function<Status(const RankInfo&, RankComms&)>;
  std::vector<Status> run(const RankFn& fn);

 private:
  RankLayout layout_;
  std::vector<std::shared_ptr<LocalGroup>> groups_;
  std::vector<RankComms> comms_;
};

// The first error among per-rank results (with its rank in front), or OK.
Status first_error(const std::vector<Status>& statuses);

}  // namespace pdserve::parallel
