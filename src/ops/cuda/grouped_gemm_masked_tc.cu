// grouped_gemm_masked_tc: the masked-layout expert GEMM of EP decode on tensor cores.
//
// What it is for: GpuEpExperts::run_experts (src/moe/cuda/ep_gpu_experts.cpp) runs every decode
// pass through grouped_gemv_masked (CUDA cores, 8 rows per warp pass): right for a few rows per
// expert, ~100x slower than tensor cores at hundreds (H100, layer_bench, 2026-12-05: 31,882 us for
// 4 experts x 512 rows against 311 us for cuBLASLt's grouped_linear_masked, which however computes
// every expert over all max_m rows: wasteful at EP8, where max_m = 2048 and counts are ~64). This
// kernel has the GEMV's contract (ops/grouped_gemm.h, grouped_gemv_masked: counts stay on the
// device, rows >= counts[g] are neither read nor written, the call is graph-capturable, `table`
// gives each expert's weight and scale addresses) and computes only the 64-row tiles that hold
// rows. NOT YET USED by the model or the EP experts: it has never run. A GPU session validates it
// (tests/gpu/grouped_gemm_masked_tc_test.cpp, bench/gpu/grouped_masked_bench.cu) before run_experts
// switches to it above a few rows per expert.
//
// Scope: experts fp8 e4m3 [N, K] with 128x128 block scales (DeepSeek-V3's), N and K multiples of
// 128; x bf16, or fp8 e4m3 with x_scales f32 [G, K/128, max_m] (the low-latency dispatch's recv_x /
// recv_scales); y f32 or bf16.
//
// Design (a simple first version: no TMA, no wgmma):
// - 256 threads = 8 warps as 2 (rows) x 4 (columns), each warp a 32 x 32 piece of the CTA's
//   64-row x 128-column tile. Grid (N/128, R, G) with R = min(ceil(max_m/64), kRowCtas): CTA y
//   computes row tiles y, y + R, ... of its expert while they start below counts[g]; a CTA whose
//   first tile starts at or past the count returns at once, so only tiles holding rows cost
//   anything and unused experts' weights are never read. (R caps the CTAs that exit at once: at
//   max_m = 2048 an uncapped grid has 32 row tiles per expert, 31 of them empty at ~64 rows.)
// - K advances in 128-wide blocks, exactly one weight scale block; the CTA's 128 columns are one
//   128-row scale block too, so a step's weight scale is ONE scalar, scale_inv[n0/128][kb]. Each
//   step's x tile (64 x 128), weight tile (128 x 128 fp8), the 64 row scales and the weight scale
//   go through a two-stage cp.async double buffer in shared memory. Rows >= count are zero-filled
//   by cp.async (src-size 0: nothing is read), so NaN left there by the dispatch never enters the
//   products (and those rows are never stored).
// - Per block the products accumulate in f32 registers (`part`), then acc += part * x_scale[row] *
//   w_scale (bf16 x: part * w_scale): DeepSeek's per-128 promotion. Accumulation is f32 throughout.
// - MMA: mma.sync m16n8k16 with f32 accumulation. fp8 x: both operands are converted e4m3 -> f16 in
//   registers (exact: every e4m3 value is an f16 normal) and the f16 MMA used. Not the m16n8k32
//   e4m3 MMA: sm_90 has no native mma.sync for fp8 (it is Ada's instruction; on Hopper ptxas
//   emulates it by converting both operands to f16 before EVERY MMA, NVIDIA/cutlass#1986).
//   Converting ourselves converts each A fragment once for 4 column tiles and each B fragment once
//   for 2 row tiles; the results are those of the e4m3 MMA (exact conversions, f32 accumulation).
//   bf16 x: the weight fragments are converted e4m3 -> f16 -> f32 -> bf16 (exact) in registers and
//   the bf16 MMA used; x stays bf16 (no re-quantization: the GEMV's bf16 path has exact products).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" (f16/bf16) and "... for
// mma.m16n8k32" (.e4m3), and "ldmatrix"; g = lane >> 2, t = lane & 3):
//   m16n8k16 A (16 x 16, row): 4 .b32 registers of 2 elements each, the lower k in the low half:
//     R0 = A[g][2t, 2t+1], R1 = A[g+8][2t, 2t+1], R2 = A[g][2t+8, 2t+9], R3 = A[g+8][2t+8, 2t+9].
//   B (16 x 8, col): b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g].
//   C/D (16 x 8, f32): c0, c1 = C[g][2t, 2t+1]; c2, c3 = C[g+8][2t, 2t+1].
//   The 8-bit tiles are read with ldmatrix.x4 (.b16: four 8 x 8 matrices of 8 rows x 16 bytes;
//   lane l gives the row address of row l % 8 of matrix l / 8; register i receives row l / 4 of
//   matrix i, bytes 4(l % 4) .. 4(l % 4) + 3). With the matrices (rows 0-7, k 0-15), (rows 8-15,
//   k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31) of a 16 x 32 piece of x this is exactly the
//   m16n8k32 8-bit A fragment: a[0] = X[g][4t..4t+3], a[1] = X[g+8][4t..4t+3], a[2] =
//   X[g][16+4t..16+4t+3], a[3] = X[g+8][16+4t..]. For the weights (rows n, k contiguous: the "col"
//   B operand) the matrices (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31)
//   give b[0] = W[g][4t..4t+3] and b[1] = W[g][16+4t..16+4t+3] of two 8-column tiles.
//   So each thread holds 4 consecutive k (4t .. 4t+3) of each 16-k half h of a 32-k step, not the
//   m16n8k16 pairs (2t, 2t+1) and (2t+8, 2t+9). A dot product does not care how k is numbered as
//   long as A and B agree, so the MMA of half h uses, for BOTH operands, the bijection (logical k
//   -> physical k inside the half)
//     2t + j -> 4t + j,   2t + 8 + j -> 4t + 2 + j   (t = 0..3, j = 0..1: each of 0..15 once):
//   R0 = cvt(low 16 bits of a[2h]) = X[g][4t, 4t+1], R1 = cvt(low of a[2h+1]) = X[g+8][4t, 4t+1],
//   R2 = cvt(high of a[2h]) = X[g][4t+2, 4t+3], R3 = cvt(high of a[2h+1]); b0 = cvt(low of b[h]),
//   b1 = cvt(high of b[h]). cvt.rn.f16x2.e4m3x2 puts the low byte in the low half.
//   bf16 x uses the same bijection: thread (g, t) loads X[r][16h + 4t .. 16h + 4t + 3] with one
//   8-byte shared load per row (low word -> R0 / R1, high word -> R2 / R3).
//   (A pure-Python emulation of this index math with these ldmatrix / mma semantics reproduced
//   the plain dot product exactly, both x dtypes, counts 1, 17, 37, 64 and a second row tile.)
// Shared-memory swizzles (16-byte chunks; bank = byte offset / 4 mod 32):
//   128-byte rows (fp8 x, weights): chunk c of row r is stored at c ^ (r & 7): the 8 row addresses
//   of an ldmatrix matrix (same c, 8 consecutive r) fall in 8 different chunks = all 32 banks.
//   256-byte rows (bf16 x): chunk c of row r at c ^ ((r & 3) << 1): 8-byte loads are served per
//   half warp (g = 0..3 or 4..7, t = 0..3); lane (g, t) reads chunk c0 + (t >> 1) (c0 even) at byte
//   8 (t & 1), and the XOR with 0, 2, 4, 6 spreads the four rows over the 8 chunks of one 128-byte
//   span: 16 lanes, 32 distinct banks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "ops/cuda/async_copy.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/grouped_gemm.h"

