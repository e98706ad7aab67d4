// MLA prefill/extend attention on Hopper warpgroup MMA (wgmma): prefill_flash_wgmma, the same
// contract as prefill_flash (mla_kernels.h: q [T, H, 192] bf16, the expanded kv [T, H * (128 +
// 128)] (k_nope then v per head), k_pe [T, 64] shared by all heads, causal with a cached prefix of
// kv_len - q_len per packed sequence, out [T, H, 128] f32 or bf16), for sm_90a.
//
// Design. One CTA per (128 query rows, head, sequence), launched heaviest (latest) query block
// first like prefill_flash; two warpgroups (256 threads), warpgroup w owning query rows 64w ..
// 64w+63 of the block (wgmma's m64), each row entirely in one warpgroup, so the online softmax
// needs only quad shuffles, never shared memory.
//
// Shared memory (1024-byte aligned, everything in the 128-byte swizzled layout of wgmma.cuh):
//   Q       128 x 192: three [128 rows][64] blocks (48 KB), loaded once;
//   K tile  64 x 192 : three [64 rows][64] blocks (24 KB) per stage;
//   V tile  64 x 128 : two [64 tokens][64 columns] blocks (16 KB) per stage;
// kStages = 3 stages (168 KB in all), filled with cp.async by all 256 threads (rows past the
// sequence zero-filled, so no NaN reaches P V). Tile t+2 is loaded during tile t (into the stage
// of tile t-1), so a load has two tiles' compute to land.
//
// Per KV tile of 64 keys, per warpgroup:
//   S = Q K^T    12 x wgmma m64n64k16, both operands from shared memory, K-major (K's rows are
//                keys, 192 contiguous elements each) -- the descriptors of the decode core;
//   softmax      mask (only tiles crossing the diagonal or the end of the keys), scale folded
//                with log2(e) into one fma before exp2, running max/sum in f32 registers; P
//                rounded to bf16 in registers: the f32 accumulator layout of S is the A-fragment
//                layout of the next wgmma (wgmma.cuh), so P never touches shared memory;
//   O += P V     4 x wgmma m64n128k16 in the RS form (A = P from registers), V from shared memory
//                as the MN-major ("transposed") B operand: V's rows are keys = the K dimension of
//                this product, its 128 columns the N dimension, contiguous. The descriptor is the
//                one the decode core validated on hardware for its V (mla_decode_wgmma.cu): the
//                leading byte offset steps between 64-column blocks (64 rows x 128 B = 8 KB), the
//                stride byte offset between 8-key atoms (1024 B), k-step ks starts 16 rows in.
// Each warpgroup waits for its P V before the next tile's barrier. (Leaving P V of tile t in flight
// under S of tile t+1 made ptxas serialize every wgmma of the kernel, C7514/C7515, whatever
// operand fences were tried; the gain would have been small: S(t+1) must be waited for before the
// softmax anyway.)
//
// Causal work: the CTA stops at the last key its last row sees; a warpgroup whose 64 rows see
// none of a tile's keys (the upper half of the diagonal) skips that tile's MMAs (it still takes
// part in the barriers); only tiles crossing its diagonal or the keys' end are masked.
//
// Version 2 (the default; PDSERVE_MLA_PREFILL=wgmma2, template flags below, same kernel; =wgmma runs
// version 1): Q in registers as the
// A operand of S (RS wgmma), the two warpgroups staggered inside each tile (named barrier: warpgroup
// 1 issues S after warpgroup 0), a fourth KV stage in Q's freed shared memory, and a CTA order that
// walks one (head, sequence)'s query blocks first (K/V shared in L2). Measured: ~4-6% faster only;
// the overlap of S(t+1) with the softmax of t (kFlagOverlap, no ptxas serialization) did not pay.
// So neither the softmax, shared-memory operand bandwidth nor K/V loads is the main limit; see
// docs/perf/kernels.md for the next suspects (m64n64 S per tile, per-tile block barrier).
//
// Selection: prefill_flash (mla_prefill.cu) runs this kernel when PDSERVE_MLA_PREFILL=wgmma, the
// old one when =flash2, else kPrefillDefault (mla_kernels.h); prefill_flash_wgmma runs this one
// wherever it applies (prefill_flash_wgmma_applies), the old one elsewhere.
//
// Numerics: as prefill_flash (P rounded to bf16 before P V and before it is summed, f32
// accumulation), except that the exponent is one fma(s, scale log2(e), -m) where the old kernel
// rounds the scaled score first, and the tensor cores sum in another order: the two agree closely
// but not bit for bit. Where every row of a warp keeps its maximum (alpha exactly 1), the rescale
// of O is skipped.
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_device.h"
#include "ops/cuda/mla_kernels.h"
#include "ops/cuda/wgmma.cuh"

