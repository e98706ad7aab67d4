// grouped_gemm_masked_wgmma: the masked-layout expert GEMM of EP decode on Hopper's FP8 warpgroup
// MMA, with DeepSeek's 128-block scaling, and quantize_fp8_masked, which turns bf16 rows of the
// same layout into its fp8 input. Checked against the GEMV and a CPU emulation by
// tests/gpu/grouped_gemm_masked_wgmma_test.cpp; timed by bench/gpu/grouped_masked_bench.cu
// (docs/perf/kernels.md: 66-68% of the FP8 ceiling at 4 x 512 gate|up on an H100).
//
// Contract (grouped_gemv_masked's, ops/grouped_gemm.h): x fp8 e4m3 [G, max_m, K] with x_scales f32
// [G, K/128, max_m] (row r of expert g is x[g, r, c] * x_scales[g, c / 128, r], the low-latency
// dispatch's recv_x / recv_scales), counts i32 [G] on the device, expert g's weight fp8 e4m3 [N, K]
// with scale_inv f32 [N/128, K/128] (128 x 128 blocks), y f32 or bf16 [G, max_m, N]. For
// c = clamp(counts[g], 0, max_m): y[g, r] = x[g, r] @ W_g^T for r < c; rows r >= c of y are never
// written. Nothing is read back to the host, so the call is CUDA-graph capturable.
//
// Numerics (DeepSeek-V3 / DeepGEMM): per 128-wide K block kb the block's fp8 products accumulate
// on the tensor cores into an f32 fragment `part` (4 wgmma k32 steps), then, on the CUDA cores,
// acc = fma(part, x_scale[row][kb] * w_scale[n / 128][kb], acc). Hopper's fp8 wgmma keeps only
// ~13-14 mantissa bits while it accumulates (DeepSeek-V3 report §3.3.2), which is why the partial
// sums are promoted to f32 every 128 K: the error stays at the ~1e-4 relative level of one
// 128-long reduced-precision sum instead of growing with K.
//
// Design:
// - CTA = 384 threads: warps 0-3 and 4-7 are two consumer warpgroups (wgmma needs 4 aligned
//   warps), warps 8-11 the producer warpgroup, of which one lane issues every TMA load (a whole
//   warpgroup so that setmaxnreg can hand its registers to the consumers; ptxas budgets 168
//   registers a thread either way). A tile is 128 rows of one expert (consumer warpgroup w owns
//   rows 64w .. 64w+63) x kBN columns (128, or 256 as two 128-column halves; each half is one
//   128-row weight scale block, so a K block has one weight scale per half). K advances in
//   128-wide blocks (one scale block, one 128-byte swizzle span). Registers (ptxas -v): BN128 166,
//   BN256 168 at launch with setmaxnreg 40 (producer) / 232 (consumers); no spills.
// - Persistent: grid = min(#SMs, the static tile count); the CTA first reads the chunk's counts,
//   builds a prefix of the live row tiles per expert (ceil(c / 128)) in shared memory, and then
//   walks only LIVE tiles t = blockIdx.x, + gridDim.x, ...: tile t belongs to the expert e with
//   pre[e] <= t / n_tiles < pre[e+1] (binary search), and inside the expert the row tile varies
//   fastest (CTAs running side by side share the weight tile through L2). No weight of an expert
//   without rows is ever read and no CTA is spent on empty tiles (at T_cap 2048 with ~64 rows per
//   expert, 15 of 16 static tiles are empty).
// - Pipeline: kStages shared-memory stages of [x tile 128 x 128 B][weight tile kBN x 128 B], each
//   with a "full" mbarrier (TMA transaction bytes) and an "empty" mbarrier (one arrival per
//   consumer warp once its wgmmas on the stage completed). The producer runs ahead across tile
//   boundaries, so a tile's epilogue overlaps the next tile's loads. The second 64-row half of the
//   x tile is loaded only when it holds a row (the tile's count > m0 + 64); a consumer warpgroup
//   without rows in the tile skips its wgmmas but still takes part in the barriers.
// - Row scales and the weight scale are read from global memory (L2) by each consumer thread
//   before it waits on the stage, so their latency hides behind the wait and the MMAs.
// - Epilogue: straight from the accumulator fragment to y (f32 pairs or bf16x2), rows < c only.
//
// Why TMA with one tensor map per expert: the experts' weights are separate allocations, so one
// map cannot span them. The host encodes a 2-D map per expert weight (cached by address and shape:
// a map holds only the address, the shape and the box, so a cached one stays right even if the
// memory is freed and reused) and passes up to kMaxChunk of them BY VALUE in a __grid_constant__
// kernel parameter (8 KiB; CUDA 12.1+ allows 32 KiB of parameters): a captured graph keeps them,
// nothing is uploaded, and more experts run as several launches of kMaxChunk. x is one 3-D map
// [G][max_m][K]: boxes never cross into the next expert's rows (the row coordinate is bounded by
// max_m; TMA fills rows past it with zeros). cp.async was the alternative (16 copies per thread
// per stage from 128 threads); the MLA decode measured such gathers issue-bound (lg_throttle),
// TMA -17% there.
// What is read past the counts: a tile whose count ends inside a 64-row half loads that whole half
// of x, i.e. up to 63 stale rows of the same buffer below max_m (never past it). They only feed
// accumulator rows that are never stored (a wgmma output row depends on its own A row only), so
// stale data there, NaN included, cannot reach y; their scales are not read.
//
// Shared-memory layout and the wgmma descriptors (PTX ISA "Matrix Descriptor Format", "Shared
// memory matrix layout", K-major, 128-byte swizzle):
// - TMA with CU_TENSOR_MAP_SWIZZLE_128B writes a box of R rows x 128 bytes as row r at byte 128 r,
//   its 16-byte chunk c at chunk c ^ (r & 7): the XOR acts on address bits [4:6] ^= [7:9], so every
//   tile starts 1024-byte aligned (the dynamic shared memory is aligned up by hand).
// - wgmma's K-major SW128 canonical layout is the same thing: "atoms" of 8 rows x 128 bytes
//   (1024 B), rows 128 B apart, chunks XOR-swizzled by the row within the atom. Descriptor: start
//   address >> 4 (bits 0-13), leading byte offset >> 4 (bits 16-29: the distance between atoms
//   along K, unused here because one instruction's K never leaves the 128-byte span), stride byte
//   offset >> 4 (bits 32-45) = 1024, the distance between consecutive 8-row atoms along M (A) or
//   N (B), layout type 1 = 128-byte swizzle (bits 62-63), base offset 0 (atoms 1024-aligned).
//   make_desc(addr, 16, 1024) in wgmma.cuh, as the MLA kernels use it.
// - One fp8 k32 step is 32 bytes of every row (bf16's k16 step in the MLA kernels is 32 bytes
//   too): step kk of the 128-byte K block starts at tile + 32 kk. The hardware computes the
//   unswizzled address of row r, logical chunk 2kk + j (j = 0, 1) as tile + 128 r + 32 kk + 16 j
//   and XORs bits [4:6] with bits [7:9] = r & 7, giving chunk (2kk + j) ^ (r & 7): where TMA put it.
// - A (x) of consumer warpgroup w: the 64-row half at stage + 8192 w (M = 64 = 8 atoms). B (W) of
//   half h: the 128 rows at stage + 16384 + 16384 h (N = 128 = 16 atoms). Both K-major, as fp8
//   wgmma requires: x rows and W rows are K-contiguous, so y = x W^T is exactly "A row-major,
//   B column-major".
// - Accumulator fragment (m64nN f32): warp q of the warpgroup holds rows 16q .. 16q+15; with
//   g = lane / 4, t = lane % 4, register 4j + i is row 16q + g + 8 (i / 2), column 8j + 2t + i % 2.
// A pure-Python emulation (not in the repository) of the tile decode, the scale, descriptor and
// store indexing (with the swizzle model above, stale and zero-filled rows, BN 128 and 256, several
// launches) reproduced a plain W8A8 GEMM exactly, and a simulation of the full/empty mbarrier
// protocol (phase parities, producer running ahead, warps skipping their MMAs) under random
// interleavings never deadlocked or overwrote a stage in use.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/cuda/async_copy.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/quant.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace pdserve::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kBM = 128;          // rows of one expert per tile: two consumer warpgroups of 64
constexpr int kHalfM = 64;        // rows per consumer warpgroup (one wgmma M)
constexpr int kBK = 128;          // K per stage: one scale block, one 128-byte swizzle span
constexpr int kConsumerWarps = 8;
constexpr int kProducerWarp = 8;                      // lane 0 of warp 8 issues the loads
constexpr int kThreads = 32 * (kConsumerWarps + 4);  // 384: the producer is a whole warpgroup (setmaxnreg)
constexpr int kMaxChunk = 64;     // experts per launch (their tensor maps ride in the parameters)
constexpr int kHalfABytes = kHalfM * kBK;  // 8 KiB: one warpgroup's x rows of a stage
constexpr int kABytes = kBM * kBK;         // 16 KiB

