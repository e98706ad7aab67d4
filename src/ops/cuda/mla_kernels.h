// Host-side launchers of the MLA kernels, shared between the .cu files of ops/cuda/ (attention.cu
// orchestrates, mla_gemm.cu / mla_decode.cu / mla_prefill.cu hold the kernels). Pointers are raw
// device pointers; element types are named by Elem. Every launcher checks its launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pdserve::ops::cuda::mla {

enum class Elem : uint8_t { kF32, kBF16, kFP8 };

inline int elem_size(Elem e) { return e == Elem::kF32 ? 4 : e == Elem::kBF16 ? 2 : 1; }

// One operand of a (batched) GEMM: element (g, row, col) lives at ptr + g*batch_stride + row*row_stride
// + col (strides in elements). fp8 operands carry DeepSeek's 128x128 block scales: the value of
// element (row, col) is fp8 * scale[(row / 128) * scale_row_stride + col / 128].
struct Operand {
  const void* ptr = nullptr;
  Elem type = Elem::kF32;
  int64_t batch_stride = 0;
  int64_t row_stride = 0;
  const float* scale = nullptr;
  int64_t scale_row_stride = 0;
};

struct Output {
  void* ptr = nullptr;
  Elem type = Elem::kF32;
  int64_t batch_stride = 0;
  int64_t row_stride = 0;
};

// C[g](m, n) = sum_k A[g](m, k) * B[g](k, n) for g < batch.
// A is addressed (m, k). B is addressed (n, k) ("NK", a Linear weight [out, in]) unless b_kn, then
// (k, n). gemm_bf16 rounds operands to bf16 and runs on tensor cores (needs k, n, strides multiples
// of 8, 16-byte aligned rows); gemm_f32 is exact f32 on CUDA cores (no layout constraints).
void gemm_bf16(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
               cudaStream_t stream);
void gemm_f32(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
              cudaStream_t stream);

// The decode absorptions (W_UK: [B, 128] x [128, 512], W_UV: [B, 512] x [512, 128]^T per head) on
// a kernel shaped for them: the same product as gemm_bf16 (bit-identical: same MMA, same k order),
// each CTA keeping its head's k x 128 weight slice in shared memory while it streams 64-row tiles
// of A, and writing C with 16-byte stores. copy_cols > 0 also sets C(m, n + j) = A(m, k + j) for
// j < copy_cols (decode: q_pe into q_abs[:, :, 512:] in the same launch). Applies where a, b and c
// are bf16, n is a multiple of 128, k a multiple of 128 up to 512, copy_cols a multiple of 8 (at
// most 64 per 128 output columns), every stride a multiple of 8 and every base 16-byte aligned;
// elsewhere it returns false and launches nothing (then use gemm_bf16).
bool absorb_bmm_bf16(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
                     int copy_cols, cudaStream_t stream);

// ---- decode ------------------------------------------------------------------------------------

// The tensor-core decode core for kv_lora_rank 512 + rope 64 (DeepSeek-V2/V3/R1 latent layout).
inline constexpr int kDecodeHeadsPerCta = 64;
inline constexpr int kDecodeTokensPerTile = 64;
inline constexpr int kDecodeLatent = 576;
inline constexpr int kDecodeValue = 512;

