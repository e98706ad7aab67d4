// The routed-expert half of a DeepSeek-V3 MoE layer under expert parallelism, on CPU ranks: this
// rank holds experts [ep_rank * E_local, (ep_rank + 1) * E_local), tokens travel to their experts
// and back through the EP group (normal or low-latency exchange), and the result equals the
// single-rank MoE (model/deepseek_v3.cpp) up to f32 summation order (tests/moe/ep_moe_test.cpp
// states the bound).
//
// Division of labour, as in SGLang's DeepEP path: the caller runs the gate (ops::moe_gate) on its
// own tokens and the shared expert; forward() adds the routed sum into `out`, so passing the shared
// expert's output as `out` gives the layer's output.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "base/status.h"
#include "model/weights.h"
#include "moe/ep_dispatch.h"
#include "moe/ep_dispatch_low_latency.h"
#include "parallel/communicator.h"
#include "parallel/rank_layout.h"

namespace pdserve::moe {

struct EpMoeOptions {
  // Low-latency buffers: most tokens one rank may dispatch per step (every rank the same value).
  int64_t max_dispatch_tokens_per_rank = kDefaultMaxDispatchTokensPerRank;
  // Normal mode: each expert's segment of the contiguous layout is padded to this many rows.
  int64_t expert_alignment = 1;
};

// This rank's slice of a layer's routed experts (views sharing the weights' storage). Errors when
// the experts do not split evenly.
Result<std::vector<model::MlpWeights>> local_experts(const std::vector<model::MlpWeights>& all, const EpGeometry& geo);

class EpMoe {
 public:
  // `experts`: the E_local experts of this rank (see local_experts), all of one shape.
  static Result<EpMoe> create(const EpGeometry& geo, std::vector<model::MlpWeights> experts, EpMoeOptions opts = {});

  // Collective over `ep` (all ranks, the same `mode`; T = 0 on idle ranks). x [T, H] f32 and the
  // gate's topk_ids [T, K] i32 / topk_weights [T, K] f32 (physical expert ids). Adds the routed
  // experts' weighted sum into out [T, H] f32. mode must be kNormal or kLowLatency (resolve kAuto
  // with parallel::resolve_deepep_mode first).
  Status forward(parallel::Communicator& ep, parallel::DeepEpMode mode, const Tensor& x, const Tensor& topk_ids,
                 const Tensor& topk_weights, Tensor& out);

  // Replaces the local experts (online rebalancing, between passes): the same count and shapes as
  // at create; kInvalidArgument otherwise, and the experts stay as they were.
  Status set_experts(std::vector<model::MlpWeights> experts);

  const EpGeometry& geometry() const { return geo_; }

 private:
  EpMoe() = default;
  Status forward_normal(parallel::Communicator& ep, const Tensor& x, const Tensor& ids, const Tensor& w, Tensor& out);
  Status prepare_low_latency();  // allocates the fixed buffers on first use
  Status forward_low_latency(parallel::Communicator& ep, const Tensor& x, const Tensor& ids, const Tensor& w,
                             Tensor& out);

  EpGeometry geo_;
  EpMoeOptions opts_;
  int64_t hidden_ = 0, inter_ = 0;
  std::vector<Weight> gate_, up_, down_;  // per local expert
  std::optional<NormalDispatcher> normal_;
  std::optional<LowLatencyDispatcher> ll_;
  // Normal-mode scratch (contiguous tokens, slots, expert activations, partial sums), reused.
  ReusableBuffer scratch_x_, scratch_slots_, scratch_gate_, scratch_up_, scratch_y_, scratch_partial_;
  // Low-latency scratch, fixed shapes [E_local, ranks * max_tokens, *], allocated on first use.
  Tensor ll_gate_, ll_up_, ll_out_;
};

}  // namespace pdserve::moe