template <int kBN>
struct Cfg {
  static_assert(kBN == 128 || kBN == 256, "column tiles of one or two 128-row weight scale blocks");
  static constexpr int kHalves = kBN / 128;
  static constexpr int kBBytes = kBN * kBK;  // 16 or 32 KiB
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kStages = kBN == 128 ? 6 : 4;  // 192 KiB of stages either way
  static constexpr int kBarOff = kStages * kStageBytes;
  static constexpr int kInfoOff = kBarOff + 2 * kStages * 8;               // counts, then the prefix
  static constexpr int kUsed = kInfoOff + (2 * kMaxChunk + 1) * 4;
  static constexpr int kSmemBytes = kUsed + 1024;                          // + alignment slack
  static_assert(kSmemBytes <= 232448, "must fit Hopper's 227 KiB of shared memory per block");
  static_assert(kStageBytes % 1024 == 0 && kABytes % 1024 == 0, "swizzle atoms stay 1024-byte aligned");
};

// The chunk's weight tensor maps, passed by value (a __grid_constant__ parameter).
struct WeightMaps {
  CUtensorMap w[kMaxChunk];
};

struct Args {
  const float* x_scales;  // [G, K/128, max_m]
  const int32_t* counts;  // [G]
  const int64_t* table;   // [2, G]: weight addresses, then scale_inv addresses
  void* y;                // [G, max_m, N]
  int groups;             // G (the table's row length)
  int e0, chunk;          // this launch: experts e0 .. e0 + chunk - 1
  int max_m, n, k;
};

