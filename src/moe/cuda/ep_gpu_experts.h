// The routed experts of every MoE layer of DeepSeek-V3 under expert parallelism on GPU ranks: the
// GPU model (model/deepseek_v3_gpu.h) runs attention, the gate and the shared expert on this
// rank's own tokens and hands the bf16 rows and the gate's choice to this object, which sends them
// to the experts' ranks with the low-latency dispatch (LowLatencyGpuRank), runs this rank's slice
// of the experts on what arrives (masked grouped GEMMs over [local_experts][R * max][hidden]) and
// combines the weighted results back into the residual of the token's own rank.
//
// Passes larger than the low-latency buffers (SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK
// tokens per rank; prefill chunks) run as several dispatch/combine rounds of at most that many
// tokens each: every rank runs the same number, ceil(group max tokens / buffer), known from
// begin_step, ranks with fewer tokens sending empty rounds. Decode passes (no rank extends) run
// the experts as GEMVs over the received rows only; prefill passes as tensor-core grouped GEMMs.
// Decode passes may also replay a CUDA graph of the GPU model (graph_safe_pass).
//
// Physical expert e lives on rank e / local_experts (no redundant experts, no EPLB: the server
// refuses those with GPU EP). Calls come from the rank's thread, on the model's current stream.
#pragma once

#if defined(PDSERVE_HAVE_CUDA)

#include <cstdint>
#include <map>
#include <memory>

#include "model/deepseek_v3.h"
#include "model/gpu_weights.h"
#include "moe/cuda/ep_low_latency_gpu.h"

namespace pdserve::moe::gpu {

class GpuEpExperts final : public model::RoutedExperts {
 public:
  // Uploads this rank's slice of every MoE layer's routed experts to the rank's device and sizes
  // the expert buffers. `rank` (and its group) must outlive the object.
  static Result<std::unique_ptr<GpuEpExperts>> create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                      LowLatencyGpuRank& rank, int ranks);

  void begin_step(int64_t group_max_tokens, bool group_extends) override;
  // Decode passes of one round: a graph captured with this hook replays one dispatch and one
  // combine per MoE layer, as the eager pass makes (the peers need only the same number of calls,
  // not the same token counts). While capturing, forward skips the last layer's synchronize, and
  // the first-call meeting waits for before_replay.
  bool graph_safe_pass() const override { return decode_ && rounds_ == 1; }
  Status before_replay() override;
  Status after_replay() override;
  // x bf16 [T, hidden], topk_ids i32 / topk_weights f32 [T, top_k], out f32 [T, hidden] (the
  // residual the routed sum is added to), all on the rank's device; T may be 0.
  Status forward(int64_t layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                 Tensor& out) override;

 private:
  GpuEpExperts() = default;
  Status run_experts(const model::GpuExperts& e, bool decode);

  LowLatencyGpuRank* rank_ = nullptr;
  int64_t ranks_ = 1, local_ = 0, max_tokens_ = 0, hidden_ = 0, inter_ = 0, last_moe_layer_ = -1;
  std::map<int64_t, model::GpuExperts> layers_;  // MoE layer -> this rank's experts
  Tensor gate_, up_, y_;  // bf16 [local, R * max, inter | inter | hidden]
  Tensor combined_;       // f32 [max, hidden]: one round's routed sums before they join the residual
  int64_t rounds_ = 1;
  bool decode_ = true;
};

}  // namespace pdserve::moe::gpu

#endif  // PDSERVE_HAVE_CUDA
