// Multi-head latent attention (MLA) and the paged latent KV cache it reads.
//
// The cache holds, per token per layer, the normalized latent c (kv_lora_rank values) followed by
// the rotated k_pe (qk_rope_head_dim values): latent_dim = kv_lora_rank + qk_rope_head_dim (576 for
// DeepSeek-V3). A layer's pool is [num_pages, page_size, latent_dim] f32; a sequence's page table
// lists its pages in order, token t lives at page_table[t / page_size], slot t % page_size.
//
// The vector-page-table ops below take f32 tensors on the CPU; given device tensors they run on the
// GPU through the paged forms further down (uploading the tables, so not for CUDA graphs).
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

// ---- Paged forms with tensor page tables ---------------------------------------------------------
//
// These run where their tensors live (CPU or CUDA) with the same meaning, so GPU code passes device
// page tables and a CUDA graph can capture the calls. Shared conventions:
// - pool: [num_pages, page_size, latent_dim], f32 or bf16, contiguous. bf16 is the GPU default
//   (1152 B per token per layer for V3) and runs the tensor-core kernels; an f32 pool runs exact
//   f32 kernels on the GPU (reference accuracy, slow).
// - page_table: i32 [B, max_pages] (unit stride in the last dim; the row stride may be larger); row b
//   lists sequence b's pages in order. The CPU checks every entry it uses and throws
//   std::out_of_range; the GPU trusts them (decode reads only pages below seq_lens[b]; writes with an
//   out-of-range page are dropped, gathers of one read zeros).
// - Activations (q, latent rows, out) may be f32 or bf16.

// Writes latent row i ([n, latent_dim], converted to the pool's dtype) to sequence batch_ids[i] at
// position positions[i] (batch_ids, positions: i32 [n]). Decode passes arange(B) and seq_lens - 1.
void kv_write_paged(Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                    const Tensor& latent);
// out[i] = the cached row of (batch_ids[i], positions[i]); out [n, latent_dim] f32 or bf16.
void kv_gather_paged(const Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                     Tensor& out);

// mla_decode over a paged pool with tensor page tables. q: [B, H, qk_head_dim] (unit stride in the
// last dim), seq_lens: i32 [B] (>= 1, tokens in the cache including the new one), w_uk / w_uv as for
// mla_decode but f32 or bf16 and only unit-stride in the last dim (so a bf16 kv_b viewed as
// [H, nope + v, r] and sliced in dim 1 serves directly), out: [B, H, v_head_dim] contiguous.
// On the GPU the KV is split so that small batches still fill the SMs; max_seq_len (a bound on
// seq_lens, <= 0: page capacity) only steers that choice. workspace: a contiguous device tensor of
// at least mla_decode_workspace_bytes (undefined: allocated per call, which a CUDA graph cannot
// capture); ignored on the CPU. On the GPU a seq_lens entry of 0 (a padded slot of a captured
// batch) yields zeros; the CPU rejects it.
void mla_decode_paged(const Tensor& q, const Tensor& pool, const Tensor& page_table, const Tensor& seq_lens,
                      const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d, float scale, Tensor& out,
                      int64_t max_seq_len = 0, const Tensor& workspace = Tensor());
// Device scratch mla_decode_paged needs on the current GPU (0 in a build without CUDA).
int64_t mla_decode_workspace_bytes(int64_t batch, const MlaDims& d, int64_t max_seq_len, DType pool_dtype);

// mla_prefill for several sequences packed back to back. Sequence i owns q rows [cu_q_lens[i],
// cu_q_lens[i+1]) and latent rows [cu_kv_lens[i], cu_kv_lens[i+1]); its q rows are its last q_len
// tokens, so prefix_len = kv_len - q_len (cu_*: i32 [n + 1], starting at 0, on the tensors' device).
// q: [S_total, H, qk_head_dim], latent: [T_total, latent_dim] (f32 or bf16; bf16 selects the
// tensor-core path on the GPU), out: [S_total, H, v_head_dim] contiguous. max_q_len bounds every
// q_len (it sizes the GPU grid). workspace as for decode (mla_prefill_workspace_bytes).
void mla_prefill_varlen(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d,
                        const Tensor& cu_q_lens, const Tensor& cu_kv_lens, int64_t max_q_len, float scale, Tensor& out,
                        const Tensor& workspace = Tensor());
int64_t mla_prefill_workspace_bytes(int64_t total_q, int64_t total_kv, const MlaDims& d, DType latent_dtype,
                                    DType q_dtype);

// Splits kv_b [H * (nope + v), kv_lora_rank] (any Weight dtype, fp8 dequantized with its block
// scales) into the per-head absorption matrices mla_decode takes: w_uk [H, nope, kv_lora_rank] and
// w_uv [H, v, kv_lora_rank], both f32 contiguous and preallocated by the caller.
void split_kv_b(const Weight& kv_b, const MlaDims& d, Tensor& w_uk, Tensor& w_uv);

}  // namespace pdserve::ops
