// CPU reference for the paged latent cache and MLA prefill/decode.
#pragma once

#include "ops/attention.h"

namespace pdserve::ops::cpu {

void kv_write(Tensor& pool, const std::vector<int32_t>& page_table, int64_t start_pos, const Tensor& latent);
void kv_gather(const Tensor& pool, const std::vector<int32_t>& page_table, int64_t num_tokens, Tensor& out);
void mla_prefill(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d, int64_t prefix_len,
                 float scale, Tensor& out);
void mla_decode(const Tensor& q, const Tensor& pool, const std::vector<std::vector<int32_t>>& page_tables,
                const std::vector<int64_t>& seq_lens, const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d,
                float scale, Tensor& out);
void split_kv_b(const Weight& kv_b, const MlaDims& d, Tensor& w_uk, Tensor& w_uv);

}  // namespace pdserve::ops::cpu
