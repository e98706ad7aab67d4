// CUDA versions of ops/moe_dispatch.h (same contracts, device tensors; checked by the entry points).
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

void moe_count(const Tensor& topk_ids, Tensor& counts);
void moe_drop_padding_rows(const Tensor& seq_lens, Tensor& topk_ids);
void moe_map_expert_ids(const Tensor& ids, const Tensor& table, Tensor& out);
void moe_pick_expert_replicas(const Tensor& ids, const Tensor& replicas, const Tensor& copies, uint64_t seed,
                              Tensor& draw, Tensor& out);
void moe_scatter(const Tensor& x, const Tensor& topk_ids, const Tensor& row_base, Tensor& x_out, Tensor& slots,
                 Tensor& counts);
void moe_combine(const Tensor& y, const Tensor& slots, const Tensor& weights, Tensor& out);

}  // namespace pdserve::ops::cuda