namespace pdserve::ops::cuda {

namespace {

constexpr int kBM = 64;   // rows of one expert per tile
constexpr int kBN = 128;  // output columns per CTA: one 128-row weight scale block
constexpr int kBK = 128;  // K per pipeline stage: one 128-column scale block
constexpr int kWarpsM = 2, kWarpsN = 4, kThreads = 32 * kWarpsM * kWarpsN;
constexpr int kWM = kBM / kWarpsM;  // 32 rows per warp: kMT m16 tiles
constexpr int kWN = kBN / kWarpsN;  // 32 columns per warp: kNT n8 tiles
constexpr int kMT = kWM / 16, kNT = kWN / 8;
constexpr int kStages = 2;
constexpr int kRowCtas = 8;  // most CTAs per (column tile, expert); each loops over row tiles
static_assert(kNT % 2 == 0, "weight fragments are loaded two n8 tiles per ldmatrix.x4");

using fp8 = __nv_fp8_e4m3;
using bf16 = __nv_bfloat16;

// Dynamic shared memory, bytes: [x stages][weight stages][row scales: kStages x kBM f32][weight
// scale: kStages f32].
template <typename XT>
struct Smem {
  static constexpr int kABytes = kBM * kBK * static_cast<int>(sizeof(XT));  // 8 KiB fp8, 16 KiB bf16
  static constexpr int kBBytes = kBN * kBK;                                 // 16 KiB
  static constexpr int kA = 0;
  static constexpr int kB = kA + kStages * kABytes;
  static constexpr int kXs = kB + kStages * kBBytes;
  static constexpr int kWs = kXs + kStages * kBM * 4;
  static constexpr int kBytes = kWs + kStages * 4;
};

// Byte offset of 16-byte chunk c of row r: 128-byte rows (8 chunks) and 256-byte rows (16 chunks).
__device__ __forceinline__ int swz128(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }
__device__ __forceinline__ int swz256(int r, int c) { return r * 256 + ((c ^ ((r & 3) << 1)) << 4); }

// smem_addr, cp_async16 (16 bytes through L2 only; !valid zero-fills and reads nothing),
// cp_async_commit/wait and ldmatrix_x4: ops/cuda/async_copy.cuh.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 4 : 0));
}

// Two e4m3 (low byte -> low half) as f16x2; exact.
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint16_t v) {
  uint32_t r;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"(v));
  return r;
}
// Two e4m3 as bf16x2, through f16 and f32; exact (3 mantissa bits, exponents 2^-9 .. 2^8).
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint16_t v) {
  const uint32_t h = e4m3x2_to_f16x2(v);
  __half2 hh;
  static_assert(sizeof(hh) == sizeof(h));
  __builtin_memcpy(&hh, &h, sizeof(h));
  const __nv_bfloat162 b = __float22bfloat162_rn(__half22float2(hh));
  uint32_t r;
  __builtin_memcpy(&r, &b, sizeof(r));
  return r;
}