// Box (c0 innermost, c1, c2) of a 3-D tensor map into shared memory at dst, completing on bar.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// Register reallocation between warpgroups (sm_90a): every warp of the warpgroup executes it.
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

__device__ __forceinline__ void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store2(bf16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

struct Tile {
  int e;       // expert inside the chunk
  int m0;      // first row
  int n_tile;  // column tile
  int cnt;     // the expert's clamped count
};

// Live tile t (0 <= t < pre[chunk] * n_tiles) -> expert, rows, columns. pre[e] = live row tiles of
// the chunk's experts before e; expert e owns tiles pre[e] * n_tiles .. pre[e+1] * n_tiles - 1,
// numbered n_tile * rows_e + row_tile (row tile fastest).
__device__ __forceinline__ Tile decode_tile(int t, int n_tiles, int chunk, const int* pre, const int* cnt) {
  const int q = t / n_tiles;  // pre[e] <= q < pre[e + 1] for the owning expert (which has a row tile)
  int lo = 0, hi = chunk;     // invariant: pre[lo] <= q < pre[hi] (pre[chunk] > q since t is live)
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (pre[mid] <= q)
      lo = mid;
    else
      hi = mid;
  }
  const int rows_e = pre[lo + 1] - pre[lo];
  const int local = t - pre[lo] * n_tiles;
  Tile tl;
  tl.e = lo;
  tl.n_tile = local / rows_e;
  tl.m0 = (local - tl.n_tile * rows_e) * kBM;
  tl.cnt = cnt[lo];
  return tl;
}

