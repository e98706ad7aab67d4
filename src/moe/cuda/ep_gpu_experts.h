// The routed experts of every MoE layer of DeepSeek-V3 under expert parallelism on GPU ranks: the
// GPU model (model/deepseek_v3_gpu.h) runs attention, the gate and the shared expert on this
// rank's own tokens and hands the bf16 rows and the gate's choice to this object, which sends them
// to the experts' ranks, runs this rank's slice of the experts on what arrives and combines the
// weighted results back into the residual of the token's own rank.
//
// Two exchanges, chosen per pass from facts the whole group shares (begin_step), as on CPU ranks
// (moe/ep_model_experts.h): --deepep-mode auto sends prefill passes (some rank extends) through the
// normal mode and decode passes through the low-latency mode; normal / low_latency force one.
//  * Low-latency (LowLatencyGpuRank): fixed slabs [local_experts][R * max][hidden], masked
//    products, no host synchronisation. Decode passes run the experts as GEMVs over the received
//    rows and may replay a CUDA graph of the GPU model (graph_safe_pass). Passes larger than the
//    buffers (SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK tokens per rank) run in normal mode
//    when the group has one, else as ceil(group max / buffer) rounds on every rank.
//  * Normal (NormalGpuRank): each token goes once to each rank owning one of its experts; the
//    received rows are laid out per local expert on the host's counts (a synchronisation, as in
//    DeepEP) and run through contiguous grouped GEMMs; the per-row weighted sums go back in bf16.
//    The contiguous buffers hold `contiguous_rows` rows (default R x the normal buffer's tokens per
//    rank, the balanced load at R >= top-k); a pass routing more rows to this rank runs its
//    experts over several windows of that many rows.
//
// Physical expert e lives on rank e / local_experts. With a placement (moe/ep_placement.h:
// redundant experts, EPLB at start-up) local slot i of rank r holds logical expert
// location->logical_of(layer, r * local + i), and the gate's logical ids are mapped on the device
// to physical copies before each exchange call (one small kernel, graph safe): the rank's static
// dispatch map, or with `dynamic` a copy drawn per entry (ops::moe_pick_expert_replicas, whose
// draw counter lives on the device). Calls come from the rank's thread, on the model's current
// stream.
#pragma once

#if defined(PDSERVE_HAVE_CUDA)

#include <cstdint>
#include <map>
#include <memory>
#include <optional>

#include "model/deepseek_v3.h"
#include "model/gpu_weights.h"
#include "moe/ep_placement.h"
#include "moe/eplb_manager.h"
#include "moe/cuda/ep_low_latency_gpu.h"
#include "moe/cuda/ep_normal_gpu.h"
#include "parallel/rank_layout.h"

namespace pdserve::moe::gpu {

struct GpuEpExpertsOptions {
  NormalGpuRank* normal = nullptr;  // this rank of the group's normal-mode exchange; none: low-latency only
  parallel::DeepEpMode mode = parallel::DeepEpMode::kAuto;
  int64_t contiguous_rows = 0;      // normal mode's expert buffers (0: R x its tokens per rank)
  // Where the experts live and how copies are chosen (static or dynamic; no rebalancer); the
  // exchange groups must be sized for its physical experts.
  EpPlacement placement;
};

class GpuEpExperts final : public model::RoutedExperts {
 public:
  // Uploads this rank's slice of every MoE layer's routed experts to the rank's device and sizes
  // the expert buffers. `rank` and `opts.normal` (and their groups) must outlive the object.
  static Result<std::unique_ptr<GpuEpExperts>> create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                      LowLatencyGpuRank& rank, int ranks, GpuEpExpertsOptions opts = {});

  // With a rebalancer (--enable-eplb), first follows its placement in lockstep, as the CPU ranks do
  // (moe/ep_model_experts.h): at the step a new placement takes effect, the local slots whose
  // logical expert changed are loaded from the host's weights into their own buffers, and the
  // dispatch tables are rewritten in place, so captured graphs stay valid.
  void begin_step(int64_t group_max_tokens, bool group_extends) override;
  void begin_capture(int64_t tokens) override;
  // x bf16 [T, hidden], topk_ids i32 / topk_weights f32 [T, top_k], out f32 [T, hidden] (the
  // residual the routed sum is added to), all on the rank's device; T may be 0.
  Status forward(int64_t layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                 Tensor& out) override;
  // Low-latency decode passes of one round: a graph captured with this hook replays one dispatch
  // and one combine per MoE layer, as the eager pass makes (the peers need only the same number of
  // calls, not the same token counts). While capturing, forward skips the last layer's
  // synchronize, and the first-call meeting waits for before_replay.
  bool graph_safe_pass() const override { return !normal_pass_ && decode_ && rounds_ == 1; }
  Status before_replay() override;
  Status after_replay() override;
  // Whether the pass begun last runs the normal-mode exchange (tests).
  bool normal_pass() const { return normal_pass_; }