namespace pdserve::ops::cuda::mla {

namespace {

constexpr int kBM = 128, kBN = 64, kNope = 128, kRope = 64, kDqk = kNope + kRope, kDv = 128;
constexpr int kThreads = 256, kStages = 3;
constexpr int kQkChunks = kDqk / 8, kVChunks = kDv / 8;  // 16-byte chunks per row
constexpr uint32_t kQBlockBytes = kBM * 128u;            // one [128 rows][64] block
constexpr uint32_t kKvBlockBytes = kBN * 128u;           // one [64 rows][64] block
constexpr uint32_t kQBytes = 3 * kQBlockBytes;           // 49,152
constexpr uint32_t kKBytes = 3 * kKvBlockBytes;          // 24,576
constexpr uint32_t kVBytes = 2 * kKvBlockBytes;          // 16,384
constexpr uint32_t kStageBytes = kKBytes + kVBytes;
constexpr uint32_t kQOff = 0, kStageOff = kQBytes;
constexpr size_t kSmemBytes = kQBytes + size_t(kStages) * kStageBytes + 1024;  // + alignment slack
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kSmemBytes <= 232448, "Q and the KV stages must fit Hopper's 227 KB");
static_assert(kStages == 3, "version 1's pipeline loads tile t+2 into the stage of tile t-1");

// Byte offset of 16-byte chunk `ci` of row `r` in a matrix stored as [rows][64] swizzled blocks of
// `block_bytes` each (block ci / 8).
__device__ __forceinline__ uint32_t chunk_off(int r, int ci, uint32_t block_bytes) {
  return uint32_t(ci >> 3) * block_bytes + wgmma::sw128_offset(r, (ci & 7) * 8);
}

// KV tile `tile` of head h into stage memory `st` (K then V), by all threads, not committed.
__device__ __forceinline__ void load_kv_tile(uint8_t* st, const PrefillArgs& a, const SeqRange& sr, int h, int tile,
                                             int tid) {
  const bf16* kv = static_cast<const bf16*>(a.kv);
  const bf16* kpe = static_cast<const bf16*>(a.k_pe);
  const int64_t kv_row = int64_t(a.heads) * (kNope + kDv);
#pragma unroll
  for (int k = 0; k < kBN * kQkChunks / kThreads; ++k) {
    const int i = tid + k * kThreads;
    const int row = i / kQkChunks, c = i - row * kQkChunks, pos = tile * kBN + row;
    const bool valid = pos < sr.kv_len;
    const int64_t t = sr.kv_begin + (valid ? pos : 0);
    const bf16* src = c < kNope / 8 ? kv + t * kv_row + int64_t(h) * (kNope + kDv) + c * 8
                                    : kpe + t * a.k_pe_row + (c - kNope / 8) * 8;
    cp_async16(st + chunk_off(row, c, kKvBlockBytes), src, valid);
  }
#pragma unroll
  for (int k = 0; k < kBN * kVChunks / kThreads; ++k) {
    const int i = tid + k * kThreads;
    const int row = i / kVChunks, c = i - row * kVChunks, pos = tile * kBN + row;
    const bool valid = pos < sr.kv_len;
    const int64_t t = sr.kv_begin + (valid ? pos : 0);
    const bf16* src = kv + t * kv_row + int64_t(h) * (kNope + kDv) + kNope + c * 8;
    cp_async16(st + kKBytes + chunk_off(row, c, kKvBlockBytes), src, valid);
  }
}

// Version 2's changes, each a flag (version 1 = 0, version 2 = kFlagQRegs | kFlagStagger; the
// benchmark also times each alone).
// kFlagStages4: a fourth KV stage in Q's shared memory, free once Q is in registers (tile t+3 loads
// during tile t). kFlagL2Order is no template argument but a launch choice: the grid walks the query
// blocks of one (head, sequence) first (heaviest first), so the CTAs resident at once share a few
// heads' K and V in L2 instead of each reading its own head's from HBM.
// kFlagOverlap (with Q in registers and four stages, without the stagger): each warpgroup issues S
// of tile t+1 before the softmax of tile t (two S accumulators), so S's latency hides under the
// softmax; the loop then waits for tile t+1 (not t) at its top.
constexpr int kFlagQRegs = 1, kFlagStagger = 2, kFlagStages4 = 4, kFlagL2Order = 8, kFlagOverlap = 16;
// Version 2: measured 2026-12-05 on one H100 (4 x 4096 causal, 128 heads, three runs of 5
// iterations): 8.40-8.60 ms against version 1's 8.91-8.93 in the same runs; every flag alone, and
// the overlap (21, 29), stayed within the runs' noise (about +-3%) of version 1. Bit-identical to it.
constexpr int kFlagsV2 = kFlagQRegs | kFlagStagger | kFlagStages4 | kFlagL2Order;
constexpr int kBarStagger = 1;  // named barrier id: warpgroup 0's S issued (0 is __syncthreads')

template <typename TO, int kFlags>
__global__ void __launch_bounds__(kThreads, 1) prefill_wgmma_kernel(const PrefillArgs a, int l2_order) {
  constexpr bool kQRegs = (kFlags & kFlagQRegs) != 0, kStagger = (kFlags & kFlagStagger) != 0;
  constexpr bool kStages4 = (kFlags & kFlagStages4) != 0;
  static_assert(!kStages4 || kQRegs, "the fourth stage is Q's shared memory: Q must live in registers");
  constexpr bool kOverlap = (kFlags & kFlagOverlap) != 0;
  static_assert(!kOverlap || (kStages4 && !kStagger), "the overlap needs four stages and no stagger");
  constexpr int kSt = kStages4 ? 4 : kStages;  // tile t + kSt - 1 loads during tile t
  // Stage i's shared memory: the three stages after Q, the fourth one Q's (48 KB >= 40 KB).
  const auto stage_off = [](int i) { return i < kStages ? kStageOff + uint32_t(i) * kStageBytes : kQOff; };
  extern __shared__ uint8_t smem_raw[];
  // wgmma's swizzle works on absolute address bits: every block must start 1024-byte aligned.
  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  const uint32_t base = smem_addr(smem);

  const int h = l2_order ? blockIdx.y : blockIdx.x, seq = l2_order ? blockIdx.z : blockIdx.y;
  const int qb = l2_order ? gridDim.x - 1 - blockIdx.x : gridDim.z - 1 - blockIdx.z;
  const int tid = threadIdx.x, warp = (tid >> 5) & 3, lane = tid & 31;
  // Broadcast from lane 0 so the compiler knows the warpgroup is warp-uniform (no C7520 around the
  // warpgroup-dependent branches before the wgmma below).
  const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);
  const int g = lane >> 2, q4 = lane & 3;
  const SeqRange sr = seq_range(a, seq);
  if (qb * kBM >= sr.q_len) return;
  // Last key any row of this block sees: prefix + last row; the same for this warpgroup's rows.
  const int kv_end = min(sr.kv_len, sr.prefix + min(sr.q_len, (qb + 1) * kBM));
  const int n_tiles = (kv_end + kBN - 1) / kBN;
  const int wg_row0 = qb * kBM + wg * 64;  // local query index of this warpgroup's first row
  const int wg_kv_end = wg_row0 < sr.q_len ? min(sr.kv_len, sr.prefix + min(sr.q_len, wg_row0 + 64)) : 0;
  const int wg_tiles = (wg_kv_end + kBN - 1) / kBN;