template <int kBN, typename YT>
__global__ void __launch_bounds__(kThreads, 1)
    masked_wgmma_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ WeightMaps wmaps, const Args a) {
  using C = Cfg<kBN>;
  constexpr int kHalves = C::kHalves;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);  // swizzle atoms: 1024-byte aligned
  const uint32_t base = raw_addr + ((1024u - (raw_addr & 1023u)) & 1023u);
  const uint32_t full = base + C::kBarOff, empty = full + 8 * C::kStages;  // stage s: + 8 s
  int* s_cnt = reinterpret_cast<int*>(smem + C::kInfoOff);                // [kMaxChunk]
  int* s_pre = s_cnt + kMaxChunk;                                         // [kMaxChunk + 1]

  const int tid = threadIdx.x, lane = tid & 31;
  // Broadcast from lane 0 so ptxas knows the role branch is warp-uniform (a branch it thinks
  // divergent around wgmma serialises every wgmma in it, C7520; see mla_decode_pingpong.cu).
  const int warp = __shfl_sync(0xffffffffu, tid >> 5, 0);
  const int n_tiles = a.n / kBN, kblocks = a.k / kBK;

  // ---- setup: the chunk's counts and the prefix of live row tiles (warp 0), the barriers ----
  if (warp == 0) {
    int c0 = 0, c1 = 0;
    if (lane < a.chunk) c0 = min(max(a.counts[a.e0 + lane], 0), a.max_m);
    if (lane + 32 < a.chunk) c1 = min(max(a.counts[a.e0 + lane + 32], 0), a.max_m);
    int s0 = (c0 + kBM - 1) / kBM, s1 = (c1 + kBM - 1) / kBM;  // c <= max_m <= 2^30: no overflow
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {  // inclusive scans of both halves
      const int u0 = __shfl_up_sync(0xffffffffu, s0, off), u1 = __shfl_up_sync(0xffffffffu, s1, off);
      if (lane >= off) {
        s0 += u0;
        s1 += u1;
      }
    }
    s1 += __shfl_sync(0xffffffffu, s0, 31);
    if (lane < a.chunk) {
      s_cnt[lane] = c0;
      s_pre[lane + 1] = s0;
    }
    if (lane + 32 < a.chunk) {
      s_cnt[lane + 32] = c1;
      s_pre[lane + 33] = s1;
    }
    if (lane == 0) s_pre[0] = 0;
  }
  if (tid == kProducerWarp * 32) {
    for (int s = 0; s < C::kStages; ++s) {
      tma::mbar_init(full + 8 * s, 1);                   // the producer's arrive.expect_tx
      tma::mbar_init(empty + 8 * s, kConsumerWarps);     // one arrival per consumer warp
    }
    tma::fence_mbar_init();
  }
  __syncthreads();
  const int total = s_pre[a.chunk] * n_tiles;  // live tiles (host checked the static count < 2^31)

  if (warp >= kProducerWarp) {
    // ---- producer: one lane walks the same tiles and K blocks as the consumers ----
    // With two column halves the consumers need 64 more accumulators: the producer warpgroup
    // hands registers over (168 each at launch; 40 + 2 x 232 per thread of the three warpgroups).
    if constexpr (kHalves == 2) setmaxnreg_dec<40>();
    if (warp == kProducerWarp && lane == 0) {
      uint32_t it = 0;  // K blocks issued so far: stage it % kStages, its use number it / kStages
      for (int t = blockIdx.x; t < total; t += gridDim.x) {
        const Tile tl = decode_tile(t, n_tiles, a.chunk, s_pre, s_cnt);
        const bool two_halves = tl.m0 + kHalfM < tl.cnt;  // rows in the tile's second 64-row half
        const uint32_t bytes = C::kBBytes + (two_halves ? 2 : 1) * kHalfABytes;
        const CUtensorMap* wmap = &wmaps.w[tl.e];
        const int ge = a.e0 + tl.e;
        for (int kb = 0; kb < kblocks; ++kb, ++it) {
          const uint32_t s = it % C::kStages, use = it / C::kStages;
          // Use u of a stage needs the consumers' release of use u - 1: completion u - 1 of
          // its empty barrier, the phase of parity (u - 1) & 1.
          if (use > 0) tma::mbar_wait(empty + 8 * s, (use - 1) & 1);
          const uint32_t fb = full + 8 * s, sa = base + s * C::kStageBytes, sb = sa + kABytes;
          tma::mbar_arrive_expect_tx(fb, bytes);
          tma::load_2d(sb, wmap, kb * kBK, tl.n_tile * kBN, fb);
          tma_load_3d(sa, &x_map, kb * kBK, tl.m0, ge, fb);
          if (two_halves) tma_load_3d(sa + kHalfABytes, &x_map, kb * kBK, tl.m0 + kHalfM, ge, fb);
        }
      }
    }
    return;
  }

  // ---- consumers: warpgroup wg computes rows m0 + 64 wg .. + 63 of each tile ----
  if constexpr (kHalves == 2) setmaxnreg_inc<232>();
  const int wg = warp >> 2, wq = warp & 3;  // warp-uniform (warp is)
  const int g = lane >> 2, tq = lane & 3;
  float acc[kHalves][64];
  float part[64];
  uint32_t it = 0;
  for (int t = blockIdx.x; t < total; t += gridDim.x) {
    const Tile tl = decode_tile(t, n_tiles, a.chunk, s_pre, s_cnt);
    const int ge = a.e0 + tl.e;
    const int row_base = tl.m0 + kHalfM * wg;
    const bool live = row_base < tl.cnt;  // uniform over the warpgroup
    const int r0 = row_base + 16 * wq + g, r1 = r0 + 8;
    const bool ok0 = r0 < tl.cnt, ok1 = r1 < tl.cnt;
    const float* xs = a.x_scales + static_cast<int64_t>(ge) * kblocks * a.max_m;  // [kb][row]
    const float* ws = reinterpret_cast<const float*>(a.table[a.groups + ge]) +
                      static_cast<int64_t>(tl.n_tile) * kHalves * kblocks;  // [n / 128][kb]
#pragma unroll
    for (int h = 0; h < kHalves; ++h)
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[h][i] = 0.0f;

    for (int kb = 0; kb < kblocks; ++kb, ++it) {
      const uint32_t s = it % C::kStages, use = it / C::kStages;
      const uint32_t sa = base + s * C::kStageBytes, sb = sa + kABytes;
      if (live) {
        // Scales first: their global latency runs under the barrier wait and the MMAs.
        const float x0 = ok0 ? xs[static_cast<int64_t>(kb) * a.max_m + r0] : 0.0f;
        const float x1 = ok1 ? xs[static_cast<int64_t>(kb) * a.max_m + r1] : 0.0f;
        float wsc[kHalves];
#pragma unroll
        for (int h = 0; h < kHalves; ++h) wsc[h] = ws[h * kblocks + kb];
        tma::mbar_wait(full + 8 * s, use & 1);
        __syncwarp();  // converged again after the spin loop, before the .aligned wgmma ops
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          wgmma::fence_operands(part);  // the previous promotion's reads of part stay before this
          wgmma::fence();
#pragma unroll
          for (int kk = 0; kk < kBK / 32; ++kk) {
            const uint64_t da = wgmma::make_desc(sa + kHalfABytes * wg + 32 * kk, 16, 1024);
            const uint64_t db = wgmma::make_desc(sb + 16384 * h + 32 * kk, 16, 1024);
            wgmma::wgmma_m64n128k32_e4m3_ss(part, da, db, kk > 0);
          }
          wgmma::commit();
          wgmma::wait<0>();
          wgmma::fence_operands(part);  // reads of part below stay after the wait
          if (h == kHalves - 1) {
            // This warp's wgmmas on the stage are complete: release it to the producer.
            __syncwarp();
            if (lane == 0) tma::mbar_arrive(empty + 8 * s);
          }
          // Promotion: acc += part * (x_scale[row] * w_scale).
          const float s0 = x0 * wsc[h], s1 = x1 * wsc[h];
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            acc[h][4 * j + 0] = fmaf(part[4 * j + 0], s0, acc[h][4 * j + 0]);
            acc[h][4 * j + 1] = fmaf(part[4 * j + 1], s0, acc[h][4 * j + 1]);
            acc[h][4 * j + 2] = fmaf(part[4 * j + 2], s1, acc[h][4 * j + 2]);
            acc[h][4 * j + 3] = fmaf(part[4 * j + 3], s1, acc[h][4 * j + 3]);
          }
        }
      } else {
        // No rows of this warpgroup in the tile: nothing to multiply, but the stage still needs
        // this warp's release (the other warpgroup may be using it).
        tma::mbar_wait(full + 8 * s, use & 1);
        __syncwarp();
        if (lane == 0) tma::mbar_arrive(empty + 8 * s);
      }
    }

    if (live) {
      YT* yg = static_cast<YT*>(a.y) + static_cast<int64_t>(ge) * a.max_m * a.n;
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        const int col0 = tl.n_tile * kBN + 128 * h + 2 * tq;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const int col = col0 + 8 * j;
          if (ok0) store2(yg + static_cast<int64_t>(r0) * a.n + col, acc[h][4 * j + 0], acc[h][4 * j + 1]);
          if (ok1) store2(yg + static_cast<int64_t>(r1) * a.n + col, acc[h][4 * j + 2], acc[h][4 * j + 3]);
        }
      }
    }
  }
}


