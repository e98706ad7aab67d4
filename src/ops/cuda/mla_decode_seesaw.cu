// MLA decode core on Hopper wgmma with FlashMLA's "seesaw" schedule: the same contract as
// decode_core (mla_kernels.h), for sm_90a.
//
// Why (docs/perf/kernels.md): the first wgmma core (mla_decode_wgmma.cu) runs both warpgroups in
// the same phase — both compute half of S, wait for each other, both do softmax while the tensor
// cores idle, both compute P V — and reads Q twice per tile for its n32 halves of S. Its MMAs
// alone took 341 us of its 441 us for B 256 x ctx 2000, and one head block alone took 228 us with
// 167 us of loads: the per-CTA compute schedule, not the KV bytes, is what limits it.
//
// Here the two warpgroups work on different KV sub-tiles and are staggered, so one's softmax runs
// while the other's MMAs keep the tensor cores busy. One CTA per (64-head block, KV split,
// sequence), 256 threads. Warpgroup 0 owns value columns 0..255 of O, warpgroup 1 columns
// 256..511. KV comes in 32-token sub-tiles, taken in pairs (t0, t1), four in shared memory (the
// pair being computed and the next pair loading; Q stays resident):
//
//   WG0: S0 = Q K0^T; m0 = max(m, rowmax S0); P0 = exp(S0 - m0) -> smem; O_L = O_L*e^(m-m0) + P0 V0_L
//        then (P1, m1 from WG1) O_L = O_L*e^(m0-m1) + P1 V1_L
//   WG1: S1 = Q K1^T; (P0, m0 from WG0) O_R = O_R*e^(m-m0) + P0 V0_R
//        m1 = max(m0, rowmax S1); P1 = exp(S1 - m1) -> smem; O_R = O_R*e^(m0-m1) + P1 V1_R
//
// Every row ends the pair relative to m1 in both warpgroups. Handoffs are named barriers (one
// warpgroup arrives, the other syncs): P0/m0 ready, P1/m1 ready, and "done with the pair's
// buffers" (which also frees the P slot and the max slots for the next pair). Each warpgroup loads
// its own sub-tiles (cp.async, 4 threads per row); the other warpgroup reads them only after a
// handoff barrier the loader arrives at after its cp.async wait, which orders the writes.
//
// Shared memory (1024-byte aligned, 128-byte swizzled blocks wgmma reads directly):
//   Q          9 x [64 rows][64]   73,728 B
//   KV tiles   4 x 9 x [32][64]   147,456 B
//   P          [64 heads][64]       8,192 B  (P0 in columns 0..31, P1 in 32..63)
//   m0, m1, row sums                1,024 B
#include <cfloat>
#include <stdexcept>
#include <string>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_device.h"
#include "ops/cuda/mla_kernels.h"
#include "ops/cuda/wgmma.cuh"