  {
    const bf16* qg = static_cast<const bf16*>(a.q);
#pragma unroll 4
    for (int k = 0; k < kBM * kQkChunks / kThreads; ++k) {
      const int i = tid + k * kThreads;
      const int row = i / kQkChunks, c = i - row * kQkChunks, qr = qb * kBM + row;
      const bool valid = qr < sr.q_len;
      const bf16* src = qg + int64_t(sr.q_begin + (valid ? qr : 0)) * a.q_row + int64_t(h) * a.q_head + c * 8;
      cp_async16(smem + kQOff + chunk_off(row, c, kQBlockBytes), src, valid);
    }
  }
  load_kv_tile(smem + kStageOff, a, sr, h, 0, tid);
  cp_async_commit();
#pragma unroll
  for (int i = 1; i < kSt - 1; ++i) {  // tiles 1 .. kSt-2 (never into the fourth stage, Q's)
    if (i < n_tiles) load_kv_tile(smem + stage_off(i), a, sr, h, i, tid);
    cp_async_commit();
  }

  const float scale_log2 = a.scale * kLog2e;
  const int row_lo = wg_row0 + warp * 16 + g;  // local query index of accumulator rows (hi = 0; +8 for hi = 1)
  float o[kDv / 2];                            // m64n128 accumulator: register 4j + e = row hi = e/2, col 8j + 2q + e%2
#pragma unroll
  for (int i = 0; i < kDv / 2; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const uint32_t q_wg = base + kQOff + uint32_t(wg) * 64u * 128u;  // this warpgroup's 64 rows of each Q block

  // Version 2: Q as the register A operand of S (12 k-steps x 4 registers), read once from shared
  // memory; S's wgmma then reads only K there (half the bytes of the shared-memory form).
  uint32_t qf[kQRegs ? kDqk / 16 : 1][4];
  if constexpr (kQRegs) {
    cp_async_wait<kSt - 2>();    // Q (and tile 0) landed, this thread's part
    wgmma::fence_proxy_async();  // (tile 0 visible to wgmma: the overlap issues S(0) below)
    __syncthreads();             // ... every thread's
    const int r0 = wg * 64 + warp * 16 + g;
#pragma unroll
    for (int kk = 0; kk < kDqk / 16; ++kk) {
      const uint8_t* blk = smem + kQOff + (kk >> 2) * kQBlockBytes;
      const int c0 = (kk & 3) * 16 + 2 * q4;
      qf[kk][0] = *reinterpret_cast<const uint32_t*>(blk + wgmma::sw128_offset(r0, c0));
      qf[kk][1] = *reinterpret_cast<const uint32_t*>(blk + wgmma::sw128_offset(r0 + 8, c0));
      qf[kk][2] = *reinterpret_cast<const uint32_t*>(blk + wgmma::sw128_offset(r0, c0 + 8));
      qf[kk][3] = *reinterpret_cast<const uint32_t*>(blk + wgmma::sw128_offset(r0 + 8, c0 + 8));
    }
  }

  // The overlap's second S accumulator: S of the next tile, in flight under this tile's softmax.
  float s_next[kOverlap ? kBN / 2 : 1];
#pragma unroll
  for (int i = 0; i < (kOverlap ? kBN / 2 : 1); ++i) s_next[i] = 0.0f;
  if constexpr (kOverlap) {
    if (wg_tiles > 0) {  // S(0) now (stage 0), waited for: every iteration starts with S(t) done
      wgmma::fence_operands(s_next);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kDqk / 16; ++kk)
        wgmma::wgmma_m64n64k16_rs(
            s_next, qf[kk], wgmma::make_desc(base + stage_off(0) + (kk >> 2) * kKvBlockBytes + (kk & 3) * 32u, 16, 1024),
            kk > 0);
      wgmma::commit();
      wgmma::wait<0>();
      wgmma::fence_operands(s_next);
    }
  }