struct DecodeCoreArgs {
  const void* q_abs = nullptr;   // bf16 [B, H, 576]: [W_UK^T q_nope ; q_pe]
  const void* pool = nullptr;    // bf16 [pages, page_size, 576]
  int page_size = 0;
  const int32_t* page_table = nullptr;
  int64_t page_table_stride = 0;
  const int32_t* seq_lens = nullptr;
  int batch = 0, heads = 0, num_splits = 1;
  // Pages in the pool. Set (> 0) with page_size a multiple of 64, the wgmma core loads each
  // 64-token tile (one contiguous piece of a page) with TMA instead of per-thread copies.
  int64_t pool_pages = 0;
  float scale = 0.0f;
  // num_splits == 1: the normalized latent output, bf16 [B, H, 512].
  void* o_lat = nullptr;
  // num_splits > 1: per-split partials f32 [B, S, H, 512] and log2-sum-exp f32 [B, S, H].
  float* o_part = nullptr;
  float* lse_part = nullptr;
};
size_t decode_core_smem_bytes();
void decode_core(const DecodeCoreArgs& a, cudaStream_t stream);
// The same on Hopper wgmma (mla_decode_wgmma.cu): sm_90 only (decode_core_wgmma_supported()).
// v_desc_variant selects the shared-memory descriptor offsets of the V operand (0 = the layout
// documented there; 1 = leading/stride swapped, for the layout probe test only).
bool decode_core_wgmma_supported();
void decode_core_wgmma(const DecodeCoreArgs& a, cudaStream_t stream, int v_desc_variant = 0);
// The wgmma core's schedules: decode_core_wgmma runs the ping-pong of mla_decode_pingpong.cu when
// tiles load with TMA (pool_pages set, page_size a multiple of 64), else the one schedule of
// mla_decode_wgmma.cu (S, softmax, P V one after the other). decode_core_wgmma_one_schedule forces
// the latter (tests and benchmark compare the two); decode_core_pingpong returns false, launching
// nothing, where TMA tiles do not apply.
void decode_core_wgmma_one_schedule(const DecodeCoreArgs& a, cudaStream_t stream);
bool decode_core_pingpong(const DecodeCoreArgs& a, cudaStream_t stream, int v_lbo, int v_sbo, int phases);
// Benchmark only (wrong results): runs the wgmma core with some per-tile phases switched off
// (bit 1 KV tile loads, 2 Q K^T, 4 P V) to show where its time goes.
void decode_core_wgmma_phases(const DecodeCoreArgs& a, cudaStream_t stream, int phases);
// The same for the ping-pong schedule (TMA tiles needed; loads off reuses the first two tiles).
void decode_core_pingpong_phases(const DecodeCoreArgs& a, cudaStream_t stream, int phases);
// Merges the splits of decode_core into o_lat bf16 [B, H, 512].
void decode_combine(const float* o_part, const float* lse_part, void* o_lat, int batch, int heads, int num_splits,
                    cudaStream_t stream);

// The exact f32 decode (any dims): absorbed scores and P.C over the paged pool (f32 or bf16), one
// block per (sequence, head). q_abs f32 [B, H, latent]; o_lat f32 [B, H, kv_lora_rank].
struct DecodeGenericArgs {
  const float* q_abs = nullptr;
  const void* pool = nullptr;
  Elem pool_type = Elem::kF32;
  int page_size = 0;
  const int32_t* page_table = nullptr;
  int64_t page_table_stride = 0;
  const int32_t* seq_lens = nullptr;
  int batch = 0, heads = 0, latent = 0, rank = 0;
  float scale = 0.0f;
  float* o_lat = nullptr;
};
void decode_generic(const DecodeGenericArgs& a, cudaStream_t stream);

// ---- prefill -----------------------------------------------------------------------------------

