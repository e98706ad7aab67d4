// What the two Hopper MLA decode cores share (mla_decode_wgmma.cu: one schedule, cp.async or TMA
// tiles; mla_decode_pingpong.cu: the warpgroup ping-pong on TMA tiles): the tile geometry in the
// 128-byte swizzled layout wgmma reads, the Q block load, the TMA tile load, the zeroing of stale
// rows past a sequence's end, and the normalised output write. Included only from those files.
#pragma once

#include <cstdint>

#include "ops/cuda/mla_device.h"
#include "ops/cuda/mla_kernels.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace pdserve::ops::cuda::mla::tiles {

constexpr int kH = kDecodeHeadsPerCta, kN = kDecodeTokensPerTile, kL = kDecodeLatent, kV = kDecodeValue;
constexpr int kBlocks = kL / 64;                       // 9 swizzled [64 rows][64 bf16] blocks per 576-wide row
constexpr uint32_t kBlockBytes = 64u * 128u;
constexpr uint32_t kMatBytes = kBlocks * kBlockBytes;  // 73,728: Q or one KV tile
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kH == 64 && kN == 64 && kL == 576 && kV == 512, "the warpgroup split assumes DeepSeek's dims");

// 16-byte chunk `ci` (0..71) of matrix row `r` in the swizzled block layout.
__device__ __forceinline__ uint32_t chunk_offset(int r, int ci) {
  return uint32_t(ci >> 3) * kBlockBytes + wgmma::sw128_offset(r, (ci & 7) * 8);
}

// The 64 absorbed queries of sequence b from head h0 into the swizzled Q block at `dst`, by all
// kThreads threads with cp.async (not committed). Rows past the head count are zero: they score 0
// and are never written out.
template <int kThreads>
__device__ __forceinline__ void load_q_block(uint8_t* dst, const DecodeCoreArgs& a, int b, int h0, int tid) {
  const bf16* qg = static_cast<const bf16*>(a.q_abs);
  constexpr int kRowChunks = kL / 8;
  for (int i = tid; i < kH * kRowChunks; i += kThreads) {
    const int row = i / kRowChunks, ci = i - row * kRowChunks;
    const bool valid = h0 + row < a.heads;
    const bf16* src = qg + (int64_t(b) * a.heads + (valid ? h0 + row : 0)) * kL + ci * 8;
    cp_async16(dst + chunk_offset(row, ci), src, valid);
  }
}

// Tile `tile` of sequence b (page_size a multiple of 64): rows [page * page_size + (64 tile) %
// page_size, + 64) of the pool seen as a [tokens][576] matrix, loaded by one thread as nine 64x64
// boxes that land already swizzled, completing `bar` with the byte count.
__device__ __forceinline__ void load_tma_tile(uint32_t dst, uint32_t bar, const CUtensorMap* map, const DecodeCoreArgs& a,
                                              int b, int tile) {
  const int pos = tile * kN;
  const int page = a.page_table[b * a.page_table_stride + pos / a.page_size];
  const int row = page * a.page_size + pos % a.page_size;
  tma::mbar_arrive_expect_tx(bar, kMatBytes);
#pragma unroll
  for (int blk = 0; blk < kBlocks; ++blk) tma::load_2d(dst + blk * kBlockBytes, map, blk * 64, row, bar);
}

// A page holds stale (maybe NaN) rows past the sequence's end, which a TMA tile brings along; P = 0
// times NaN in P V would poison the output, so rows from `valid_rows` on are zeroed (by kThreads
// threads) before any warpgroup reads the tile.
template <int kThreads>
__device__ __forceinline__ void zero_stale_rows(uint8_t* tile, int valid_rows, int tid) {
  for (int i = tid; i < (kN - valid_rows) * (kL / 8); i += kThreads) {
    const int r = valid_rows + i / (kL / 8), ci = i % (kL / 8);
    *reinterpret_cast<uint4*>(tile + chunk_offset(r, ci)) = make_uint4(0, 0, 0, 0);
  }
}

// Writes this thread's share of O (rows row0 and row0 + 8 of the head block, value columns
// 256 wg + 8 j + 2 q), normalised by the row sum: into o_lat (one split) or o_part with the
// log2-sum-exp (splits). row_sum(r) and row_max(hi, r) give row r's sum and running maximum.
template <typename RowSum, typename RowMax>
__device__ __forceinline__ void write_output(const DecodeCoreArgs& a, const float (&o)[128], int b, int split, int h0,
                                             int row0, int wg, int q, RowSum row_sum, RowMax row_max) {
  const bool direct = a.num_splits == 1;
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int r = row0 + 8 * hi;
    const int h = h0 + r;
    if (h >= a.heads) continue;
    const float l = row_sum(r);
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
    if (!direct && wg == 0 && q == 0) a.lse_part[row] = row_max(hi, r) + log2f(l);
  }
}

}  // namespace pdserve::ops::cuda::mla::tiles
