// CUDA versions of the MLA ops (same contracts as ops/attention.h, device tensors). Arguments are
// validated by the public entry points in ops/attention.cpp before these are called.
#pragma once

#include <cstdint>

#include "ops/attention.h"
#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

void kv_write_paged(Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                    const Tensor& latent);
void kv_gather_paged(const Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                     Tensor& out);

void mla_decode_paged(const Tensor& q, const Tensor& pool, const Tensor& page_table, const Tensor& seq_lens,
                      const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d, float scale, Tensor& out,
                      int64_t max_seq_len, const Tensor& workspace);
int64_t mla_decode_workspace_bytes(int64_t batch, const MlaDims& d, int64_t max_seq_len, DType pool_dtype);
// KV splits per sequence that mla_decode_paged uses (for the benchmark's report).
int mla_decode_num_splits(int64_t batch, const MlaDims& d, int64_t max_seq_len, DType pool_dtype);

void mla_prefill_varlen(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d,
                        const Tensor& cu_q_lens, const Tensor& cu_kv_lens, int64_t max_q_len, float scale, Tensor& out,
                        const Tensor& workspace);
int64_t mla_prefill_workspace_bytes(int64_t total_q, int64_t total_kv, const MlaDims& d, DType latent_dtype,
                                    DType q_dtype);

}  // namespace pdserve::ops::cuda