  for (int t = 0; t < n_tiles; ++t) {
    const int stage = t % kSt;
    // Tile t landed (tiles after it may still be in flight); with the overlap, tile t+1.
    cp_async_wait<kOverlap ? 1 : kSt - 2>();
    wgmma::fence_proxy_async();  // this thread's cp.async writes, visible to wgmma
    __syncthreads();             // ... every thread's; and both warpgroups are done with tile t-1
    // Tile t+2 goes into the stage of tile t-1. One commit group per iteration, empty or not, so
    // that wait<1> above always means "all but the newest tile".
    // (Version 2, four stages: tile t+3 into the stage of tile t-1; at t = 0 that is Q's memory,
    // which every thread has read into registers before this iteration's barrier.)
    if (t + kSt - 1 < n_tiles)
      load_kv_tile(smem + stage_off((t + kSt - 1) % kSt), a, sr, h, t + kSt - 1, tid);
    cp_async_commit();
    if (t >= wg_tiles) {  // none of this warpgroup's rows sees these keys (warpgroup-uniform)
      if constexpr (kStagger) {  // the stagger barrier's one arrive and one wait per tile, all the same
        if (wg == 0)
          wgmma::named_arrive(kBarStagger, kThreads);
        else
          wgmma::named_barrier(kBarStagger, kThreads);
      }
      continue;
    }
    // Version 2: warpgroup 1 issues its S only once warpgroup 0's is issued, so the tensor cores
    // run S0 then S1 and warpgroup 0's softmax overlaps S1, warpgroup 1's softmax overlaps P V of
    // warpgroup 0 (in version 1 both softmaxes run at once with the tensor cores idle).
    if constexpr (kStagger) {
      if (wg == 1) wgmma::named_barrier(kBarStagger, kThreads);
    }

    const uint32_t k_st = base + stage_off(stage);
    const uint32_t v_st = k_st + kKBytes;

    // ---- S = Q K^T: 64 rows x 64 keys ----
    float s[kBN / 2];
    if constexpr (kOverlap) {
      // S(t) is done (previous iteration); S(t+1) goes out now and runs under this softmax.
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) s[i] = s_next[i];
      if (t + 1 < wg_tiles) {
        const uint32_t kn_st = base + stage_off((t + 1) % kSt);
        wgmma::fence_operands(s_next);
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < kDqk / 16; ++kk)
          wgmma::wgmma_m64n64k16_rs(
              s_next, qf[kk], wgmma::make_desc(kn_st + (kk >> 2) * kKvBlockBytes + (kk & 3) * 32u, 16, 1024), kk > 0);
        wgmma::commit();
      }
    } else {
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) s[i] = 0.0f;
    wgmma::fence_operands(s);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kDqk / 16; ++kk) {
      const uint32_t koff = (kk & 3) * 32u;  // k-step inside its 64-wide block
      const uint64_t kdesc = wgmma::make_desc(k_st + (kk >> 2) * kKvBlockBytes + koff, 16, 1024);
      if constexpr (kQRegs)
        wgmma::wgmma_m64n64k16_rs(s, qf[kk], kdesc, kk > 0);
      else
        wgmma::wgmma_m64n64k16_ss(s, wgmma::make_desc(q_wg + (kk >> 2) * kQBlockBytes + koff, 16, 1024), kdesc,
                                  kk > 0);
    }
    wgmma::commit();
    if constexpr (kStagger) {
      if (wg == 0) wgmma::named_arrive(kBarStagger, kThreads);
    }
    wgmma::wait<0>();
    wgmma::fence_operands(s);
    }

    // ---- online softmax (running max in log2 units: raw score x scale_log2) ----
    const bool need_mask = (t + 1) * kBN - 1 > sr.prefix + wg_row0 || (t + 1) * kBN > sr.kv_len;
    if (need_mask) {
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = t * kBN + j * 8 + 2 * q4 + (e & 1);
          const int r = row_lo + (e >> 1) * 8;
          if (!(tok < sr.kv_len && tok <= sr.prefix + r)) s[4 * j + e] = -INFINITY;
        }
    }

    uint32_t pa[kBN / 16][4];
    float alpha[2];
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hi], s[4 * j + 2 * hi + 1]));
      mx = quad_max(mx);
      // Tile 0 holds key 0, visible to every row, so m_new is finite from the first tile on (the
      // scale is positive, so the maximum of the raw scores is the maximum of the scaled ones).
      const float m_new = fmaxf(m_run[hi], mx * scale_log2);
      alpha[hi] = exp2f(m_run[hi] - m_new);
      m_run[hi] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const __nv_bfloat162 pv = __floats2bfloat162_rn(exp2f(fmaf(s[4 * j + 2 * hi], scale_log2, -m_new)),
                                                        exp2f(fmaf(s[4 * j + 2 * hi + 1], scale_log2, -m_new)));
        sum += __low2float(pv) + __high2float(pv);
        // Accumulator (row hi, 8-column group j) -> A fragment of k-step j/2: register hi + 2 (j & 1).
        pa[j >> 1][hi + 2 * (j & 1)] = *reinterpret_cast<const uint32_t*>(&pv);
      }
      l_run[hi] = l_run[hi] * alpha[hi] + sum;
    }
    // Once the row maxima settle, most tiles leave them unchanged (alpha exactly 1): the warp then
    // skips the 64 multiplies of the rescale.
    if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
      for (int i = 0; i < kDv / 2; ++i) o[i] *= alpha[(i >> 1) & 1];
    }

    // ---- O += P V: 64 rows x 128 value columns ----
    wgmma::fence_operands(o);  // the rescale lands before the fence, not after it
    wgmma::fence();
