// Expert-parallel token exchange, normal (high-throughput) mode: DeepEP's `Buffer.dispatch` /
// `combine` semantics (model-spec §6.1) on a parallel::Communicator, for prefill batches.
//
//   dispatch: each token goes once to every EP rank that owns one of its top-k experts (not once per
//             expert); the receiver gets it with its top-k ids rewritten to local expert ids (-1 for
//             experts elsewhere, weight 0 there), ordered by source rank then source token order.
//   experts:  to_contiguous() lays the received tokens out per local expert (DeepGEMM's contiguous
//             layout, segments padded to an alignment) for ops::grouped_linear_contiguous;
//             weighted_sum() applies the routing weights and sums each received token over this
//             rank's experts (DeepEP's normal combine applies no weights: it gets these sums).
//   combine:  the per-token partial sums go back to their source ranks, which add them up.
//
// Counts are variable and exchanged first (a host-visible step, as in DeepEP normal mode, which is
// why it is not CUDA-graph captured). Expert ids are physical ids: expert e lives on EP rank
// e / (num_experts / ep_size). Activations are f32 rows on CPU ranks (no FP8 cast here).
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "moe/reusable_buffer.h"
#include "parallel/communicator.h"
#include "tensor/tensor.h"

namespace pdserve::moe {

// Which rank holds which experts: contiguous blocks of num_experts / ep_size.
struct EpGeometry {
  int64_t num_experts = 0;
  int ep_size = 1;
  int ep_rank = 0;

  int64_t local_experts() const { return num_experts / ep_size; }
  int owner(int64_t expert) const { return static_cast<int>(expert / local_experts()); }
  int64_t first_local_expert() const { return ep_rank * local_experts(); }
  // num_experts divisible by ep_size, rank in range.
  Status validate() const;
};

// DeepEP's get_dispatch_layout: what a batch sends where. topk_ids [T, K] i32 (-1 = no expert).
struct DispatchLayout {
  std::vector<int64_t> tokens_per_rank;    // [R]: tokens with at least one expert on rank r
  std::vector<int64_t> tokens_per_expert;  // [E]
  std::vector<uint8_t> token_in_rank;      // [T * R]
};
// Errors (kInvalidArgument) for ids outside [-1, num_experts) or a bad shape.
Result<DispatchLayout> get_dispatch_layout(const Tensor& topk_ids, const EpGeometry& geo);

// What combine needs to route results back (DeepEP's handle).
struct NormalHandle {
  int64_t num_tokens = 0;               // T on this rank
  std::vector<int64_t> send_rows;       // [R] tokens this rank sent to each rank
  std::vector<int64_t> recv_rows;       // [R] tokens each rank sent here
  std::vector<int32_t> send_token;      // per sent row (grouped by destination): the source token
};

struct NormalDispatchResult {
  Tensor recv_x;                     // [N_recv, H] f32
  Tensor recv_topk_idx;              // [N_recv, K] i32: local expert ids, -1 where not local
  Tensor recv_topk_weights;          // [N_recv, K] f32: 0 where the id is -1
  std::vector<int64_t> recv_tokens_per_expert;  // [E_local] (unpadded)
  NormalHandle handle;
};

// The normal-mode exchange of one EP rank. It owns its send and receive buffers and reuses them
// from step to step (they grow to the largest batch seen): a result's tensors are views of them,
// valid until this dispatcher's next dispatch().
class NormalDispatcher {
 public:
  explicit NormalDispatcher(const EpGeometry& geo) : geo_(geo) {}

  // Collective over `ep` (every rank calls it, with T = 0 on idle ranks). x [T, H] f32, topk_ids
  // [T, K] i32, topk_weights [T, K] f32.
  Result<NormalDispatchResult> dispatch(parallel::Communicator& ep, const Tensor& x, const Tensor& topk_ids,
                                        const Tensor& topk_weights);

  // Collective over `ep`: sends partial [N_recv, H] back and adds, per source token, the partial
  // sums from every rank (in rank order) into out [T, H] f32.
  Status combine(parallel::Communicator& ep, const NormalHandle& h, const Tensor& partial, Tensor& out);

  const EpGeometry& geometry() const { return geo_; }

 private:
  EpGeometry geo_;
  ReusableBuffer send_x_, send_meta_, recv_x_, recv_meta_, recv_idx_, recv_w_, back_;
};

// DeepGEMM's contiguous layout of the received tokens: rows of local expert g are
// [offsets[g], offsets[g+1]), each segment padded to a multiple of `alignment` rows.
struct ContiguousLayout {
  std::vector<int64_t> offsets;  // [E_local + 1]
  int64_t rows() const { return offsets.back(); }
};
ContiguousLayout contiguous_layout(const std::vector<int64_t>& tokens_per_expert, int64_t alignment = 1);

// Fills x_out [layout.rows(), H] f32 (padding rows become 0) and slots [N_recv, K] i32: the row
// of (token, k) in x_out, -1 where the expert is not local.
void to_contiguous(const NormalDispatchResult& d, const ContiguousLayout& layout, Tensor& x_out, Tensor& slots);

// Overwrites partial [N_recv, H] f32 with, per received token, the sum over its local experts of
// weight * y[slot]; y is the experts' output in the contiguous layout.
void weighted_sum(const Tensor& y, const Tensor& slots, const NormalDispatchResult& d, Tensor& partial);

}  // namespace pdserve::moe