namespace pdserve::ops::cuda::mla {

namespace {

constexpr int kH = kDecodeHeadsPerCta, kT = 32, kL = kDecodeLatent, kV = kDecodeValue;
constexpr int kThreads = 256;
constexpr int kBlocks = kL / 64;                          // 9 swizzled blocks per 576-wide row
constexpr uint32_t kQBlockBytes = 64u * 128u;             // [64 rows][64 bf16]
constexpr uint32_t kTBlockBytes = uint32_t(kT) * 128u;    // [32 rows][64 bf16]
constexpr uint32_t kTileBytes = kBlocks * kTBlockBytes;   // 36,864
constexpr int kBuffers = 4;
constexpr uint32_t kQOff = 0, kKvOff = kBlocks * kQBlockBytes, kPOff = kKvOff + kBuffers * kTileBytes;
constexpr uint32_t kRedOff = kPOff + kQBlockBytes;
constexpr size_t kSmemBytes = kRedOff + 4 * kH * sizeof(float) + 1024;  // + alignment slack
constexpr float kLog2e = 1.4426950408889634f;
// Hardware barrier ids (0 is __syncthreads').
constexpr int kBarP0 = 1, kBarP1 = 2, kBarFree0 = 3, kBarFree1 = 4, kBarWg = 5;  // kBarWg + wg
static_assert(kH == 64 && kL == 576 && kV == 512 && kDecodeTokensPerTile == 2 * kT, "DeepSeek's dims");

__device__ __forceinline__ uint32_t q_chunk(int r, int ci) {
  return uint32_t(ci >> 3) * kQBlockBytes + wgmma::sw128_offset(r, (ci & 7) * 8);
}
__device__ __forceinline__ uint32_t tile_chunk(int r, int ci) {
  return uint32_t(ci >> 3) * kTBlockBytes + wgmma::sw128_offset(r, (ci & 7) * 8);
}

// One warpgroup (local thread lt, 0..127) gathers 32-token sub-tile `tt` of sequence b through the
// page table, rows past the end zero-filled. Four threads per row: one page lookup per thread.
__device__ __forceinline__ void load_tile(uint8_t* dst, const DecodeCoreArgs& a, int b, int len, int tt, int lt) {
  const bf16* pool = static_cast<const bf16*>(a.pool);
  const int row = lt >> 2, c0 = lt & 3;
  const int pos = tt * kT + row;
  const bool valid = pos < len;
  const bf16* src = pool;
  if (valid) {
    const int page = a.page_table[b * a.page_table_stride + pos / a.page_size];
    src = pool + (int64_t(page) * a.page_size + pos % a.page_size) * kL;
  }
#pragma unroll
  for (int k = 0; k < kL / 32; ++k) {
    const int ci = c0 + 4 * k;
    cp_async16(dst + tile_chunk(row, ci), valid ? src + ci * 8 : src, valid);
  }
}

// o *= f per row half, skipped when the whole warp's factors are 1 (the running max did not move:
// the common case once a sequence's largest scores have been seen).
__device__ __forceinline__ void rescale(float (&o)[128], const float (&f)[2]) {
  if (!__any_sync(0xffffffffu, f[0] != 1.0f || f[1] != 1.0f)) return;
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] *= f[(i >> 1) & 1];
}

// O[64 x 256] += P (the 32 columns at p_col of the P block) x V (columns 256 * half of the tile).
__device__ __forceinline__ void pv(float (&o)[128], uint32_t p_base, int p_col, uint32_t tile, int half, int v_lbo,
                                   int v_sbo) {
  wgmma::fence();
#pragma unroll
  for (int ks = 0; ks < kT / 16; ++ks) {
    const uint64_t da = wgmma::make_desc(p_base + (p_col + ks * 16) * 2, 16, 1024);
    const uint64_t db = wgmma::make_desc(tile + half * 4 * kTBlockBytes + ks * 16 * 128, v_lbo, v_sbo);
    wgmma::wgmma_m64n256k16_ss_tb(o, da, db, 1);
  }
  wgmma::commit();
}

__global__ void __launch_bounds__(kThreads, 1) decode_core_seesaw_kernel(const DecodeCoreArgs a, int v_lbo, int v_sbo) {
  extern __shared__ uint8_t smem_raw[];
  // wgmma's swizzle works on absolute address bits: every block must start 1024-byte aligned.
  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  const uint32_t base = smem_addr(smem);
  float* sm_m0 = reinterpret_cast<float*>(smem + kRedOff);  // [64] WG0's max after its sub-tile
  float* sm_m1 = sm_m0 + kH;                                 // [64] WG1's, the pair's final max
  float* red_sum = sm_m1 + kH;                               // [2][64]

  const int hb = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, wg = tid >> 7, lt = tid & 127, warp = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, q = lane & 3;
  const int h0 = hb * kH;
  const int len = a.seq_lens[b];
  const SplitTiles st = decode_split_tiles(a, b, split);  // in 64-token tiles, as the combine expects
  if (st.begin >= st.end) {
    decode_write_empty_split<kThreads>(a, b, split, h0, tid);
    return;
  }
  const int tt_begin = 2 * st.begin, tt_end = min(2 * st.end, (len + kT - 1) / kT);
  const int n_tt = tt_end - tt_begin, n_pairs = (n_tt + 1) / 2;

  // Prologue: Q (every thread), then each warpgroup's sub-tile of pair 0 and of pair 1.
  {
    const bf16* qg = static_cast<const bf16*>(a.q_abs);
    constexpr int kRowChunks = kL / 8;
    for (int i = tid; i < kH * kRowChunks; i += kThreads) {
      const int row = i / kRowChunks, ci = i - row * kRowChunks;
      const bool valid = h0 + row < a.heads;  // rows past the head count are zero, never written out
      const bf16* src = qg + (int64_t(b) * a.heads + (valid ? h0 + row : 0)) * kL + ci * 8;
      cp_async16(smem + kQOff + q_chunk(row, ci), src, valid);
    }
  }
  if (tt_begin + wg < tt_end) load_tile(smem + kKvOff + wg * kTileBytes, a, b, len, tt_begin + wg, lt);
  cp_async_commit();
  if (tt_begin + 2 + wg < tt_end) load_tile(smem + kKvOff + (2 + wg) * kTileBytes, a, b, len, tt_begin + 2 + wg, lt);
  cp_async_commit();
  cp_async_wait<1>();
  wgmma::fence_proxy_async();
  __syncthreads();  // Q and pair 0, from every thread, visible to every warpgroup's wgmma

  const float scale_log2 = a.scale * kLog2e;
  const int row0 = warp * 16 + g;  // this thread's rows of S and O: row0 and row0 + 8
  const uint32_t p_base = base + kPOff;
  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.0f, 0.0f};  // this warpgroup's P row sums (its quarter of columns per thread)