 private:
  GpuEpExperts() = default;
  void set_pass_mode(int64_t group_max_tokens, bool group_extends);  // begin_step's choice of exchange
  // Logical expert `logical` of MoE layer `layer` on the host: the model's, or made (dummy weights).
  Result<model::MlpWeights> host_expert(int64_t layer, int64_t logical) const;
  Status follow_rebalancer();
  Status run_experts(const model::GpuExperts& e, bool decode);
  // One expert GEMM per row bucket of the normal path at creation: a kernel's first launch waits
  // for every kernel on the GPU, the peers' spinning exchange included.
  void warm_normal_gemms(const model::GpuExperts& e);
  // A MoE layer's experts on this rank and, with a placement, how its logical ids become physical
  // ones: static dispatch, the rank's map (i32 [logical] on the device); dynamic, every copy of each
  // logical expert (replicas i32 [logical, most copies], copies i32 [logical]), one drawn per entry.
  struct Layer {
    model::GpuExperts experts;
    Tensor id_map;
    Tensor replicas, copies;
  };
  // The ids one exchange call sends by (at most one round's or one normal pass's tokens): topk_ids
  // itself, or its physical copies (with a placement).
  Tensor physical_ids(const Layer& layer, const Tensor& topk_ids);
  Status forward_low_latency(const Layer& layer, const Tensor& x, const Tensor& ids, const Tensor& w, Tensor& out,
                             cudaStream_t stream);
  Status forward_normal(const Layer& layer, const Tensor& x, const Tensor& ids, const Tensor& w, Tensor& out,
                        cudaStream_t stream);
  void abort(const std::string& why);
  // `st`, after logging the low-latency exchange's state when it is an error.
  Status with_exchange_state(Status st) const;

  LowLatencyGpuRank* rank_ = nullptr;
  NormalGpuRank* normal_ = nullptr;
  parallel::DeepEpMode mode_ = parallel::DeepEpMode::kAuto;
  int64_t ranks_ = 1, local_ = 0, max_tokens_ = 0, hidden_ = 0, inter_ = 0, last_moe_layer_ = -1;
  std::map<int64_t, Layer> layers_;  // MoE layer -> this rank's experts
  // Low-latency mode.
  Tensor gate_up_, act_, y_;  // bf16 [local, R * max, 2 * inter | inter | hidden]: gate|up, their SiLU product, out
  Tensor combined_;       // f32 [max, hidden]: one round's routed sums before they join the residual
  // Normal mode (when a normal rank is given).
  int64_t normal_tokens_ = 0, contiguous_rows_ = 0;
  Tensor xc_, guc_, hc_, yc_;             // bf16 [contiguous_rows, hidden | 2 * inter | inter | hidden]
  Tensor slots_;                          // i32 [R * normal_tokens, top_k]
  Tensor partial_;                        // f32 [R * normal_tokens, hidden]
  Tensor partial_bf16_;                   // bf16, the same; only when xc_ is smaller (else xc_ holds them)
  Tensor row_base_, counts_;              // i32 [local]
  Tensor normal_out_;                     // f32 [normal_tokens, hidden]
  Tensor mapped_ids_;  // with a placement: i32 [max(low-latency, normal tokens per rank), top_k]
  // Dynamic dispatch: the draw counter (i64 [1] on the device, so graph replays draw afresh) and
  // this rank's seed (the CPU ranks' ExpertDispatcher seeds 42 + rank the same way).
  static constexpr uint64_t kDispatchSeed = 42;
  Tensor draw_;
  uint64_t dispatch_seed_ = kDispatchSeed;
  // Online rebalancing (--enable-eplb).
  std::shared_ptr<const model::DeepseekV3Model> model_;  // the host weights slots are loaded from
  std::optional<LockstepExpertLocation> lockstep_;  // what the slots and tables hold, and the step
  bool dynamic_ = false;
  int64_t replica_columns_ = 0;  // dynamic with a rebalancer: fixed, max_replica_columns
  std::optional<Status> rebalance_error_;  // a placement that could not be applied fails every pass
  int64_t rounds_ = 1;
  bool decode_ = true, normal_pass_ = false;
};

}  // namespace pdserve::moe::gpu

#endif  // PDSERVE_HAVE_CUDA