// ---- host side ----

[[noreturn]] void bad(const char* op, const std::string& msg) { throw std::invalid_argument(std::string(op) + ": " + msg); }

std::string describe(const Tensor& t) { return std::string(dtype_name(t.dtype())) + " " + shape_to_string(t.shape()); }

void need_device(const char* op, const std::string& name, const Tensor& t) {
  if (!t.defined()) bad(op, name + " is undefined");
  if (t.device() != Device::kCuda) bad(op, name + " must be on the GPU");
  if (!t.is_contiguous()) bad(op, name + " " + describe(t) + " must be contiguous");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A byte tensor of `rank` dimensions (dims innermost first, strides in bytes of dims 1..rank-1)
// read in boxes whose innermost side is 128 bytes, with the 128-byte swizzle; zeros outside.
void encode_u8_sw128(CUtensorMap* map, const void* base, uint32_t rank, const cuuint64_t* dims, const cuuint64_t* strides,
                     const cuuint32_t* box, const char* what) {
  const int r = tma::encode_u8_sw128(map, base, rank, dims, strides, box);
  if (r == -1) throw std::runtime_error("grouped_gemm_masked_wgmma: the driver has no cuTensorMapEncodeTiled");
  if (r != 0)
    throw std::runtime_error(std::string("grouped_gemm_masked_wgmma: cuTensorMapEncodeTiled refused the ") + what +
                             " map (error " + std::to_string(r) + ")");
}

// The weight map of one expert ([n][k] bytes, boxes of block_n rows x 128), cached: encoding is a
// host call per expert, and a map depends only on (address, n, k, block_n).
CUtensorMap weight_map(const void* w, int64_t n, int64_t k, int block_n) {
  static std::mutex mu;
  static std::map<std::tuple<uintptr_t, int64_t, int64_t, int>, CUtensorMap> cache;
  const auto key = std::make_tuple(reinterpret_cast<uintptr_t>(w), n, k, block_n);
  std::lock_guard<std::mutex> lock(mu);
  const auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  CUtensorMap m{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(n)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBK), static_cast<cuuint32_t>(block_n)};
  encode_u8_sw128(&m, w, 2, dims, strides, box, "weight");
  if (cache.size() >= 4096) cache.clear();  // bounded; entries are cheap to rebuild
  cache.emplace(key, m);
  return m;
}

