// Expert-parallel token exchange, low-latency mode: DeepEP's `low_latency_dispatch` /
// `low_latency_combine` semantics (model-spec §6.2) on a parallel::Communicator, for decode.
//
// Shapes are fixed at creation by max_dispatch_tokens_per_rank (SGLANG_DEEPEP_NUM_MAX_DISPATCH_
// TOKENS_PER_RANK): the receive buffer is [local_experts][ranks * max_tokens][hidden] and
// recv_count[local_experts] says how many leading rows of each expert's slab are valid (a token
// reaches an expert at most once, so ranks * max_tokens rows always suffice). That is what the
// masked grouped GEMM (ops::grouped_linear_masked) consumes, and what lets a GPU version be
// captured in a CUDA graph: no shape depends on the batch. Inside a slab, rows are packed by source
// rank, then by source token order.
//
// Combine takes the experts' outputs unweighted, in the same [local_experts][ranks*max][hidden]
// layout, sends every row back to its token's rank, and there applies the top-k weights (unlike
// normal mode, where the expert side sums). The buffers are reused step after step; one dispatch
// must be combined before the next dispatch (DeepEP allows two in flight; one is enough here).
//
// On CPU ranks the rows travel as f32 and only valid rows are copied (the fixed buffers are the
// receive side's layout, not the bytes moved); FP8 casting during dispatch is for the GPU version.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "moe/ep_dispatch.h"
#include "moe/reusable_buffer.h"
#include "parallel/communicator.h"
#include "tensor/tensor.h"

namespace pdserve::moe {

inline constexpr int64_t kDefaultMaxDispatchTokensPerRank = 128;  // SGLang's default
inline constexpr int64_t kMaxDispatchTokensPerRankLimit = 1024;   // SGLang asserts <= 1024

// Reads SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK (or the PDSERVE_ spelling; the SGLANG_ one
// wins when both are set). Unset: 128. Not an integer in [1, 1024]: an error naming the variable.
Result<int64_t> max_dispatch_tokens_per_rank_from_env();
// The same rule for a given value (nullopt = unset), for tests and callers with their own env.
Result<int64_t> parse_max_dispatch_tokens_per_rank(const std::optional<std::string>& value, const char* name);

class LowLatencyDispatcher {
 public:
  // Allocates the fixed buffers. Every EP rank must use the same max_tokens and hidden.
  static Result<LowLatencyDispatcher> create(const EpGeometry& geo, int64_t hidden, int64_t max_tokens_per_rank);

  // Collective over `ep`. x [T, H] f32 with T <= max_tokens_per_rank (T = 0 on idle ranks),
  // topk_ids [T, K] i32 (-1 = none). Fills recv_x() and recv_count().
  Status dispatch(parallel::Communicator& ep, const Tensor& x, const Tensor& topk_ids);

  // [local_experts, ranks * max_tokens, H] f32; rows past recv_count are stale, never cleared.
  const Tensor& recv_x() const { return recv_x_; }
  const Tensor& recv_count() const { return recv_count_; }  // [local_experts] i32

  // Collective over `ep`. expert_out: [local_experts, ranks * max_tokens, H] f32, unweighted
  // outputs for the rows dispatch() delivered. Adds, for every token of the last dispatch,
  // sum_j topk_weights[t, j] * (expert topk_ids[t, j]'s output) into out [T, H] f32.
  Status combine(parallel::Communicator& ep, const Tensor& expert_out, const Tensor& topk_weights, Tensor& out);

  const EpGeometry& geometry() const { return geo_; }
  int64_t max_tokens_per_rank() const { return max_tokens_; }
  int64_t hidden() const { return hidden_; }

 private:
  LowLatencyDispatcher() = default;

  EpGeometry geo_;
  int64_t hidden_ = 0, max_tokens_ = 0;
  Tensor recv_x_, recv_count_;

  // The handle of the last dispatch.
  bool pending_ = false;
  int64_t num_tokens_ = 0, top_k_ = 0;
  std::vector<int64_t> send_rows_, recv_rows_;  // [R] rows to / from each rank
  std::vector<int64_t> recv_per_expert_;        // [R * E_local]: rows from rank s for local expert g
  Tensor send_slots_;                           // [T, K] i32: row of (t, j) in the send order, -1 = none
  // Exchange buffers, reused step to step (moe/reusable_buffer.h says why).
  ReusableBuffer send_x_, slots_, staging_, send_back_, recv_back_;
};

}  // namespace pdserve::moe