  auto load_next = [&](int p) {
    const int next = tt_begin + 2 * (p + 1) + wg;
    if (next < tt_end) load_tile(smem + kKvOff + (2 * ((p + 1) & 1) + wg) * kTileBytes, a, b, len, next, lt);
    cp_async_commit();
  };

  for (int p = 0; p < n_pairs; ++p) {
    const bool has1 = 2 * p + 1 < n_tt;  // an odd count leaves the last pair without t1
    const bool last = p + 1 == n_pairs;
    const int my_tt = tt_begin + 2 * p + wg;
    const uint32_t buf0 = base + kKvOff + 2 * (p & 1) * kTileBytes, buf1 = buf0 + kTileBytes;
    // Each warpgroup loads its sub-tile of pair p+1 into its buffer of pair p-1 once the other
    // warpgroup is done with that buffer. Warpgroup 1 is told so mid-pair p-1 and loads at the
    // start of pair p; warpgroup 0 finishes pair p-1 last, so warpgroup 1 does not wait for that
    // at its start of pair p but loads after its S (below), keeping the two staggered.
    if (p > 0) {
      if (wg == 0) {
        wgmma::named_barrier(kBarFree0, 2 * 128);
        load_next(p);
        cp_async_wait<1>();  // this warpgroup's sub-tile of pair p (pair p+1's stays in flight)
      } else {
        cp_async_wait<0>();  // loaded mid-pair p-1 (or in the prologue)
      }
      wgmma::fence_proxy_async();
      wgmma::named_barrier(kBarWg + wg, 128);
    }

    // ---- S = Q K^T for this warpgroup's sub-tile: 64 heads x 32 tokens ----
    float s[16];
    float mx[2] = {-INFINITY, -INFINITY};
    if (my_tt < tt_end) {
#pragma unroll
      for (int i = 0; i < 16; ++i) s[i] = 0.0f;
      const uint32_t tile = wg == 0 ? buf0 : buf1;
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kL / 16; ++kk) {
        const uint64_t da = wgmma::make_desc(base + kQOff + (kk >> 2) * kQBlockBytes + (kk & 3) * 32, 16, 1024);
        const uint64_t db = wgmma::make_desc(tile + (kk >> 2) * kTBlockBytes + (kk & 3) * 32, 16, 1024);
        wgmma::wgmma_m64n32k16_ss(s, da, db, kk > 0);
      }
      wgmma::commit();
      wgmma::wait<0>();
      const bool tail = (my_tt + 1) * kT > len;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int tok = my_tt * kT + (i >> 2) * 8 + 2 * q + (i & 1);
        s[i] = (tail && tok >= len) ? -INFINITY : s[i] * scale_log2;
        mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
      }
      mx[0] = quad_max(mx[0]);  // a row's 32 scores live in one quad of one warp
      mx[1] = quad_max(mx[1]);
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) s[i] = -INFINITY;
    }

    // P = exp2(S - ref) as bf16 into this warpgroup's 32 columns of the P block; row sums of the
    // rounded values (what P V multiplies).
    auto write_p = [&](const float (&ref)[2], float (&sum)[2]) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const __nv_bfloat162 pv2 =
              __floats2bfloat162_rn(exp2f(s[4 * j + 2 * hi] - ref[hi]), exp2f(s[4 * j + 2 * hi + 1] - ref[hi]));
          sum[hi] += __low2float(pv2) + __high2float(pv2);
          const int col = wg * kT + j * 8 + 2 * q;
          *reinterpret_cast<__nv_bfloat162*>(smem + kPOff + wgmma::sw128_offset(row0 + 8 * hi, col)) = pv2;
        }
      wgmma::fence_proxy_async();  // P's st.shared, visible to the async proxy
    };

    if (wg == 0) {
      float m0[2], f[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        m0[hi] = fmaxf(m_run[hi], mx[hi]);  // finite: t0 always holds a valid token
        f[hi] = exp2f(m_run[hi] - m0[hi]);
      }
      write_p(m0, sum);
      if (q == 0) {
        sm_m0[row0] = m0[0];
        sm_m0[row0 + 8] = m0[1];
      }
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) l_run[hi] = l_run[hi] * f[hi] + sum[hi];
      rescale(o, f);
      wgmma::named_barrier(kBarWg, 128);  // all of P0 is written before this warpgroup's MMA reads it
      wgmma::named_arrive(kBarP0, 2 * 128);
      pv(o, p_base, 0, buf0, 0, v_lbo, v_sbo);
      wgmma::named_barrier(kBarP1, 2 * 128);  // P1 and m1 from warpgroup 1
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const float m1 = sm_m1[row0 + 8 * hi];
        f[hi] = exp2f(m0[hi] - m1);
        m_run[hi] = m1;
        l_run[hi] *= f[hi];
      }
      wgmma::wait<0>();  // P0 V0 done: O may be rescaled
      rescale(o, f);
      if (has1) {
        pv(o, p_base, kT, buf1, 0, v_lbo, v_sbo);
        wgmma::wait<0>();
      }
      if (!last) wgmma::named_arrive(kBarFree1, 2 * 128);
    } else {
      wgmma::named_barrier(kBarP0, 2 * 128);  // P0 and m0 from warpgroup 0
      float m0[2], m1[2], f[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        m0[hi] = sm_m0[row0 + 8 * hi];
        f[hi] = exp2f(m_run[hi] - m0[hi]);
      }
      rescale(o, f);
      pv(o, p_base, 0, buf0, 1, v_lbo, v_sbo);
      if (p > 0) {
        // Warpgroup 0 is done with pair p-1's t1 buffer and P1 columns.
        wgmma::named_barrier(kBarFree1, 2 * 128);
        load_next(p);
      }
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) m1[hi] = fmaxf(m0[hi], mx[hi]);
      write_p(m1, sum);
      if (q == 0) {
        sm_m1[row0] = m1[0];
        sm_m1[row0 + 8] = m1[1];
      }
      wgmma::named_barrier(kBarWg + 1, 128);
      wgmma::named_arrive(kBarP1, 2 * 128);
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        l_run[hi] = l_run[hi] * exp2f(m_run[hi] - m1[hi]) + sum[hi];
        f[hi] = exp2f(m0[hi] - m1[hi]);
        m_run[hi] = m1[hi];
      }
      wgmma::wait<0>();  // P0 V0 done: buffer t0, the P0 columns and m0 are free on this side
      if (!last) wgmma::named_arrive(kBarFree0, 2 * 128);
      rescale(o, f);
      if (has1) {
        pv(o, p_base, kT, buf1, 1, v_lbo, v_sbo);
        wgmma::wait<0>();
      }
    }
  }

  // ---- finish: row sums of both warpgroups (same final max), normalize, write ----
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const float l = quad_sum(l_run[hi]);
    if (q == 0) red_sum[wg * kH + row0 + 8 * hi] = l;
  }
  __syncthreads();
  const bool direct = a.num_splits == 1;
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int r = row0 + 8 * hi;
    const int h = h0 + r;
    if (h >= a.heads) continue;
    const float l = red_sum[r] + red_sum[kH + r];
    const float inv = 1.0f / l;
    const int64_t row = direct ? int64_t(b) * a.heads + h : (int64_t(b) * a.num_splits + split) * a.heads + h;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int col = wg * 256 + j * 8 + 2 * q;
      if (direct)
        store2(static_cast<bf16*>(a.o_lat) + row * kV + col, o[4 * j + 2 * hi] * inv, o[4 * j + 2 * hi + 1] * inv);
      else
        store2(a.o_part + row * kV + col, o[4 * j + 2 * hi] * inv, o[4 * j + 2 * hi + 1] * inv);
    }
    if (!direct && wg == 0 && q == 0) a.lse_part[row] = m_run[hi] + log2f(l);
  }
}

}  // namespace

