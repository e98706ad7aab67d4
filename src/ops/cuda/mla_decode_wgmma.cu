// MLA decode core on Hopper warpgroup MMA (wgmma), FlashMLA's division of work: the same contract
// as decode_core (mla_kernels.h), for sm_90a.
//
// One CTA per (64-head block, KV split, sequence), two warpgroups (256 threads). Shared memory
// holds the 64 absorbed queries (64 x 576 bf16), two 64-token KV tiles (cp.async double buffer,
// gathered row by row through the page table) and P (64 x 64 bf16), all in the 128-byte swizzled
// layout wgmma reads directly: nine [rows][64] blocks per 576-wide matrix.
//
// Per tile:
//   S = Q K^T      warpgroup g computes tokens 32g .. 32g+31 for all 64 heads (m64n32k16 x 36),
//                  so the operands go from shared memory to the tensor cores once, not once per
//                  warp through ldmatrix as in the mma.sync kernel;
//   softmax        row maxima of both halves exchanged through shared memory, P written as bf16;
//   O += P V       warpgroup g owns value columns 256g .. 256g+255 (m64n256k16 x 4, V read as an
//                  MN-major operand straight from the KV tile).
// Predicted (docs/perf/kernels.md): about 2x the mma.sync kernel for 256 x 2000 on an H200.
#include <cfloat>
#include <stdexcept>
#include <string>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_wgmma_tiles.cuh"

namespace pdserve::ops::cuda::mla {

namespace {

using namespace tiles;  // the geometry, Q and TMA tile loads and the output write both cores share
constexpr int kThreads = 256;
constexpr uint32_t kQOff = 0, kKvOff = kMatBytes, kPOff = 3 * kMatBytes, kRedOff = kPOff + kBlockBytes;
constexpr uint32_t kBarOff = kRedOff + 4 * kH * sizeof(float);  // two mbarriers (TMA tiles)
constexpr size_t kSmemBytes = kBarOff + 2 * sizeof(uint64_t) + 1024;  // + alignment slack
// Phases of a tile, all on in real use; the benchmark switches some off to see where time goes.
constexpr int kPhaseLoad = 1, kPhaseScores = 2, kPhaseValues = 4, kAllPhases = 7;

// Gathers KV tile `tile` of sequence b (rows past the end zero-filled) into the swizzled tile.
// Four threads per row, so each thread looks its row's page up once per tile (a dependent global
// load per chunk would put the table's latency in front of every copy); thread t copies chunks
// t % 4 + 4k of row t / 4.
__device__ __forceinline__ void load_kv_tile(uint8_t* dst, const DecodeCoreArgs& a, int b, int len, int tile, int tid) {
  static_assert(kThreads == 4 * kN && (kL / 8) % 4 == 0, "4 threads per row");
  const bf16* pool = static_cast<const bf16*>(a.pool);
  const int row = tid >> 2, c0 = tid & 3;
  const int pos = tile * kN + row;
  const bool valid = pos < len;
  const bf16* src = pool;
  if (valid) {
    const int page = a.page_table[b * a.page_table_stride + pos / a.page_size];
    src = pool + (int64_t(page) * a.page_size + pos % a.page_size) * kL;
  }
#pragma unroll
  for (int k = 0; k < kL / 32; ++k) {
    const int ci = c0 + 4 * k;
    cp_async16(dst + chunk_offset(row, ci), valid ? src + ci * 8 : src, valid);
  }
}

template <bool kTma>
__global__ void __launch_bounds__(kThreads, 1)
    decode_core_wgmma_kernel(const DecodeCoreArgs a, int v_lbo, int v_sbo, int phases, const __grid_constant__ CUtensorMap kv_map) {
  extern __shared__ uint8_t smem_raw[];
  // wgmma's swizzle works on absolute address bits: every block must start 1024-byte aligned.
  const uint32_t raw_addr = smem_addr(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  const uint32_t base = smem_addr(smem);
  float* red_max = reinterpret_cast<float*>(smem + kRedOff);  // [2][64]
  float* red_sum = red_max + 2 * kH;                           // [2][64]

  const int hb = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, q = lane & 3;
  const int h0 = hb * kH;
  const int len = a.seq_lens[b];
  const SplitTiles st = decode_split_tiles(a, b, split);
  const int t_begin = st.begin, t_end = st.end;
  if (t_begin >= t_end) {
    decode_write_empty_split<kThreads>(a, b, split, h0, tid);
    return;
  }

  // Q block (rows past the head count are zero: they score 0 and are never written out).
  load_q_block<kThreads>(smem + kQOff, a, b, h0, tid);
  const uint32_t bars = base + kBarOff;  // mbarrier of stage s at bars + 8 s
  if constexpr (kTma) {
    if (tid == 0) {
      tma::mbar_init(bars, 1);
      tma::mbar_init(bars + 8, 1);
      tma::fence_mbar_init();
    }
    __syncthreads();
    if (tid == 0) load_tma_tile(base + kKvOff, bars, &kv_map, a, b, t_begin);
  } else {
    load_kv_tile(smem + kKvOff, a, b, len, t_begin, tid);
  }
  cp_async_commit();

  const float scale_log2 = a.scale * kLog2e;
  const int row0 = warp * 16 + g;  // this thread's rows of S and O: row0 and row0 + 8
  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.0f, 0.0f};  // this thread's share of the row sums (its columns of its half)

  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) & 1;
    cp_async_wait<0>();
    if constexpr (kTma) {
      tma::mbar_wait(bars + 8 * stage, ((t - t_begin) >> 1) & 1);
      // A page holds stale (maybe NaN) rows past the sequence: zero them, or P = 0 times NaN in P V
      // would poison the output (the cp.async path zero-fills them instead of reading them).
      const int valid_rows = len - t * kN;
      if (valid_rows < kN) zero_stale_rows<kThreads>(smem + kKvOff + stage * kMatBytes, valid_rows, tid);
    }
    wgmma::fence_proxy_async();  // the tile's cp.async (or zeroing) writes, visible to the async proxy
    __syncthreads();             // ... of every thread; and every thread is done with tile t-1
    if (t + 1 < t_end && (phases & kPhaseLoad)) {
      if constexpr (kTma) {
        if (tid == 0) load_tma_tile(base + kKvOff + (stage ^ 1) * kMatBytes, bars + 8 * (stage ^ 1), &kv_map, a, b, t + 1);
      } else {
        load_kv_tile(smem + kKvOff + (stage ^ 1) * kMatBytes, a, b, len, t + 1, tid);
        cp_async_commit();
      }
    }
    const uint32_t kv = base + kKvOff + stage * kMatBytes;