constexpr const char* kGemmOp = "grouped_gemm_masked_wgmma";

template <int kBN, typename YT>
void launch_gemm(const Tensor& x, const Tensor& x_scales, const Tensor& counts, const std::vector<Weight>& experts,
                 const Tensor& table, Tensor& y, int64_t groups, int64_t max_m, int64_t n, int64_t k) {
  using C = Cfg<kBN>;
  auto kernel = masked_wgmma_kernel<kBN, YT>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes),
        "cudaFuncSetAttribute(grouped_gemm_masked_wgmma)");
  CUtensorMap x_map{};
  {
    const cuuint64_t dims[3] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(max_m), static_cast<cuuint64_t>(groups)};
    const cuuint64_t strides[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(max_m * k)};
    const cuuint32_t box[3] = {static_cast<cuuint32_t>(kBK), static_cast<cuuint32_t>(kHalfM), 1};
    encode_u8_sw128(&x_map, x.raw_data(), 3, dims, strides, box, "x");
  }
  const int sms = sm_count();
  const int64_t row_tiles = (max_m + kBM - 1) / kBM, n_tiles = n / kBN;
  for (int64_t e0 = 0; e0 < groups; e0 += kMaxChunk) {
    const int64_t chunk = std::min<int64_t>(kMaxChunk, groups - e0);
    WeightMaps maps;
    for (int64_t e = 0; e < chunk; ++e) maps.w[e] = weight_map(experts[static_cast<size_t>(e0 + e)].weight.raw_data(), n, k, kBN);
    for (int64_t e = chunk; e < kMaxChunk; ++e) maps.w[e] = maps.w[0];  // never read
    Args a{};
    a.x_scales = x_scales.data<float>();
    a.counts = counts.data<int32_t>();
    a.table = table.data<int64_t>();
    a.y = y.raw_data();
    a.groups = static_cast<int>(groups);
    a.e0 = static_cast<int>(e0);
    a.chunk = static_cast<int>(chunk);
    a.max_m = static_cast<int>(max_m);
    a.n = static_cast<int>(n);
    a.k = static_cast<int>(k);
    const int64_t static_tiles = chunk * row_tiles * n_tiles;  // < 2^31, checked by the caller
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(sms, static_tiles));
    kernel<<<grid, kThreads, C::kSmemBytes, current_stream()>>>(x_map, maps, a);
    check_launch(kGemmOp);
  }
}