bool decode_core_seesaw_supported() {
  int dev = 0, major = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return false;
  return major == 9 && static_cast<size_t>(optin) >= kSmemBytes;
}

void decode_core_seesaw(const DecodeCoreArgs& a, cudaStream_t stream) {
  if (a.batch <= 0) return;
  if (a.num_splits < 1 || (a.num_splits > 1 && (a.o_part == nullptr || a.lse_part == nullptr)) ||
      (a.num_splits == 1 && a.o_lat == nullptr))
    throw std::invalid_argument("mla decode_core_seesaw: bad split outputs");
  if (!decode_core_seesaw_supported())
    throw std::runtime_error("mla decode_core_seesaw needs an sm_90 GPU with " + std::to_string(kSmemBytes) +
                             " B of shared memory per block");
  check(cudaFuncSetAttribute(decode_core_seesaw_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)),
        "cudaFuncSetAttribute(decode_core_seesaw)");
  // V read MN-major, as in mla_decode_wgmma.cu: the leading offset steps between 64-column blocks
  // (here 32 tokens x 128 B), the stride offset between 8-token atoms.
  const dim3 grid(ceil_div(a.heads, kH), a.num_splits, a.batch);
  decode_core_seesaw_kernel<<<grid, kThreads, kSmemBytes, stream>>>(a, int(kTBlockBytes), 1024);
  check_launch("mla decode_core_seesaw");
}

}  // namespace pdserve::ops::cuda::mla
