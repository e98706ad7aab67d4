// MLA decode core on Hopper wgmma with TMA tiles and a ping-pong of the two warpgroups: the same
// contract as decode_core (mla_kernels.h), used by decode_core_wgmma when every 64-token tile is
// one contiguous piece of a page (page_size a multiple of 64, pool_pages set).
//
// Why a second schedule: in the one-schedule kernel (mla_decode_wgmma.cu) both warpgroups run S,
// softmax and P V of a tile one after the other behind block-wide barriers, so the tensor cores
// wait through every softmax, and S is an n32 MMA per warpgroup that reads Q from shared memory
// twice per tile. Here (FlashMLA's first division of work):
//
//   warpgroup 0: S = Q K^T over all 64 tokens (m64n64k16 x 36), online softmax, P (bf16) and the
//                rescale factors to shared memory, then O[:, :256] += P V[:, :256];
//   warpgroup 1: waits for P, rescales, O[:, 256:] += P V[:, 256:], and issues the TMA loads.
//
// Warpgroup 0 issues S of tile t+1 right behind its own P V of tile t, so warpgroup 1's P V of
// tile t runs on the tensor cores beside S of tile t+1. Two KV stages (Q, two tiles and P fill
// the 227 KB): tile t+2 goes into tile t's stage once both warpgroups' P V of t completed, which
// an mbarrier per stage ("empty", one arrival per warp) tells the loading thread.
//
// Synchronisation per tile: full[stage] (TMA bytes landed), named barrier kPReady (warpgroup 0
// arrives with P and the factors written, warpgroup 1 waits), kPFree (warpgroup 1 arrives when its
// P V no longer reads P, warpgroup 0 waits before writing the next P), kWg0 (warpgroup 0's own
// P writes, before its P V reads them).
#include <cfloat>
#include <stdexcept>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_wgmma_tiles.cuh"

namespace pdserve::ops::cuda::mla {

namespace {

using namespace tiles;  // the geometry, Q and TMA tile loads and the output write both cores share
constexpr int kThreads = 256;
constexpr uint32_t kQOff = 0, kKvOff = kMatBytes, kPOff = 3 * kMatBytes;
constexpr uint32_t kFloatOff = kPOff + kBlockBytes;          // alpha[64], l[64], m[64]
constexpr uint32_t kBarOff = kFloatOff + 3 * kH * sizeof(float);  // full[2], empty[2]
constexpr size_t kSmemBytes = kBarOff + 4 * sizeof(uint64_t) + 1024;  // + alignment slack
// Named barrier ids (0 is __syncthreads').
constexpr int kPReady = 1, kPFree = 2, kWg0 = 3;
// Phases of a tile, all on in real use; the benchmark switches some off (wrong results) to see
// where the time goes. Loads off: every tile reuses the first two tiles' bytes.
constexpr int kPhaseLoad = 1, kPhaseScores = 2, kPhaseValues = 4;
static_assert(kSmemBytes <= 232448, "Q, two KV stages and P must fit Hopper's 227 KB");

// O[:, 256 half .. +255] += P V over the tile at kv (4 x m64n256k16, V read MN-major), committed.
__device__ __forceinline__ void issue_pv(float (&o)[128], uint32_t p, uint32_t kv, int half, int v_lbo, int v_sbo) {
  wgmma::fence_operands(o);  // the rescale lands before the fence, not after it
  wgmma::fence();
#pragma unroll
  for (int ks = 0; ks < kN / 16; ++ks) {
    const uint64_t da = wgmma::make_desc(p + ks * 32, 16, 1024);
    const uint64_t db = wgmma::make_desc(kv + half * 4 * kBlockBytes + ks * 16 * 128, v_lbo, v_sbo);
    wgmma::wgmma_m64n256k16_ss_tb(o, da, db, 1);
  }
  wgmma::commit();
}

template <int kPhases>
__global__ void __launch_bounds__(kThreads, 1)
    decode_core_pingpong_kernel(const DecodeCoreArgs a, int v_lbo, int v_sbo, const __grid_constant__ CUtensorMap kv_map) {
  constexpr bool kLoads = (kPhases & kPhaseLoad) != 0, kValues = (kPhases & kPhaseValues) != 0;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);  // swizzle atoms: 1024-byte aligned
  const uint32_t base = smem_addr(smem);
  float* s_alpha = reinterpret_cast<float*>(smem + kFloatOff);
  float* s_l = s_alpha + kH;
  float* s_m = s_l + kH;
  const uint32_t full = base + kBarOff, empty = full + 16;  // stage s: full + 8 s, empty + 8 s