#pragma unroll
    for (int ks = 0; ks < kBN / 16; ++ks)
      wgmma::wgmma_m64n128k16_rs_tb(o, pa[ks], wgmma::make_desc(v_st + ks * 16 * 128, kKvBlockBytes, 1024), 1);
    wgmma::commit();
    wgmma::wait<0>();  // (with the overlap, S(t+1) too)
    wgmma::fence_operands(o);
    if constexpr (kOverlap) wgmma::fence_operands(s_next);
  }

  TO* out = static_cast<TO*>(a.out);
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int r = row_lo + hi * 8;
    const float inv = 1.0f / quad_sum(l_run[hi]);
    if (r >= sr.q_len) continue;
    TO* orow = out + (int64_t(sr.q_begin + r) * a.heads + h) * kDv;
#pragma unroll
    for (int j = 0; j < kDv / 8; ++j)
      store2(orow + j * 8 + 2 * q4, o[4 * j + 2 * hi] * inv, o[4 * j + 2 * hi + 1] * inv);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

bool device_supported() {
  static const bool ok = [] {
    int dev = 0, major = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return false;
    return major == 9 && static_cast<size_t>(optin) >= kSmemBytes;
  }();
  return ok;
}

template <typename TO, int kFlags>
void launch(const PrefillArgs& a, dim3 grid, cudaStream_t stream, int l2_order) {
  check(cudaFuncSetAttribute(prefill_wgmma_kernel<TO, kFlags>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(kSmemBytes)),
        "cudaFuncSetAttribute(prefill_flash_wgmma)");
  prefill_wgmma_kernel<TO, kFlags><<<grid, kThreads, kSmemBytes, stream>>>(a, l2_order);
}

