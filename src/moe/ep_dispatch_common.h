// Checks shared by the normal and low-latency exchanges (internal to moe/). A bad argument on one
// rank must not leave its peers waiting in the next collective until the timeout: it aborts the EP
// group, so every rank gets the message at once.
#pragma once

#include "base/status.h"
#include "moe/ep_dispatch.h"
#include "parallel/communicator.h"
#include "tensor/tensor.h"

namespace pdserve::moe::detail {

// topk_ids: [T, K] i32 contiguous on the host, every id in [-1, num_experts).
Status check_topk_ids(const Tensor& topk_ids, int64_t num_experts);
// x [T, H] f32, topk_ids (as above), topk_weights [T, K] f32 (when given); geometry matches `ep`.
Status check_inputs(const parallel::Communicator& ep, const EpGeometry& geo, const Tensor& x, const Tensor& topk_ids,
                    const Tensor* topk_weights);

// Passes `r` through; when it is an error, aborts `ep` with its message first.
template <class R>
R abort_on_error(parallel::Communicator& ep, R r) {
  if (!r.has_value()) ep.abort(r.error().message());
  return r;
}

}  // namespace pdserve::moe::detail