  const int hb = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, warp = (tid >> 5) & 3, lane = tid & 31;
  // Broadcast from lane 0 so the compiler knows the warpgroup branch is warp-uniform: otherwise
  // ptxas serialises every wgmma in it (C7520, "WG.AR in divergent path").
  const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);
  const int g = lane >> 2, q = lane & 3;
  const int h0 = hb * kH;
  const int len = a.seq_lens[b];
  const SplitTiles st = decode_split_tiles(a, b, split);
  const int n = st.end - st.begin;
  if (n <= 0) {
    decode_write_empty_split<kThreads>(a, b, split, h0, tid);
    return;
  }

  load_q_block<kThreads>(smem + kQOff, a, b, h0, tid);
  cp_async_commit();
  if (tid == 0) {
    tma::mbar_init(full, 1);
    tma::mbar_init(full + 8, 1);
    tma::mbar_init(empty, 8);  // one arrival per warp of both warpgroups
    tma::mbar_init(empty + 8, 8);
    tma::fence_mbar_init();
  }
  __syncthreads();
  if (tid == 0) {
    load_tma_tile(base + kKvOff, full, &kv_map, a, b, st.begin);
    if (n > 1) load_tma_tile(base + kKvOff + kMatBytes, full + 8, &kv_map, a, b, st.begin + 1);
  }
  cp_async_wait<0>();
  wgmma::fence_proxy_async();  // Q's cp.async writes, visible to wgmma
  __syncthreads();

  const int row0 = warp * 16 + g;  // this thread's rows of S and O: row0 and row0 + 8
  const uint32_t p_smem = base + kPOff;
  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;

  if (wg == 0) {
    const float scale_log2 = a.scale * kLog2e;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.0f, 0.0f};  // this thread's share of the row sums (its columns)
    for (int i = 0; i < n; ++i) {
      const int t = st.begin + i, stage = i & 1;
      const uint32_t kv = base + kKvOff + stage * kMatBytes;
      tma::mbar_wait(full + 8 * stage, kLoads ? (i >> 1) & 1 : 0);
      const int valid_rows = len - t * kN;
      if (valid_rows < kN) {
        zero_stale_rows<128>(smem + kKvOff + stage * kMatBytes, valid_rows, tid);  // warpgroup 0's threads
        wgmma::fence_proxy_async();
        wgmma::named_barrier(kWg0, 128);
      }

      // ---- S = Q K^T, 64 heads x 64 tokens; our P V of tile t-1 is still in flight ----
      float s[32];
#pragma unroll
      for (int k = 0; k < 32; ++k) s[k] = 0.0f;
      wgmma::fence_operands(s);
      wgmma::fence();
      if constexpr ((kPhases & kPhaseScores) != 0) {
#pragma unroll
        for (int kk = 0; kk < kL / 16; ++kk) {
          const uint32_t koff = (kk >> 2) * kBlockBytes + (kk & 3) * 32;
          wgmma::wgmma_m64n64k16_ss(s, wgmma::make_desc(base + kQOff + koff, 16, 1024),
                                    wgmma::make_desc(kv + koff, 16, 1024), kk > 0);
        }
      }
      wgmma::commit();
      if (i > 0) {
        wgmma::wait<1>();  // our P V of tile t-1 done: its stage is free on our side
        __syncwarp();
        if (lane == 0) tma::mbar_arrive(empty + 8 * (stage ^ 1));
      }
      wgmma::wait<0>();
      wgmma::fence_operands(s);
      wgmma::fence_operands(o);

      // ---- online softmax over the whole row (no exchange: this warpgroup holds all 64 tokens) ----
      const bool tail = valid_rows < kN;
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int k = 0; k < 32; ++k) {
        const int tok = t * kN + (k >> 2) * 8 + 2 * q + (k & 1);
        s[k] = (tail && tok >= len) ? -INFINITY : s[k] * scale_log2;
        mx[(k >> 1) & 1] = fmaxf(mx[(k >> 1) & 1], s[k]);
      }
      float alpha[2];
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const float m_new = fmaxf(m_run[hi], quad_max(mx[hi]));
        alpha[hi] = exp2f(m_run[hi] - m_new);
        m_run[hi] = m_new;
      }
      if (i > 0) wgmma::named_barrier(kPFree, 256);  // warpgroup 1 is done with P and alpha of t-1
      float sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const __nv_bfloat162 pv =
              __floats2bfloat162_rn(exp2f(s[4 * j + 2 * hi] - m_run[hi]), exp2f(s[4 * j + 2 * hi + 1] - m_run[hi]));
          sum[hi] += __low2float(pv) + __high2float(pv);
          *reinterpret_cast<__nv_bfloat162*>(smem + kPOff + wgmma::sw128_offset(row0 + 8 * hi, j * 8 + 2 * q)) = pv;
        }
      if (q == 0) {
        s_alpha[row0] = alpha[0];
        s_alpha[row0 + 8] = alpha[1];
      }
      wgmma::fence_proxy_async();  // P's st.shared, visible to both warpgroups' wgmma
      wgmma::named_arrive(kPReady, 256);
      wgmma::named_barrier(kWg0, 128);
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) l_run[hi] = l_run[hi] * alpha[hi] + sum[hi];
      // Once the row maxima settle most tiles leave them unchanged (alpha exactly 1): the warp
      // then skips its 128 multiplies, which sit between the softmax and P V on the critical path.
      if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
        for (int k = 0; k < 128; ++k) o[k] *= alpha[(k >> 1) & 1];
      }
      if constexpr (kValues) issue_pv(o, p_smem, kv, 0, v_lbo, v_sbo);
    }
    wgmma::wait<0>();
    wgmma::fence_operands(o);
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const float l = quad_sum(l_run[hi]);
      if (q == 0) {
        s_l[row0 + 8 * hi] = l;
        s_m[row0 + 8 * hi] = m_run[hi];
      }
    }
  } else {
    for (int i = 0; i < n; ++i) {
      const int stage = i & 1;
      const uint32_t kv = base + kKvOff + stage * kMatBytes;
      wgmma::named_barrier(kPReady, 256);
      tma::mbar_wait(full + 8 * stage, kLoads ? (i >> 1) & 1 : 0);  // the tile's bytes, seen here too
      const float alpha0 = s_alpha[row0], alpha1 = s_alpha[row0 + 8];
      if (!__all_sync(0xffffffffu, alpha0 == 1.0f && alpha1 == 1.0f)) {
#pragma unroll
        for (int k = 0; k < 128; ++k) o[k] *= ((k >> 1) & 1) ? alpha1 : alpha0;
      }
      if constexpr (kValues) issue_pv(o, p_smem, kv, 1, v_lbo, v_sbo);
      wgmma::wait<0>();
      wgmma::fence_operands(o);
      __syncwarp();
      if (lane == 0) tma::mbar_arrive(empty + 8 * stage);
      if (i + 1 < n) wgmma::named_arrive(kPFree, 256);
      if (kLoads && tid == 128 && i + 2 < n) {
        tma::mbar_wait(empty + 8 * stage, (i >> 1) & 1);  // warpgroup 0's P V of this tile done too
        load_tma_tile(kv, full + 8 * stage, &kv_map, a, b, st.begin + i + 2);
      }
      __syncwarp();  // reconverge before the next aligned barrier
    }
  }

  // ---- finish: normalise by the row sums, write ----
  __syncthreads();
  write_output(
      a, o, b, split, h0, row0, wg, q, [&](int r) { return s_l[r]; }, [&](int, int r) { return s_m[r]; });
}

}  // namespace