// Per packed sequence i: q rows [cu_q[i], cu_q[i+1]), kv rows [cu_kv[i], cu_kv[i+1]); the q rows
// are the last q_len of the kv_len tokens (causal with a prefix of kv_len - q_len).
struct PrefillArgs {
  const int32_t* cu_q = nullptr;
  const int32_t* cu_kv = nullptr;
  int num_seqs = 0, max_q_len = 0, heads = 0;
  float scale = 0.0f;
  // q [S, H, qk]: element (s, h, j) at q + s*q_row + h*q_head + j.
  const void* q = nullptr;
  Elem q_type = Elem::kBF16;
  int64_t q_row = 0, q_head = 0;
  // kv [T, H * (nope + v)] (k_nope then v per head), contiguous.
  const void* kv = nullptr;
  // k_pe: element (t, j) at k_pe + t*k_pe_row + j.
  const void* k_pe = nullptr;
  Elem k_pe_type = Elem::kBF16;
  int64_t k_pe_row = 0;
  // out [S, H, v] contiguous.
  void* out = nullptr;
  Elem out_type = Elem::kF32;
  int nope = 0, rope = 0, v = 0;
};
// Tensor-core flash attention for nope 128 / rope 64 / v 128: q, kv, k_pe bf16 (k_pe_row multiple
// of 8), out f32 or bf16. Dispatches (prefill_kernel_choice(), read on every call) to
// prefill_flash_wgmma or prefill_flash2.
void prefill_flash(const PrefillArgs& a, cudaStream_t stream);
// The FlashAttention-2 kernel on mma.sync (mla_prefill.cu), any sm_80+ GPU.
void prefill_flash2(const PrefillArgs& a, cudaStream_t stream);
// The same contract on Hopper wgmma (mla_prefill_wgmma.cu, sm_90 only); falls back to
// prefill_flash2 where it does not apply (prefill_flash_wgmma_applies: dims, dtypes, 16-byte
// aligned q / kv / k_pe, an sm_90 device). prefill_flash_wgmma_launch launches it where it applies
// and returns false, launching nothing, elsewhere.
void prefill_flash_wgmma(const PrefillArgs& a, cudaStream_t stream);
bool prefill_flash_wgmma_applies(const PrefillArgs& a);
bool prefill_flash_wgmma_launch(const PrefillArgs& a, cudaStream_t stream);
// Which kernel prefill_flash runs: environment PDSERVE_MLA_PREFILL=flash2 or =wgmma (read on every
// call), else kPrefillDefault: wgmma since its first H100 run (2026-12-05: 9.42 ms against 12.80
// for 4 x 4096 causal, 128 heads; MlaPrefillWgmma.* green against the CPU and the old kernel).
enum class PrefillKernel : uint8_t { kFlash2, kWgmma };
inline constexpr PrefillKernel kPrefillDefault = PrefillKernel::kWgmma;
PrefillKernel prefill_kernel_choice();
// The wgmma kernel's versions (mla_prefill_wgmma.cu): 1 as above; 2 ("wgmma2") holds Q in
// registers as the A operand of S, staggers the two warpgroups inside each tile (one's softmax
// under the other's MMAs), adds a fourth KV stage in Q's freed shared memory and orders the CTAs so
// that those resident at once share K and V in L2. prefill_flash_wgmma(_launch) run version
// prefill_wgmma_version(): 2 when PDSERVE_MLA_PREFILL=wgmma2 (read on every call; then
// prefill_kernel_choice() is kWgmma), 1 when =wgmma, else kPrefillWgmmaVersionDefault: 2 since
// its first run by the lead (H100, 2026-12-05, attention_bench 4 x 4096 causal: 8.58 against 8.96
// ms for version 1 in the same run; the prefill layer's MLA op 9.50 against 10.28 ms).
inline constexpr int kPrefillWgmmaVersionDefault = 2;
int prefill_wgmma_version();
// Version 1 or 2 explicitly, where prefill_flash_wgmma_applies (else false, nothing launched).
bool prefill_flash_wgmma_launch_version(const PrefillArgs& a, cudaStream_t stream, int version);
// Benchmark only: version 2's changes alone (flags bit 1 Q in registers, 2 stagger, 4 four stages
// (needs 1), 8 L2 order, 16 S(t+1) under the softmax of t (built as 21 and 29 only); 0 is version
// 1, 15 version 2). Throws on a combination not built.
bool prefill_flash_wgmma_launch_flags(const PrefillArgs& a, cudaStream_t stream, int flags);
// Exact f32 (any dims): q f32/bf16, kv f32, k_pe f32/bf16, out f32/bf16.
void prefill_generic(const PrefillArgs& a, cudaStream_t stream);

}  // namespace pdserve::ops::cuda::mla
