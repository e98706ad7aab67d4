// Multi-head latent attention (MLA) and the paged latent KV cache it reads.
//
// The cache holds, per token per layer, the normalized latent c (kv_lora_rank values) followed by
// the rotated k_pe (qk_rope_head_dim values): latent_dim = kv_lora_rank + qk_rope_head_dim (576 for
// DeepSeek-V3). A layer's pool is [num_pages, page_size, latent_dim] f32; a sequence's page table
// lists its pages in order, token t lives at page_table[t / page_size], slot t % page_size.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace pdserve::ops {

struct MlaDims {
  int64_t num_heads = 128;
  int64_t qk_nope_head_dim = 128;
  int64_t qk_rope_head_dim = 64;
  int64_t v_head_dim = 128;
  int64_t kv_lora_rank = 512;
  int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

// Writes latent rows [n, latent_dim] for positions start_pos .. start_pos+n-1 of one sequence.
void kv_write(Tensor& pool, const std::vector<int32_t>& page_table, int64_t start_pos, const Tensor& latent);
// Gathers positions [0, num_tokens) of one sequence into out [num_tokens, latent_dim].
void kv_gather(const Tensor& pool, const std::vector<int32_t>& page_table, int64_t num_tokens, Tensor& out);

// Prefill/extend in the expanded ("naive") form HF computes, for one sequence.
// q: [S, H, qk_head_dim] f32, rope already applied to q[..., nope:]. latent: [T, latent_dim] f32
// for all T = prefix_len + S tokens (k_pe rotated). kv_b: [H * (nope + v), kv_lora_rank]. Causal:
// new token i (absolute position prefix_len + i) sees tokens 0..prefix_len+i.
// out: [S, H, v_head_dim] f32. Scores use `scale`; softmax in f32.
void mla_prefill(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d,
                 int64_t prefix_len, float scale, Tensor& out);

// Decode in the absorbed form over the paged cache, for a batch of sequences each with one new
// token whose latent is already written. q: [B, H, qk_head_dim] f32 (rope applied).
// w_uk: [H, nope, kv_lora_rank] f32 and w_uv: [H, v, kv_lora_rank] f32 (split from kv_b).
// seq_lens[b] = tokens in the cache for sequence b, including the new one.
// out: [B, H, v_head_dim] f32.
void mla_decode(const Tensor& q, const Tensor& pool, const std::vector<std::vector<int32_t>>& page_tables,
                const std::vector<int64_t>& seq_lens, const Tensor& w_uk, const Tensor& w_uv,
                const MlaDims& d, float scale, Tensor& out);

// Splits kv_b [H * (nope + v), kv_lora_rank] (any Weight dtype, fp8 dequantized with its block
// scales) into the per-head absorption matrices mla_decode takes: w_uk [H, nope, kv_lora_rank] and
// w_uv [H, v, kv_lora_rank], both f32 contiguous and preallocated by the caller.
void split_kv_b(const Weight& kv_b, const MlaDims& d, Tensor& w_uk, Tensor& w_uv);

}  // namespace pdserve::ops
