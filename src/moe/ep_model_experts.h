// The routed experts of every MoE layer of DeepSeek-V3 under expert parallelism on CPU ranks: the
// model (model/deepseek_v3.h) runs attention, the gate and the shared expert on this rank's own
// tokens and hands the rest to this object, which exchanges tokens with the EP group through one
// EpMoe per MoE layer holding this rank's slice of the experts.
//
// The mode of each pass comes from facts gathered over the group before it (begin_step), so every
// rank runs the same exchange: --deepep-mode auto gives normal for passes in which any rank
// extends (prefill) and low-latency otherwise; a pass with more tokens on some rank than the
// low-latency buffers hold (SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK) runs in normal mode
// instead of failing, since both modes compute the same result.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>

#include "model/deepseek_v3.h"
#include "moe/ep_moe.h"
#include "moe/ep_placement.h"
#include "moe/eplb_manager.h"
#include "moe/expert_location_dispatch.h"
#include "moe/reusable_buffer.h"
#include "parallel/communicator.h"
#include "parallel/rank_layout.h"

namespace pdserve::moe {

class EpModelExperts final : public model::RoutedExperts {
 public:
  // `ep`: this rank's communicator of its EP group (size = EP size, this rank's index = its EP
  // rank); it must outlive the object. The model's weights are shared (views), not copied: a
  // redundant copy of an expert is one more view of the same weights.
  static Result<std::unique_ptr<EpModelExperts>> create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                        parallel::Communicator& ep, parallel::DeepEpMode mode,
                                                        EpMoeOptions opts, EpPlacement placement = {});

  void begin_step(int64_t group_max_tokens, bool group_extends) override;
  Status forward(int64_t layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                 Tensor& out) override;

  // The mode the current pass runs in (after begin_step).
  parallel::DeepEpMode step_mode() const { return step_mode_; }
  const EpGeometry& geometry() const { return geo_; }

 private:
  EpModelExperts() = default;

  std::shared_ptr<const model::DeepseekV3Model> model_;  // keeps the expert weights alive
  parallel::Communicator* ep_ = nullptr;
  parallel::DeepEpMode configured_ = parallel::DeepEpMode::kAuto;
  parallel::DeepEpMode step_mode_ = parallel::DeepEpMode::kNormal;
  EpGeometry geo_;
  EpMoeOptions opts_;
  // The local slots' experts under `loc` for MoE layer l (views of the model's weights).
  std::vector<model::MlpWeights> slot_experts(const ExpertLocation& loc, size_t l) const;
  // Online rebalancing: the rebalancer's placement for the group step now starting, applied to the
  // layers whose local slots changed and to the dispatcher.
  Status follow_rebalancer();

  std::map<int64_t, EpMoe> layers_;  // MoE layer index -> its exchange and local experts
  std::optional<ExpertDispatcher> dispatcher_;  // logical -> physical ids, with a placement
  std::optional<LockstepExpertLocation> lockstep_;  // --enable-eplb
  std::optional<Status> rebalance_error_;  // a placement that could not be applied fails every pass
  ReusableBuffer mapped_ids_;                   // the physical ids of the current layer
  bool warned_overflow_ = false;
};

}  // namespace pdserve::moe