    // ---- S = Q K^T: 64 heads x this warpgroup's 32 tokens ----
    float s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0.0f;
    if (phases & kPhaseScores) {
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kL / 16; ++kk) {
      const uint32_t koff = (kk >> 2) * kBlockBytes + (kk & 3) * 32;
      const uint64_t da = wgmma::make_desc(base + kQOff + koff, 16, 1024);
      const uint64_t db = wgmma::make_desc(kv + wg * 32 * 128 + koff, 16, 1024);
      wgmma::wgmma_m64n32k16_ss(s, da, db, kk > 0);
    }
    wgmma::commit();
    wgmma::wait<0>();
    }

    // ---- online softmax ----
    const bool tail = (t + 1) * kN > len;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int tok = t * kN + wg * 32 + (i >> 2) * 8 + 2 * q + (i & 1);
      s[i] = (tail && tok >= len) ? -INFINITY : s[i] * scale_log2;
      mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    }
    mx[0] = quad_max(mx[0]);
    mx[1] = quad_max(mx[1]);
    if (q == 0) {
      red_max[wg * kH + row0] = mx[0];
      red_max[wg * kH + row0 + 8] = mx[1];
    }
    __syncthreads();
    float alpha[2];
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int r = row0 + 8 * hi;
      const float m_new = fmaxf(m_run[hi], fmaxf(red_max[r], red_max[kH + r]));
      alpha[hi] = exp2f(m_run[hi] - m_new);
      m_run[hi] = m_new;
    }
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const __nv_bfloat162 pv =
            __floats2bfloat162_rn(exp2f(s[4 * j + 2 * hi] - m_run[hi]), exp2f(s[4 * j + 2 * hi + 1] - m_run[hi]));
        sum[hi] += __low2float(pv) + __high2float(pv);
        const int col = wg * 32 + j * 8 + 2 * q;
        *reinterpret_cast<__nv_bfloat162*>(smem + kPOff + wgmma::sw128_offset(row0 + 8 * hi, col)) = pv;
      }
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) l_run[hi] = l_run[hi] * alpha[hi] + sum[hi];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] *= alpha[(i >> 1) & 1];
    wgmma::fence_proxy_async();  // P's st.shared, visible to the async proxy
    __syncthreads();

    // ---- O += P V: this warpgroup's 256 value columns ----
    if (phases & kPhaseValues) {
    wgmma::fence();
#pragma unroll
    for (int ks = 0; ks < kN / 16; ++ks) {
      const uint64_t da = wgmma::make_desc(base + kPOff + ks * 32, 16, 1024);
      const uint64_t db = wgmma::make_desc(kv + wg * 4 * kBlockBytes + ks * 16 * 128, v_lbo, v_sbo);
      wgmma::wgmma_m64n256k16_ss_tb(o, da, db, 1);
    }
    wgmma::commit();
    wgmma::wait<0>();
    }
  }

  // ---- finish: row sums from both token halves, normalize, write ----
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const float l = quad_sum(l_run[hi]);
    if (q == 0) red_sum[wg * kH + row0 + 8 * hi] = l;
  }
  __syncthreads();
  write_output(
      a, o, b, split, h0, row0, wg, q, [&](int r) { return red_sum[r] + red_sum[kH + r]; },
      [&](int hi, int) { return m_run[hi]; });
}

}  // namespace

