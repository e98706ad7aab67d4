// `pdserve serve`'s expert load balancing (sglang-spec §7, §8): the flags, the placement the server
// starts from (--init-expert-location, --ep-num-redundant-experts), the distribution recorder fed
// by every rank's forward passes, and the /start|stop|dump_expert_distribution_record routes.
//
// The CPU backend computes every expert on every rank, so a placement does not move weights here:
// each rank maps its tokens' logical experts to physical copies with --ep-dispatch-algorithm (as
// the GPU EP path will) and the recorder counts those physical experts, which is what EPLB and the
// balancedness figures need. The EP group is the server's ranks (--dp-size).
#pragma once

#include <functional>
#include <memory>
#include <vector>
#include <string>

#include "base/status.h"
#include "http/server.h"
#include "model/config.h"
#include "moe/eplb_manager.h"
#include "moe/expert_balance_metrics.h"
#include "moe/expert_distribution.h"
#include "moe/expert_location.h"
#include "moe/expert_location_dispatch.h"
#include "scheduler/model_runner.h"
#include "server/expert_args.h"

namespace pdserve::server {


class ExpertBalancing : public std::enable_shared_from_this<ExpertBalancing> {
 public:
  // Builds the placement (logging how it was made) and the recorder; null when no expert flag asks
  // for anything (default placement, no recorder). Errors: a bad flag value, a placement that does
  // not fit the model. --enable-eplb without a recorder mode records in stat mode with a window of
  // --eplb-rebalance-num-iterations passes (SGLang's default), recording from startup.
  static Result<std::shared_ptr<ExpertBalancing>> create(const ExpertArgs& args, const model::ModelConfig& cfg,
                                                         int ep_size, const std::string& model_name);

  // The rank's runner, wrapped so that its forward passes feed the recorder. kUnsupported if the
  // recorder is on and the runner cannot report routing. `ep_ranks`: the runner's EP experts drive
  // the rebalancer themselves, step by step in lockstep (moe/eplb_manager.h), so the passes here
  // only record.
  Result<std::shared_ptr<scheduler::ModelRunner>> wrap(std::shared_ptr<scheduler::ModelRunner> inner, int rank,
                                                       bool ep_ranks = false);

  moe::ExpertDistributionRecorder* recorder() const { return recorder_.get(); }
  // Whether the runners must report per-layer expert counts (the recorder in stat or per_pass
  // mode): a GPU model then counts on the device, in its CUDA graphs too (count_experts).
  // per_token needs every token's experts instead, which GPU models report from eager passes.
  bool needs_expert_counts() const { return recorder_ && recorder_->options().mode != moe::RecorderMode::kPerToken; }
  // The placement in effect now (online rebalancing replaces it; the snapshot itself never changes).
  std::shared_ptr<const moe::ExpertLocation> location() const { return eplb_ ? eplb_->location() : location_; }
  moe::DispatchAlgorithm dispatch_algorithm() const { return dispatch_; }
  // The online rebalancer; null without --enable-eplb.
  moe::EplbManager* eplb() const { return eplb_.get(); }
  // The per-pass balancedness; null without --enable-expert-distribution-metrics.
  moe::ExpertBalanceMetrics* balance_metrics() const { return metrics_.get(); }
  // Prometheus lines of the rebalancer and the per-pass balancedness ("" when neither is on).
  std::string render_metrics(const std::string& labels) const;

 private:
  ExpertArgs args_;
  std::shared_ptr<const moe::ExpertLocation> location_;  // the initial placement
  std::unique_ptr<moe::ExpertDistributionRecorder> recorder_;
  std::unique_ptr<moe::EplbManager> eplb_;  // after recorder_: destroyed first
  std::unique_ptr<moe::ExpertBalanceMetrics> metrics_;
  moe::DispatchAlgorithm dispatch_ = moe::DispatchAlgorithm::kStatic;
  int top_k_ = 0;
};

// Multi-node: sends "start" | "stop" | "dump" to every other node's recorder (the replies of
// expert_record_node_command, one per node). Empty on a one-process server.
using OtherNodesRecorder = std::function<std::vector<nlohmann::json>(const std::string& action)>;

// /start_expert_distribution_record, /stop_expert_distribution_record,
// /dump_expert_distribution_record (GET and POST) with SGLang's replies; 400 with a hint when the
// server runs without --expert-distribution-recorder-mode. On a multi-node server they act on every
// node, and the dump (written by node 0) holds every node's counts.
void register_expert_record_routes(http::Server& server, std::shared_ptr<ExpertBalancing> experts,
                                   const std::string& api_key, OtherNodesRecorder others = {});

// A node other than 0 answering node 0: {"action": "start"|"stop"|"dump"} -> {"success": true}
// (plus "dump": the recorder's dump object), or {"success": false, "message": ...}.
nlohmann::json expert_record_node_command(ExpertBalancing* experts, const nlohmann::json& args);

// Adds `other`'s counts (another node's dump) into `into`: logical_count summed pass by pass,
// aligned on the latest pass; per-pass records appended. kCorrupt when the shapes differ.
Status merge_expert_dumps(nlohmann::json& into, const nlohmann::json& other);

}  // namespace pdserve::server