template <typename TO>
void launch_flags(const PrefillArgs& a, cudaStream_t stream, int flags) {
  const unsigned q_blocks = static_cast<unsigned>(ceil_div(a.max_q_len, kBM));
  const int l2_order = (flags & kFlagL2Order) != 0 ? 1 : 0;
  const dim3 grid = l2_order ? dim3(q_blocks, a.heads, a.num_seqs) : dim3(a.heads, a.num_seqs, q_blocks);
  switch (flags & ~kFlagL2Order) {
    case 0: launch<TO, 0>(a, grid, stream, l2_order); break;
    case kFlagQRegs: launch<TO, kFlagQRegs>(a, grid, stream, l2_order); break;
    case kFlagStagger: launch<TO, kFlagStagger>(a, grid, stream, l2_order); break;
    case kFlagQRegs | kFlagStagger: launch<TO, kFlagQRegs | kFlagStagger>(a, grid, stream, l2_order); break;
    case kFlagQRegs | kFlagStages4: launch<TO, kFlagQRegs | kFlagStages4>(a, grid, stream, l2_order); break;
    case kFlagQRegs | kFlagStagger | kFlagStages4:
      launch<TO, kFlagQRegs | kFlagStagger | kFlagStages4>(a, grid, stream, l2_order);
      break;
    case kFlagQRegs | kFlagStages4 | kFlagOverlap:
      launch<TO, kFlagQRegs | kFlagStages4 | kFlagOverlap>(a, grid, stream, l2_order);
      break;
    default: throw std::invalid_argument("mla prefill_flash_wgmma: no such combination of flags");
  }
}

}  // namespace