// A weight pair in the MMA's operand type: f16 beside fp8 x, bf16 beside bf16 x.
template <typename XT>
__device__ __forceinline__ uint32_t weight_pair(uint16_t v) {
  if constexpr (std::is_same_v<XT, fp8>)
    return e4m3x2_to_f16x2(v);
  else
    return e4m3x2_to_bf16x2(v);
}

// d += a * b for one m16n8k16 tile, f32 accumulation: f16 operands (fp8 x) or bf16 (bf16 x).
template <typename XT>
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<XT, fp8>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store2(bf16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// x [G, max_m, K] (XT), x_scales [G, K/128, max_m] f32 (fp8 x only), counts [G] i32, table i64
// [2, G] (weight addresses, then scale_inv addresses), y [G, max_m, N] (YT).
template <typename XT, typename YT>
__global__ void __launch_bounds__(kThreads, 2)
    masked_tc_kernel(const XT* __restrict__ x, const float* __restrict__ x_scales, const int32_t* __restrict__ counts,
                     const int64_t* __restrict__ table, int groups, int max_m, int n, int k, YT* __restrict__ y) {
  constexpr bool kFp8X = std::is_same_v<XT, fp8>;
  constexpr int kXBytes = static_cast<int>(sizeof(XT));
  using L = Smem<XT>;
  extern __shared__ __align__(128) uint8_t smem[];

  const int e = blockIdx.z;
  const int cnt = min(max(counts[e], 0), max_m);
  // The CTA's first row tile starts at or past the count: nothing to do, no weight is read.
  if (static_cast<int>(blockIdx.y) * kBM >= cnt) return;
  const int n0 = blockIdx.x * kBN;
  const int kblocks = k / kBK;

  const uint8_t* w = reinterpret_cast<const uint8_t*>(table[e]) + static_cast<int64_t>(n0) * k;  // fp8 rows n0..
  const float* wscale = reinterpret_cast<const float*>(table[groups + e]) + static_cast<int64_t>(blockIdx.x) * kblocks;
  const uint8_t* xg = reinterpret_cast<const uint8_t*>(x + static_cast<int64_t>(e) * max_m * k);
  const float* xsg = kFp8X ? x_scales + static_cast<int64_t>(e) * kblocks * max_m : nullptr;
  const int64_t x_row_bytes = static_cast<int64_t>(k) * kXBytes;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  const int g = lane >> 2, t = lane & 3;
  int m0 = 0;  // first row of the current row tile

  // One pipeline stage: K block kb of the current row tile into buffer s.
  auto load_stage = [&](int s, int kb) {
    uint8_t* sa = smem + L::kA + s * L::kABytes;
    uint8_t* sb = smem + L::kB + s * L::kBBytes;
    // x: kBM rows of kBK * kXBytes / 16 chunks; rows past the count zero-filled, not read.
    constexpr int kAChunksPerRow = kBK * kXBytes / 16;  // 8 (fp8) or 16 (bf16)
    constexpr int kAChunks = kBM * kAChunksPerRow;
#pragma unroll
    for (int i = 0; i < kAChunks / kThreads; ++i) {
      const int u = tid + i * kThreads;
      const int r = u / kAChunksPerRow, c = u % kAChunksPerRow;
      const bool ok = m0 + r < cnt;
      const uint8_t* src = ok ? xg + (m0 + r) * x_row_bytes + static_cast<int64_t>(kb) * kBK * kXBytes + c * 16 : xg;
      cp_async16(sa + (kFp8X ? swz128(r, c) : swz256(r, c)), src, ok);
    }
    // Weights: kBN rows of 8 chunks, all present (N and K are multiples of 128).
    constexpr int kBChunks = kBN * (kBK / 16);
#pragma unroll
    for (int i = 0; i < kBChunks / kThreads; ++i) {
      const int u = tid + i * kThreads;
      const int r = u >> 3, c = u & 7;
      cp_async16(sb + swz128(r, c), w + static_cast<int64_t>(r) * k + static_cast<int64_t>(kb) * kBK + c * 16, true);
    }
    if constexpr (kFp8X) {
      float* sxs = reinterpret_cast<float*>(smem + L::kXs) + s * kBM;
      if (tid < kBM) {
        const bool ok = m0 + tid < cnt;
        cp_async4(sxs + tid, ok ? xsg + static_cast<int64_t>(kb) * max_m + m0 + tid : xsg, ok);
      }
    }
    if (tid == kThreads - 1) cp_async4(reinterpret_cast<float*>(smem + L::kWs) + s, wscale + kb, true);
  };

  // Row tiles blockIdx.y, + gridDim.y, ... of the expert, while they start below the count.
  for (m0 = blockIdx.y * kBM; m0 < cnt; m0 += gridDim.y * kBM) {
    // Warp-uniform: which of this warp's m16 tiles hold rows (the others skip their MMAs).
    bool active[kMT], any_active = false;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      active[mt] = m0 + wm * kWM + mt * 16 < cnt;
      any_active = any_active || active[mt];
    }
    float acc[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

    load_stage(0, 0);
    cp_async_commit();
    for (int kb = 0; kb < kblocks; ++kb) {
      const int s = kb & 1;
      // Buffer s ^ 1 was last read in iteration kb - 1 (or the previous row tile's last one),
      // which ended with __syncthreads.
      if (kb + 1 < kblocks) load_stage(s ^ 1, kb + 1);
      cp_async_commit();  // possibly empty: "all but the newest group" is then block kb
      cp_async_wait<1>();
      __syncthreads();

      const uint8_t* sa = smem + L::kA + s * L::kABytes;
      const uint8_t* sb = smem + L::kB + s * L::kBBytes;
      float part[kMT][kNT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) part[mt][nt][i] = 0.0f;

      // A warp without rows (its 32 rows all past the count) only loads and synchronizes.
      if (any_active) {
#pragma unroll
        for (int ks = 0; ks < kBK / 32; ++ks) {  // 32 k per step: two m16n8k16 halves h
          // Weight fragments of the warp's kNT column tiles: raw[nt][h] = W[g][32 ks + 16 h + 4t .. +3].
          uint32_t raw[kNT][2];
#pragma unroll
          for (int j = 0; j < kNT / 2; ++j) {
            const int row = wn * kWN + j * 16 + (lane & 7) + ((lane >> 4) << 3);
            const int chunk = ks * 2 + ((lane >> 3) & 1);
            uint32_t r[4];
            ldmatrix_x4(r, sb + swz128(row, chunk));
            raw[2 * j][0] = r[0];
            raw[2 * j][1] = r[1];
            raw[2 * j + 1][0] = r[2];
            raw[2 * j + 1][1] = r[3];
          }
          // fp8 x: the raw A fragments of the warp's row tiles (a[0] = X[g][4t..], a[1] =
          // X[g+8][4t..], a[2] = X[g][16+4t..], a[3] = X[g+8][16+4t..]), converted per half below.
          uint32_t araw[kMT][4];
          if constexpr (kFp8X) {
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              if (!active[mt]) continue;
              const int row = wm * kWM + mt * 16 + (lane & 15);
              const int chunk = ks * 2 + (lane >> 4);
              ldmatrix_x4(araw[mt], sa + swz128(row, chunk));
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            uint32_t bop[kNT][2];  // b0 = physical k 4t, 4t+1 of half h; b1 = 4t+2, 4t+3
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt) {
              bop[nt][0] = weight_pair<XT>(static_cast<uint16_t>(raw[nt][h] & 0xFFFFu));
              bop[nt][1] = weight_pair<XT>(static_cast<uint16_t>(raw[nt][h] >> 16));
            }
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              if (!active[mt]) continue;
              uint32_t aop[4];  // R0..R3 of the MMA under the k bijection
              if constexpr (kFp8X) {
                aop[0] = e4m3x2_to_f16x2(static_cast<uint16_t>(araw[mt][2 * h] & 0xFFFFu));      // X[g][4t, 4t+1]
                aop[1] = e4m3x2_to_f16x2(static_cast<uint16_t>(araw[mt][2 * h + 1] & 0xFFFFu));  // X[g+8][4t, 4t+1]
                aop[2] = e4m3x2_to_f16x2(static_cast<uint16_t>(araw[mt][2 * h] >> 16));          // X[g][4t+2, 4t+3]
                aop[3] = e4m3x2_to_f16x2(static_cast<uint16_t>(araw[mt][2 * h + 1] >> 16));      // X[g+8][4t+2, 4t+3]
              } else {
                // bf16 elements 32 ks + 16 h + 4t .. +3 = bytes 64 ks + 32 h + 8t: chunk 4 ks + 2 h + t/2.
                const int row = wm * kWM + mt * 16 + g;
                const int chunk = ks * 4 + h * 2 + (t >> 1), within = (t & 1) * 8;
                const uint2 lo = *reinterpret_cast<const uint2*>(sa + swz256(row, chunk) + within);
                const uint2 hi = *reinterpret_cast<const uint2*>(sa + swz256(row + 8, chunk) + within);
                aop[0] = lo.x;  // X[g][4t, 4t+1]
                aop[1] = hi.x;  // X[g+8][4t, 4t+1]
                aop[2] = lo.y;  // X[g][4t+2, 4t+3]
                aop[3] = hi.y;  // X[g+8][4t+2, 4t+3]
              }
#pragma unroll
              for (int nt = 0; nt < kNT; ++nt) mma16816<XT>(part[mt][nt], aop, bop[nt][0], bop[nt][1]);
            }
          }
        }
      }

      // Promotion of the block: acc += part * x_scale[row] * w_scale.
      const float ws = reinterpret_cast<const float*>(smem + L::kWs)[s];
      const float* sxs = reinterpret_cast<const float*>(smem + L::kXs) + s * kBM;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if (!active[mt]) continue;
        float s0 = ws, s1 = ws;
        if constexpr (kFp8X) {
          const int rl = wm * kWM + mt * 16 + g;
          s0 *= sxs[rl];
          s1 *= sxs[rl + 8];
        }
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          acc[mt][nt][0] = fmaf(part[mt][nt][0], s0, acc[mt][nt][0]);
          acc[mt][nt][1] = fmaf(part[mt][nt][1], s0, acc[mt][nt][1]);
          acc[mt][nt][2] = fmaf(part[mt][nt][2], s1, acc[mt][nt][2]);
          acc[mt][nt][3] = fmaf(part[mt][nt][3], s1, acc[mt][nt][3]);
        }
      }
      __syncthreads();  // everyone is done with buffer s before the next iteration refills it
    }

    YT* yg = y + static_cast<int64_t>(e) * max_m * n;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (!active[mt]) continue;
      const int row = m0 + wm * kWM + mt * 16 + g;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const int col = n0 + wn * kWN + nt * 8 + 2 * t;
        if (row < cnt) store2(yg + static_cast<int64_t>(row) * n + col, acc[mt][nt][0], acc[mt][nt][1]);
        if (row + 8 < cnt) store2(yg + static_cast<int64_t>(row + 8) * n + col, acc[mt][nt][2], acc[mt][nt][3]);
      }
    }
  }
}

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("grouped_gemm_masked_tc: " + msg); }