bool decode_core_pingpong(const DecodeCoreArgs& a, cudaStream_t stream, int v_lbo, int v_sbo, int phases) {
  if (a.pool_pages <= 0 || a.page_size % kN != 0) return false;
  CUtensorMap map{};
  if (!tma::encode_bf16_2d_sw128(&map, a.pool, uint64_t(a.pool_pages) * a.page_size, kL, kL * sizeof(bf16), kN))
    return false;
  const dim3 grid(ceil_div(a.heads, kH), a.num_splits, a.batch);
  auto run = [&](auto kernel) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)),
          "cudaFuncSetAttribute(decode_core_pingpong)");
    kernel<<<grid, kThreads, kSmemBytes, stream>>>(a, v_lbo, v_sbo, map);
  };
  // The phases are template arguments: a runtime switch costs the real kernel ~3% (measured).
  switch (phases) {
    case 7: run(decode_core_pingpong_kernel<7>); break;
    case 6: run(decode_core_pingpong_kernel<6>); break;
    case 5: run(decode_core_pingpong_kernel<5>); break;
    case 4: run(decode_core_pingpong_kernel<4>); break;
    case 3: run(decode_core_pingpong_kernel<3>); break;
    case 2: run(decode_core_pingpong_kernel<2>); break;
    case 1: run(decode_core_pingpong_kernel<1>); break;
    case 0: run(decode_core_pingpong_kernel<0>); break;
    default: throw std::invalid_argument("mla decode_core_pingpong: phases must be 0..7");
  }
  check_launch("mla decode_core_pingpong");
  return true;
}

}  // namespace pdserve::ops::cuda::mla