bool prefill_flash_wgmma_applies(const PrefillArgs& a) {
  return a.nope == kNope && a.rope == kRope && a.v == kDv && a.q_type == Elem::kBF16 && a.k_pe_type == Elem::kBF16 &&
         (a.out_type == Elem::kF32 || a.out_type == Elem::kBF16) && a.q_row % 8 == 0 && a.q_head % 8 == 0 &&
         a.k_pe_row % 8 == 0 && aligned16(a.q) && aligned16(a.kv) && aligned16(a.k_pe) &&
         ((reinterpret_cast<uintptr_t>(a.out) & 7u) == 0) && a.num_seqs <= 65535 && a.heads <= 65535 &&
         ceil_div(a.max_q_len, kBM) <= 65535 && device_supported();
}

bool prefill_flash_wgmma_launch_flags(const PrefillArgs& a, cudaStream_t stream, int flags) {
  if (flags < 0 || flags > 31 || (flags & (kFlagStages4 | kFlagQRegs)) == kFlagStages4)
    throw std::invalid_argument("mla prefill_flash_wgmma: no such combination of flags");
  if (a.num_seqs <= 0 || a.max_q_len <= 0) return true;
  if (!prefill_flash_wgmma_applies(a)) return false;
  if (a.out_type == Elem::kF32)
    launch_flags<float>(a, stream, flags);
  else
    launch_flags<bf16>(a, stream, flags);
  check_launch("mla prefill_flash_wgmma");
  return true;
}

bool prefill_flash_wgmma_launch_version(const PrefillArgs& a, cudaStream_t stream, int version) {
  if (version != 1 && version != 2) throw std::invalid_argument("mla prefill_flash_wgmma: version must be 1 or 2");
  return prefill_flash_wgmma_launch_flags(a, stream, version == 2 ? kFlagsV2 : 0);
}

bool prefill_flash_wgmma_launch(const PrefillArgs& a, cudaStream_t stream) {
  return prefill_flash_wgmma_launch_version(a, stream, prefill_wgmma_version());
}

void prefill_flash_wgmma(const PrefillArgs& a, cudaStream_t stream) {
  if (!prefill_flash_wgmma_launch(a, stream)) prefill_flash2(a, stream);
}

PrefillKernel prefill_kernel_choice() {
  const char* e = std::getenv("PDSERVE_MLA_PREFILL");
  if (e != nullptr && std::strcmp(e, "flash2") == 0) return PrefillKernel::kFlash2;
  if (e != nullptr && std::strcmp(e, "wgmma") == 0) return PrefillKernel::kWgmma;
  // Version 2 runs behind the same kernel choice (prefill_flash calls prefill_flash_wgmma_launch,
  // which picks the version by prefill_wgmma_version()).
  if (e != nullptr && std::strcmp(e, "wgmma2") == 0) return PrefillKernel::kWgmma;
  return kPrefillDefault;
}

int prefill_wgmma_version() {
  const char* e = std::getenv("PDSERVE_MLA_PREFILL");
  if (e != nullptr && std::strcmp(e, "wgmma2") == 0) return 2;
  if (e != nullptr && std::strcmp(e, "wgmma") == 0) return 1;
  return kPrefillWgmmaVersionDefault;
}

}  // namespace pdserve::ops::cuda::mla