std::string describe(const Tensor& t) { return std::string(dtype_name(t.dtype())) + " " + shape_to_string(t.shape()); }

void need_device(const std::string& name, const Tensor& t) {
  if (!t.defined()) bad(name + " is undefined");
  if (t.device() != Device::kCuda) bad(name + " must be on the GPU");
  if (!t.is_contiguous()) bad(name + " " + describe(t) + " must be contiguous");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename XT, typename YT>
void launch(const Tensor& x, const Tensor& x_scales, const Tensor& counts, const Tensor& table, int groups, int max_m,
            int n, int k, Tensor& y) {
  auto kernel = masked_tc_kernel<XT, YT>;
  constexpr int bytes = Smem<XT>::kBytes;  // 49,672 (fp8 x) or 66,056 (bf16 x): above the 48 KiB default
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "cudaFuncSetAttribute(grouped_gemm_masked_tc)");
  const unsigned row_ctas = std::min<unsigned>(ceil_div(max_m, kBM), kRowCtas);
  const dim3 grid(static_cast<unsigned>(n / kBN), row_ctas, static_cast<unsigned>(groups));
  kernel<<<grid, kThreads, bytes, current_stream()>>>(
      static_cast<const XT*>(x.raw_data()), x_scales.defined() ? x_scales.data<float>() : nullptr,
      counts.data<int32_t>(), table.data<int64_t>(), groups, max_m, n, k, static_cast<YT*>(y.raw_data()));
}

}  // namespace