void gemm_checked(const Tensor& x, const Tensor& x_scales, const Tensor& counts, const std::vector<Weight>& experts,
                  const Tensor& table, Tensor& y, int block_n) {
  const char* op = kGemmOp;
  if (block_n != 128 && block_n != 256) bad(op, "block_n must be 128 or 256, got " + std::to_string(block_n));
  if (experts.empty()) bad(op, "no experts");
  const Weight& w0 = experts.front();
  if (!w0.weight.defined() || w0.weight.dim() != 2) bad(op, "expert weights must be 2-D [N, K]");
  const int64_t groups = static_cast<int64_t>(experts.size()), n = w0.rows(), k = w0.cols();
  if (w0.weight.dtype() != DType::kF8E4M3)
    bad(op, "expert weights must be fp8 e4m3 with 128x128 block scales, got " + describe(w0.weight) +
                " (grouped_gemv_masked covers the others)");
  if (n <= 0 || k <= 0 || n % 128 != 0 || k % 128 != 0)
    bad(op, "expert weights " + describe(w0.weight) + ": N and K must be positive multiples of 128");
  if (n % block_n != 0) bad(op, "N = " + std::to_string(n) + " is not a multiple of the column tile " + std::to_string(block_n));
  const Shape scale_shape = {n / 128, k / 128};
  for (size_t i = 0; i < experts.size(); ++i) {
    const Weight& w = experts[i];
    const std::string name = "expert " + std::to_string(i);
    need_device(op, name + " weight", w.weight);
    if (w.weight.dtype() != DType::kF8E4M3 || w.weight.shape() != w0.weight.shape())
      bad(op, name + " is " + describe(w.weight) + ", expert 0 is " + describe(w0.weight));
    need_device(op, name + " scale_inv", w.scale_inv);
    if (w.scale_inv.dtype() != DType::kF32 || w.scale_inv.shape() != scale_shape)
      bad(op, name + " scale_inv must be f32 " + shape_to_string(scale_shape) + ", got " + describe(w.scale_inv));
    if (!aligned16(w.weight.raw_data())) bad(op, name + " weight is not 16-byte aligned (TMA)");
  }
  need_device(op, "x", x);
  if (x.dtype() != DType::kF8E4M3) bad(op, "x must be fp8 e4m3 (quantize_fp8_masked makes it from bf16), got " + describe(x));
  if (x.dim() != 3 || x.size(0) != groups || x.size(2) != k)
    bad(op, "x " + describe(x) + " does not match " + std::to_string(groups) + " experts of in-features " + std::to_string(k));
  const int64_t max_m = x.size(1);
  if (!aligned16(x.raw_data())) bad(op, "x is not 16-byte aligned (TMA)");
  need_device(op, "x_scales", x_scales);
  const Shape want_s = {groups, k / 128, max_m};
  if (x_scales.dtype() != DType::kF32 || x_scales.shape() != want_s)
    bad(op, "x_scales must be f32 " + shape_to_string(want_s) + ", got " + describe(x_scales));
  need_device(op, "counts", counts);
  if (counts.dtype() != DType::kI32 || counts.shape() != Shape{groups})
    bad(op, "counts must be i32 [" + std::to_string(groups) + "], got " + describe(counts));
  need_device(op, "table", table);
  if (table.dtype() != DType::kI64 || table.shape() != Shape{2, groups})
    bad(op, "table must be i64 [2, " + std::to_string(groups) + "] (expert_pointer_table), got " + describe(table));
  need_device(op, "y", y);
  if (y.dtype() != DType::kF32 && y.dtype() != DType::kBF16) bad(op, "y must be f32 or bf16, got " + describe(y));
  const Shape want_y = {groups, max_m, n};
  if (y.shape() != want_y) bad(op, "y must be " + shape_to_string(want_y) + ", got " + describe(y));
  if (!aligned16(y.raw_data())) bad(op, "y is not 16-byte aligned");
  if (max_m > (int64_t{1} << 30) || k > (int64_t{1} << 30) || n > (int64_t{1} << 30) || groups > (int64_t{1} << 30))
    bad(op, "dimensions beyond 2^30");
  if (std::min<int64_t>(groups, kMaxChunk) * ((max_m + kBM - 1) / kBM) * (n / block_n) >= (int64_t{1} << 31))
    bad(op, "too many tiles for one launch");
  if (max_m == 0) return;

  const bool f32_out = y.dtype() == DType::kF32;
  if (block_n == 128) {
    if (f32_out)
      launch_gemm<128, float>(x, x_scales, counts, experts, table, y, groups, max_m, n, k);
    else
      launch_gemm<128, bf16>(x, x_scales, counts, experts, table, y, groups, max_m, n, k);
  } else {
    if (f32_out)
      launch_gemm<256, float>(x, x_scales, counts, experts, table, y, groups, max_m, n, k);
    else
      launch_gemm<256, bf16>(x, x_scales, counts, experts, table, y, groups, max_m, n, k);
  }
}

}  // namespace