bool decode_core_wgmma_supported() {
  int dev = 0, major = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return false;
  return major == 9 && static_cast<size_t>(optin) >= kSmemBytes;
}

namespace {
template <bool kTma>
void launch_kernel(const DecodeCoreArgs& a, cudaStream_t stream, int lbo, int sbo, int phases, const CUtensorMap& map) {
  check(cudaFuncSetAttribute(decode_core_wgmma_kernel<kTma>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)),
        "cudaFuncSetAttribute(decode_core_wgmma)");
  const dim3 grid(ceil_div(a.heads, kH), a.num_splits, a.batch);
  decode_core_wgmma_kernel<kTma><<<grid, kThreads, kSmemBytes, stream>>>(a, lbo, sbo, phases, map);
  check_launch("mla decode_core_wgmma");
}

void launch(const DecodeCoreArgs& a, cudaStream_t stream, int v_desc_variant, int phases, bool pingpong) {
  if (a.batch <= 0) return;
  if (a.num_splits < 1 || (a.num_splits > 1 && (a.o_part == nullptr || a.lse_part == nullptr)) ||
      (a.num_splits == 1 && a.o_lat == nullptr))
    throw std::invalid_argument("mla decode_core_wgmma: bad split outputs");
  if (!decode_core_wgmma_supported())
    throw std::runtime_error("mla decode_core_wgmma needs an sm_90 GPU with " + std::to_string(kSmemBytes) +
                             " B of shared memory per block");
  // V is read MN-major: the leading offset steps between 64-column blocks (64 tokens x 128 B), the
  // stride offset between 8-token atoms. Variant 1 swaps them (kept for the layout probe test).
  const int lbo = v_desc_variant == 0 ? int(kBlockBytes) : 1024, sbo = v_desc_variant == 0 ? 1024 : int(kBlockBytes);
  // TMA tiles need whole 64-token tiles inside a page, the pool's size for the map, and every
  // phase on (the benchmark's phase switches run the cp.async path). With them the ping-pong
  // schedule (mla_decode_pingpong.cu) runs unless the caller asks for this file's one schedule.
  if (pingpong && phases == kAllPhases && decode_core_pingpong(a, stream, lbo, sbo, kAllPhases)) return;
  CUtensorMap map{};
  const bool tma = a.pool_pages > 0 && a.page_size % kN == 0 && phases == kAllPhases &&
                   tma::encode_bf16_2d_sw128(&map, a.pool, uint64_t(a.pool_pages) * a.page_size, kL, kL * sizeof(bf16), kN);
  if (tma) launch_kernel<true>(a, stream, lbo, sbo, phases, map);
  else launch_kernel<false>(a, stream, lbo, sbo, phases, map);
}
}  // namespace

void decode_core_wgmma(const DecodeCoreArgs& a, cudaStream_t stream, int v_desc_variant) {
  launch(a, stream, v_desc_variant, kAllPhases, true);
}

void decode_core_wgmma_one_schedule(const DecodeCoreArgs& a, cudaStream_t stream) {
  launch(a, stream, 0, kAllPhases, false);
}

void decode_core_wgmma_phases(const DecodeCoreArgs& a, cudaStream_t stream, int phases) {
  launch(a, stream, 0, phases, false);
}

void decode_core_pingpong_phases(const DecodeCoreArgs& a, cudaStream_t stream, int phases) {
  if (!decode_core_pingpong(a, stream, int(kBlockBytes), 1024, phases))
    throw std::invalid_argument("mla decode_core_pingpong_phases: the pool does not allow TMA tiles");
}

}  // namespace pdserve::ops::cuda::mla