void grouped_gemm_masked_tc(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table,
                            Tensor& out, const Tensor& x_scales) {
  if (experts.empty()) bad("no experts");
  const Weight& w0 = experts.front();
  if (!w0.weight.defined() || w0.weight.dim() != 2) bad("expert weights must be 2-D [N, K]");
  const int64_t groups = static_cast<int64_t>(experts.size()), n = w0.rows(), k = w0.cols();
  if (w0.weight.dtype() != DType::kF8E4M3)
    bad("expert weights must be fp8 e4m3 with 128x128 block scales, got " + describe(w0.weight) +
        " (grouped_gemv_masked covers the others)");
  if (n <= 0 || k <= 0 || n % 128 != 0 || k % 128 != 0)
    bad("expert weights " + describe(w0.weight) + ": N and K must be positive multiples of 128");
  const Shape scale_shape = {n / 128, k / 128};
  for (size_t i = 0; i < experts.size(); ++i) {
    const Weight& w = experts[i];
    const std::string name = "expert " + std::to_string(i);
    need_device(name + " weight", w.weight);
    if (w.weight.dtype() != DType::kF8E4M3 || w.weight.shape() != w0.weight.shape())
      bad(name + " is " + describe(w.weight) + ", expert 0 is " + describe(w0.weight));
    need_device(name + " scale_inv", w.scale_inv);
    if (w.scale_inv.dtype() != DType::kF32 || w.scale_inv.shape() != scale_shape)
      bad(name + " scale_inv must be f32 " + shape_to_string(scale_shape) + ", got " + describe(w.scale_inv));
    if (!aligned16(w.weight.raw_data())) bad(name + " weight is not 16-byte aligned");
  }
  need_device("x", x);
  if (x.dim() != 3 || x.size(0) != groups || x.size(2) != k)
    bad("x " + describe(x) + " does not match " + std::to_string(groups) + " experts of in-features " + std::to_string(k));
  const int64_t max_m = x.size(1);
  if (x_scales.defined()) {
    if (x.dtype() != DType::kF8E4M3) bad("x with x_scales must be fp8 e4m3, got " + describe(x));
    need_device("x_scales", x_scales);
    const Shape want = {groups, k / 128, max_m};
    if (x_scales.dtype() != DType::kF32 || x_scales.shape() != want)
      bad("x_scales must be f32 " + shape_to_string(want) + ", got " + describe(x_scales));
  } else if (x.dtype() != DType::kBF16) {
    bad("x must be bf16, or fp8 e4m3 with x_scales; got " + describe(x));
  }
  if (!aligned16(x.raw_data())) bad("x is not 16-byte aligned");
  need_device("counts", counts);
  if (counts.dtype() != DType::kI32 || counts.shape() != Shape{groups})
    bad("counts must be i32 [" + std::to_string(groups) + "], got " + describe(counts));
  need_device("table", table);
  if (table.dtype() != DType::kI64 || table.shape() != Shape{2, groups})
    bad("table must be i64 [2, " + std::to_string(groups) + "] (expert_pointer_table), got " + describe(table));
  need_device("y", out);
  if (out.dtype() != DType::kF32 && out.dtype() != DType::kBF16) bad("y must be f32 or bf16, got " + describe(out));
  const Shape want_y = {groups, max_m, n};
  if (out.shape() != want_y) bad("y must be " + shape_to_string(want_y) + ", got " + describe(out));
  if (!aligned16(out.raw_data())) bad("y is not 16-byte aligned");
  if (groups > 65535) bad("at most 65535 experts");
  if (max_m > (int64_t{1} << 30) || k > (int64_t{1} << 30) || n > (int64_t{1} << 30)) bad("dimensions beyond 2^30");
  if (max_m == 0) return;

  const int g = static_cast<int>(groups), m = static_cast<int>(max_m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const bool f32_out = out.dtype() == DType::kF32;
  if (x.dtype() == DType::kF8E4M3) {
    if (f32_out)
      launch<fp8, float>(x, x_scales, counts, table, g, m, ni, ki, out);
    else
      launch<fp8, bf16>(x, x_scales, counts, table, g, m, ni, ki, out);
  } else {
    if (f32_out)
      launch<bf16, float>(x, x_scales, counts, table, g, m, ni, ki, out);
    else
      launch<bf16, bf16>(x, x_scales, counts, table, g, m, ni, ki, out);
  }
  check_launch("grouped_gemm_masked_tc");
}

}  // namespace pdserve::ops::cuda