void grouped_gemm_masked_wgmma(const Tensor& x, const Tensor& x_scales, const Tensor& counts,
                               const std::vector<Weight>& experts, const Tensor& table, Tensor& y) {
  // 256-column tiles where N allows: on an H100 (2026-12-05, grouped_masked_bench) they took 140 us
  // against 181 for V3's fused gate|up at 4 x 512 rows and 359 against 429 at 32 x 64; the down
  // projection was even (95 against 93 us, 199 against 209).
  const int64_t n = experts.empty() || !experts.front().weight.defined() ? 0 : experts.front().rows();
  gemm_checked(x, x_scales, counts, experts, table, y, n > 0 && n % 256 == 0 ? 256 : 128);
}

namespace detail {
void grouped_gemm_masked_wgmma_bn(const Tensor& x, const Tensor& x_scales, const Tensor& counts,
                                  const std::vector<Weight>& experts, const Tensor& table, Tensor& y, int block_n) {
  gemm_checked(x, x_scales, counts, experts, table, y, block_n);
}
}  // namespace detail

void quantize_fp8_masked(const Tensor& x, const Tensor& counts, Tensor& q, Tensor& scales) {
  constexpr const char* op = "quantize_fp8_masked";
  need_device(op, "x", x);
  if (x.dtype() != DType::kBF16 || x.dim() != 3) bad(op, "x must be bf16 [G, max_m, K], got " + describe(x));
  const int64_t groups = x.size(0), max_m = x.size(1), k = x.size(2);
  if (k <= 0 || k % 128 != 0) bad(op, "K = " + std::to_string(k) + " must be a positive multiple of 128");
  if (!aligned16(x.raw_data())) bad(op, "x is not 16-byte aligned");
  need_device(op, "counts", counts);
  if (counts.dtype() != DType::kI32 || counts.shape() != Shape{groups})
    bad(op, "counts must be i32 [" + std::to_string(groups) + "], got " + describe(counts));
  need_device(op, "q", q);
  if (q.dtype() != DType::kF8E4M3 || q.shape() != x.shape())
    bad(op, "q must be fp8 e4m3 " + shape_to_string(x.shape()) + ", got " + describe(q));
  if (reinterpret_cast<uintptr_t>(q.raw_data()) % 8 != 0) bad(op, "q is not 8-byte aligned");
  need_device(op, "scales", scales);
  const Shape want_s = {groups, k / 128, max_m};
  if (scales.dtype() != DType::kF32 || scales.shape() != want_s)
    bad(op, "scales must be f32 " + shape_to_string(want_s) + ", got " + describe(scales));
  if (groups > 65535) bad(op, "at most 65535 experts");
  if (max_m > (int64_t{1} << 30) || k > (int64_t{1} << 30)) bad(op, "dimensions beyond 2^30");
  if (max_m == 0 || groups == 0) return;
  // cuda/quant.cu's quantizer in its count-following mode: rows past the counts are neither read
  // nor written (the GEMM never reads them), scales [G][K/128][max_m] as the GEMM takes them.
  detail::QuantJob j;
  j.x = x.raw_data();
  j.x_dtype = DType::kBF16;
  j.x_group_stride = max_m * k;
  j.k = k;
  j.rows = max_m;
  j.counts = counts.data<int32_t>();
  j.rows_padded = max_m;
  j.split = max_m;
  j.q = q.data<uint8_t>();
  j.q_group_stride = max_m * k;
  j.s = scales.data<float>();
  j.s_group_stride = (k / 128) * max_m;
  j.groups = groups;
  j.skip_rows_past_counts = true;
  detail::launch_quantize(j, current_stream());
}

}  // namespace pdserve::ops::cuda
