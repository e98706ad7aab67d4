// Batched GEMMs of MLA: the W_UK / W_UV absorptions of decode ([B, 128] x [128, 512] per head) and
// the kv_b expansion of prefill ([T, 512] x [512, H*256]). Written here rather than through
// cuBLAS because the operands come in mixed element types (f32 activations, bf16 or block-scaled
// fp8 weights) that are converted while loading, and the launches must stay graph-capturable
// without a handle or workspace.
//
// gemm_bf16: 128x128x32 tiles, 8 warps of 32x64, mma.sync m16n8k16 bf16 with f32 accumulation.
// Global loads go through registers (conversion to bf16 there) into a double-buffered swizzled
// shared tile. gemm_f32: a plain 64x64 SIMT tile, exact, for the f32 reference-accuracy path.
//
// absorb_bmm_bf16: the decode absorptions when A, B and C are all bf16 (the GPU model's case). One
// CTA per (head, 128 output columns[, group of row tiles]) keeps its whole weight slice (k x 128,
// 32 KiB for W_UK, 128 KiB for W_UV) in shared memory and streams the activation rows through in
// 64 x 128 tiles (cp.async ring of 4-5 stages, crossing row-tile boundaries so the next tile's
// loads are in flight during this tile's epilogue); each finished 64 x 128 output tile goes
// through shared memory and leaves as whole 256-byte row pieces (16-byte stores). It can also
// copy the A columns after the first k into the C columns after the first n (q_pe -> q_abs), which
// saves decode a separate copy kernel. Same mma.sync m16n8k16 and the same k order as gemm_bf16,
// so the two give bit-identical results.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_device.h"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::ops::cuda::mla {

namespace {

template <typename TA, typename TB, typename TC>
struct GemmParams {
  const TA* a;
  int64_t a_bs, a_rs;
  const TB* b;
  int64_t b_bs, b_rs;
  const float* b_scale;
  int64_t b_ss;
  TC* c;
  int64_t c_bs, c_rs;
  int m, n, k;
};

template <typename T>
__device__ __forceinline__ constexpr bool is_fp8() {
  return sizeof(T) == 1;
}

constexpr int kBM = 128, kBN = 128, kBK = 32, kGemmThreads = 256;

// Element offset of chunk c of row r in a [rows][32] bf16 tile (4 chunks per row, two rows per
// 128-byte line: the XOR with (r >> 1) & 3 spreads 8 consecutive rows over 8 bank groups).
__device__ __forceinline__ int swz4(int r, int c) { return (r * 4 + (c ^ ((r >> 1) & 3))) * 8; }

template <typename T>
__device__ __forceinline__ constexpr bool is_bf16() {
  return sizeof(T) == 2;
}

// Tile loads: unit u (< 512) of a k-tile is 8 consecutive k of row u / 4 (A and an [n, k] B) or
// 8 consecutive n of k-row u / 16 (a [k, n] B), stored at the same swizzled place either way.
__device__ __forceinline__ int a_off(int u) { return swz4(u >> 2, u & 3); }
template <bool KN>
__device__ __forceinline__ int b_off(int u) {
  return KN ? swz(u >> 4, u & 15, 16) : swz4(u >> 2, u & 3);
}

// bf16 x bf16 runs a 3-stage cp.async pipeline (48 KiB of shared memory); other operand types
// are converted in registers, one k-tile ahead, into a double buffer.
template <typename TA, typename TB, typename TC, bool KN>
__global__ void __launch_bounds__(kGemmThreads) gemm_bf16_kernel(GemmParams<TA, TB, TC> p) {
  constexpr bool kAsync = is_bf16<TA>() && is_bf16<TB>();
  constexpr int kStages = kAsync ? 3 : 2;
  __shared__ __align__(128) bf16 s_a[kStages][kBM * kBK];
  __shared__ __align__(128) bf16 s_b[kStages][kBN * kBK];
  const int g = blockIdx.z, m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;  // 4 x 2 warps, each 32 rows x 64 cols
  const TA* a = p.a + g * p.a_bs;
  const TB* b = p.b + g * p.b_bs;

  // Global element offsets (and validity) of unit u of the k-tile starting at k0.
  auto a_src = [&](int u, int k0, bool& ok) {
    const int m = m0 + (u >> 2), k = k0 + (u & 3) * 8;
    ok = m < p.m && k < p.k;
    return ok ? m * p.a_rs + k : int64_t(0);
  };
  auto b_src = [&](int u, int k0, bool& ok, int& n, int& k) {
    if constexpr (KN) {
      k = k0 + (u >> 4), n = n0 + (u & 15) * 8;
      ok = k < p.k && n < p.n;
      return ok ? k * p.b_rs + n : int64_t(0);
    } else {
      n = n0 + (u >> 2), k = k0 + (u & 3) * 8;
      ok = n < p.n && k < p.k;
      return ok ? n * p.b_rs + k : int64_t(0);
    }
  };

  uint4 ra[2], rb[2];
  auto load_regs = [&](int k0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int u = tid + i * kGemmThreads;
      bool ok;
      const int64_t ao = a_src(u, k0, ok);
      ra[i] = ok ? load8_bf16(a + ao, 1.0f) : make_uint4(0, 0, 0, 0);
      int n, k;
      const int64_t bo = b_src(u, k0, ok, n, k);
      float scale = 1.0f;
      if constexpr (is_fp8<TB>())
        if (ok) scale = p.b_scale[(n >> 7) * p.b_ss + (k >> 7)];
      rb[i] = ok ? load8_bf16(b + bo, scale) : make_uint4(0, 0, 0, 0);
    }
  };
  auto store_smem = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int u = tid + i * kGemmThreads;
      *reinterpret_cast<uint4*>(&s_a[buf][a_off(u)]) = ra[i];
      *reinterpret_cast<uint4*>(&s_b[buf][b_off<KN>(u)]) = rb[i];
    }
  };
  auto load_async = [&](int k0, int buf) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int u = tid + i * kGemmThreads;
      bool ok;
      const int64_t ao = a_src(u, k0, ok);
      cp_async16(&s_a[buf][a_off(u)], a + ao, ok);
      int n, k;
      const int64_t bo = b_src(u, k0, ok, n, k);
      cp_async16(&s_b[buf][b_off<KN>(u)], b + bo, ok);
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  auto compute = [&](int buf) {
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t af[2][4], bfr[4][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        ldmatrix_x4(af[mt], &s_a[buf][swz4(wm * 32 + mt * 16 + (lane & 15), ks * 2 + (lane >> 4))]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (KN)
          ldmatrix_x4_trans(bfr[j], &s_b[buf][swz(ks * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                                  (wn * 64 + j * 16) / 8 + (lane >> 4), 16)]);
        else
          ldmatrix_x4(bfr[j], &s_b[buf][swz4(wn * 64 + j * 16 + (lane & 7) + ((lane >> 4) << 3),
                                             ks * 2 + ((lane >> 3) & 1))]);
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          mma_bf16(acc[mt][2 * j], af[mt], bfr[j][0], bfr[j][1]);
          mma_bf16(acc[mt][2 * j + 1], af[mt], bfr[j][2], bfr[j][3]);
        }
    }
  };

  const int ktiles = (p.k + kBK - 1) / kBK;
  if constexpr (kAsync) {
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
      if (st < ktiles) load_async(st * kBK, st);
      cp_async_commit();  // empty groups keep the wait count uniform
    }
    for (int kt = 0; kt < ktiles; ++kt) {
      cp_async_wait<kStages - 2>();
      __syncthreads();  // k-tile kt visible; everyone is done with the stage refilled below
      if (kt + kStages - 1 < ktiles) load_async((kt + kStages - 1) * kBK, (kt + kStages - 1) % kStages);
      cp_async_commit();
      compute(kt % kStages);
    }
  } else {
    load_regs(0);
    store_smem(0);
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
      const int buf = kt & 1;
      if (kt + 1 < ktiles) load_regs((kt + 1) * kBK);
      compute(buf);
      if (kt + 1 < ktiles) store_smem(buf ^ 1);
      __syncthreads();
    }
  }

  TC* c = p.c + g * p.c_bs;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int row = m0 + wm * 32 + mt * 16 + (lane >> 2);
      const int col = n0 + wn * 64 + nt * 8 + 2 * (lane & 3);
      if (col >= p.n) continue;
      if (row < p.m) store2(c + row * p.c_rs + col, acc[mt][nt][0], acc[mt][nt][1]);
      if (row + 8 < p.m) store2(c + (row + 8) * p.c_rs + col, acc[mt][nt][2], acc[mt][nt][3]);
    }
}

constexpr int kFT = 64, kFK = 16;

template <typename TA, typename TB, typename TC, bool KN>
__global__ void __launch_bounds__(256) gemm_f32_kernel(GemmParams<TA, TB, TC> p) {
  __shared__ float s_a[kFK][kFT + 1];
  __shared__ float s_b[kFK][kFT + 1];
  const int g = blockIdx.z, m0 = blockIdx.y * kFT, n0 = blockIdx.x * kFT;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const TA* a = p.a + g * p.a_bs;
  const TB* b = p.b + g * p.b_bs;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < p.k; k0 += kFK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = tid + i * 256, r = e / kFK, kk = e % kFK, k = k0 + kk;
      const int m = m0 + r, n = n0 + r;
      s_a[kk][r] = (m < p.m && k < p.k) ? to_f32(a[m * p.a_rs + k]) : 0.0f;
      float bv = 0.0f;
      if (n < p.n && k < p.k) {
        if constexpr (KN) {
          bv = to_f32(b[k * p.b_rs + n]);
        } else {
          bv = to_f32(b[n * p.b_rs + k]);
          if constexpr (is_fp8<TB>()) bv *= p.b_scale[(n >> 7) * p.b_ss + (k >> 7)];
        }
      }
      s_b[kk][r] = bv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kFK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = s_a[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = s_b[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
  TC* c = p.c + g * p.c_bs;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < p.m && n < p.n) c[m * p.c_rs + n] = from_f32<TC>(acc[i][j]);
    }
}

template <typename TA, typename TB, typename TC>
GemmParams<TA, TB, TC> make_params(const Operand& a, const Operand& b, const Output& c, int m, int n, int k) {
  return GemmParams<TA, TB, TC>{static_cast<const TA*>(a.ptr), a.batch_stride, a.row_stride,
                                static_cast<const TB*>(b.ptr), b.batch_stride, b.row_stride,
                                b.scale, b.scale_row_stride, static_cast<TC*>(c.ptr), c.batch_stride,
                                c.row_stride, m, n, k};
}

template <bool kTensorCores, typename TA, typename TB, typename TC>
void launch_typed(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
                  cudaStream_t stream) {
  const auto p = make_params<TA, TB, TC>(a, b, c, m, n, k);
  if constexpr (kTensorCores) {
    const dim3 grid(ceil_div(n, kBN), ceil_div(m, kBM), batch);
    if (b_kn) {
      if constexpr (sizeof(TB) == 1)
        throw std::invalid_argument("mla gemm: fp8 B operand must be [n, k]");
      else
        gemm_bf16_kernel<TA, TB, TC, true><<<grid, kGemmThreads, 0, stream>>>(p);
    } else {
      gemm_bf16_kernel<TA, TB, TC, false><<<grid, kGemmThreads, 0, stream>>>(p);
    }
  } else {
    const dim3 grid(ceil_div(n, kFT), ceil_div(m, kFT), batch);
    if (b_kn) {
      if constexpr (sizeof(TB) == 1)
        throw std::invalid_argument("mla gemm: fp8 B operand must be [n, k]");
      else
        gemm_f32_kernel<TA, TB, TC, true><<<grid, 256, 0, stream>>>(p);
    } else {
      gemm_f32_kernel<TA, TB, TC, false><<<grid, 256, 0, stream>>>(p);
    }
  }
  check_launch(kTensorCores ? "mla gemm_bf16" : "mla gemm_f32");
}

template <bool kTensorCores, typename TA, typename TB>
void launch_c(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
              cudaStream_t s) {
  switch (c.type) {
    case Elem::kF32: return launch_typed<kTensorCores, TA, TB, float>(a, b, b_kn, c, m, n, k, batch, s);
    case Elem::kBF16: return launch_typed<kTensorCores, TA, TB, bf16>(a, b, b_kn, c, m, n, k, batch, s);
    default: throw std::invalid_argument("mla gemm: output must be f32 or bf16");
  }
}

template <bool kTensorCores, typename TA>
void launch_b(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
              cudaStream_t s) {
  switch (b.type) {
    case Elem::kF32: return launch_c<kTensorCores, TA, float>(a, b, b_kn, c, m, n, k, batch, s);
    case Elem::kBF16: return launch_c<kTensorCores, TA, bf16>(a, b, b_kn, c, m, n, k, batch, s);
    case Elem::kFP8:
      if (b.scale == nullptr) throw std::invalid_argument("mla gemm: fp8 B operand needs block scales");
      return launch_c<kTensorCores, TA, fp8>(a, b, b_kn, c, m, n, k, batch, s);
  }
}

template <bool kTensorCores>
void launch(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
            cudaStream_t s) {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  if (k <= 0) throw std::invalid_argument("mla gemm: k must be positive");
  switch (a.type) {
    case Elem::kF32: return launch_b<kTensorCores, float>(a, b, b_kn, c, m, n, k, batch, s);
    case Elem::kBF16: return launch_b<kTensorCores, bf16>(a, b, b_kn, c, m, n, k, batch, s);
    default: throw std::invalid_argument("mla gemm: A operand must be f32 or bf16");
  }
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---- absorb_bmm_bf16 ------------------------------------------------------------------------------

namespace absorb {

constexpr int kBM = 64;         // rows (tokens) per output tile
constexpr int kBN = 128;        // output columns per CTA: its weight slice stays in shared memory
constexpr int kAK = 128;        // A columns (k) per pipeline step: one 64 x 128 tile, 16 KiB
constexpr int kThreads = 256;   // 8 warps, 2 (rows) x 4 (columns), each 32 x 32 of the tile
constexpr int kMaxK = 512;      // weight slice <= 128 KiB
constexpr int kMaxCopy = 2;     // 16-byte copy chunks per thread and row tile

constexpr size_t smem_bytes(int stages, int k) {
  return static_cast<size_t>(kBN * k + stages * kBM * kAK + kBM * kBN) * sizeof(bf16);
}

struct Params {
  const bf16* a;
  int64_t a_bs, a_rs;
  const bf16* b;
  int64_t b_bs, b_rs;
  bf16* c;
  int64_t c_bs, c_rs;
  int m, n, k;
  int tiles_per_cta;  // 64-row tiles per CTA; blockIdx.y picks the group
  int copy_chunks;    // 16-byte chunks of A after column k copied to C after column n (0: none)
};

// Shared memory: the weight slice (KN: k rows of 16 chunks = the CTA's 128 columns; NK: 128 rows
// of k / 8 chunks), kStages A tiles of 64 rows x 16 chunks, one 64 x 16-chunk output tile; every
// row XOR-swizzled on 16-byte chunks (swz), so ldmatrix, cp.async and the output staging are free
// of bank conflicts. Steps s = (row tile, 128-wide k piece) run through one cp.async ring: step s
// waits for its group, then issues step s + kStages - 1 into the stage step s - 1 used.
template <bool KN, int kStages>
__global__ void __launch_bounds__(kThreads, 2) absorb_kernel(Params p) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  bf16* s_b = reinterpret_cast<bf16*>(smem_raw);
  bf16* s_a = s_b + kBN * p.k;
  bf16* s_c = s_a + kStages * kBM * kAK;
  const int g = blockIdx.z, n0 = blockIdx.x * kBN;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int m_tiles = (p.m + kBM - 1) / kBM;
  const int tile0 = blockIdx.y * p.tiles_per_cta;
  const int tiles = min(p.tiles_per_cta, m_tiles - tile0);
  if (tiles <= 0) return;
  const int ksteps = p.k / kAK, steps = tiles * ksteps, kchunks = p.k / 8;
  const bf16* a = p.a + g * p.a_bs;
  const bf16* b = p.b + g * p.b_bs;
  bf16* c = p.c + g * p.c_bs;

  // The weight slice's k rows [128 kk, 128 kk + 128): 128 x 16 chunks, in the group of step kk
  // (the first row tile's), so the first MMAs wait for 32 KiB of it, not all of it.
  auto load_b = [&](int kk) {
#pragma unroll
    for (int i = 0; i < kBN * kAK / 8 / kThreads; ++i) {
      const int u = tid + i * kThreads;
      if constexpr (KN) {
        const int kr = kk * kAK + (u >> 4), ch = u & 15;
        cp_async16(&s_b[swz(kr, ch, 16)], b + kr * p.b_rs + n0 + ch * 8, true);
      } else {
        const int nr = u >> 4, ch = kk * (kAK / 8) + (u & 15);
        cp_async16(&s_b[swz(nr, ch, kchunks)], b + (n0 + nr) * p.b_rs + ch * 8, true);
      }
    }
  };
  auto load_a = [&](int step, int stage) {
    const int tq = step / ksteps, kk = step - tq * ksteps, m0 = (tile0 + tq) * kBM;
    if (step < ksteps) load_b(kk);
    bf16* dst = s_a + stage * kBM * kAK;
#pragma unroll
    for (int i = 0; i < kBM * kAK / 8 / kThreads; ++i) {
      const int u = tid + i * kThreads, r = u >> 4, ch = u & 15, m = m0 + r;
      const bool ok = m < p.m;  // rows past m read nothing and hold zeros
      cp_async16(&dst[swz(r, ch, 16)], ok ? a + m * p.a_rs + kk * kAK + ch * 8 : a, ok);
    }
  };

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  auto compute = [&](int stage, int kk) {
    const bf16* sa = s_a + stage * kBM * kAK;
#pragma unroll
    for (int ks = 0; ks < kAK / 16; ++ks) {
      uint32_t af[2][4], bfr[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        ldmatrix_x4(af[mt], &sa[swz(wm * 32 + mt * 16 + (lane & 15), ks * 2 + (lane >> 4), 16)]);
      const int kg = kk * kAK + ks * 16;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if constexpr (KN)
          ldmatrix_x4_trans(bfr[j], &s_b[swz(kg + (lane & 7) + (((lane >> 3) & 1) << 3),
                                             (wn * 32 + j * 16) / 8 + (lane >> 4), 16)]);
        else
          ldmatrix_x4(bfr[j], &s_b[swz(wn * 32 + j * 16 + (lane & 7) + ((lane >> 4) << 3),
                                       kg / 8 + ((lane >> 3) & 1), kchunks)]);
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          mma_bf16(acc[mt][2 * j], af[mt], bfr[j][0], bfr[j][1]);
          mma_bf16(acc[mt][2 * j + 1], af[mt], bfr[j][2], bfr[j][3]);
        }
    }
  };

  // The column copy: item i = (row r, chunk ch) of a row tile; this CTA (column block x) takes
  // items x * kThreads + tid + j * gridDim.x * kThreads. Loaded one row tile ahead (the load's
  // latency hides behind that tile's MMAs), stored after the tile's output.
  uint4 cpv[kMaxCopy] = {};
  auto copy_item = [&](int j, int t, int& m, int& ch) {
    const int i = (blockIdx.x + j * gridDim.x) * kThreads + tid;
    if (i >= kBM * p.copy_chunks) return false;
    const int r = i / p.copy_chunks;
    ch = i - r * p.copy_chunks;
    m = t * kBM + r;
    return m < p.m;
  };
  auto copy_load = [&](int t) {
#pragma unroll
    for (int j = 0; j < kMaxCopy; ++j) {
      int m, ch;
      if (copy_item(j, t, m, ch)) cpv[j] = *reinterpret_cast<const uint4*>(a + m * p.a_rs + p.k + ch * 8);
    }
  };
  auto copy_store = [&](int t) {
#pragma unroll
    for (int j = 0; j < kMaxCopy; ++j) {
      int m, ch;
      if (copy_item(j, t, m, ch)) *reinterpret_cast<uint4*>(c + m * p.c_rs + p.n + ch * 8) = cpv[j];
    }
  };

  load_a(0, 0);
  cp_async_commit();  // group j: step j (and the weight slice's k quarter j while j < ksteps)
#pragma unroll
  for (int st = 1; st < kStages - 1; ++st) {
    if (st < steps) load_a(st, st);
    cp_async_commit();  // empty groups keep the wait count uniform
  }
  if (p.copy_chunks > 0) copy_load(tile0);

  int kk = 0, t = tile0;
  for (int s = 0; s < steps; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // step s visible; everyone is done with the stage refilled below (step s - 1's)
    if (s + kStages - 1 < steps) load_a(s + kStages - 1, (s + kStages - 1) % kStages);
    cp_async_commit();
    compute(s % kStages, kk);
    if (++kk < ksteps) continue;
    kk = 0;
    // Row tile t done: accumulators -> bf16 output tile in shared memory -> 16-byte stores.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int r = wm * 32 + mt * 16 + (lane >> 2), col = wn * 32 + nt * 8 + 2 * (lane & 3);
        *reinterpret_cast<uint32_t*>(&s_c[swz(r, col >> 3, 16) + (col & 7)]) =
            pack_bf16(acc[mt][nt][0], acc[mt][nt][1]);
        *reinterpret_cast<uint32_t*>(&s_c[swz(r + 8, col >> 3, 16) + (col & 7)]) =
            pack_bf16(acc[mt][nt][2], acc[mt][nt][3]);
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
      }
    __syncthreads();  // the output tile is whole (the next write to it is behind the next step's barrier)
    const int m0 = t * kBM;
#pragma unroll
    for (int i = 0; i < kBM * kBN / 8 / kThreads; ++i) {
      const int u = tid + i * kThreads, r = u >> 4, ch = u & 15;
      const uint4 v = *reinterpret_cast<const uint4*>(&s_c[swz(r, ch, 16)]);
      if (m0 + r < p.m) *reinterpret_cast<uint4*>(c + (m0 + r) * p.c_rs + n0 + ch * 8) = v;
    }
    if (p.copy_chunks > 0) {
      copy_store(t);
      if (t + 1 < tile0 + tiles) copy_load(t + 1);
    }
    ++t;
  }
}

struct DeviceLimits {
  int sms = 0, smem_per_sm = 0, smem_optin = 0, smem_reserved = 0;
};

DeviceLimits device_limits() {
  DeviceLimits d;
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&d.smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev),
        "cudaDeviceGetAttribute");
  return d;
}

// The ring depth and CTAs per SM for a weight slice of k rows: two CTAs per SM where two fit (W_UK,
// k 128: 112 KiB each with 4 stages; one CTA's epilogue and MMAs then overlap the other's loads),
// else one CTA with the deepest ring that fits (W_UV, k 512: 224 KiB with 5 stages).
bool pick_config(const DeviceLimits& d, int k, int& stages, int& ctas_per_sm) {
  for (int st : {4, 3}) {
    const size_t bytes = smem_bytes(st, k);
    if (bytes <= static_cast<size_t>(d.smem_optin) &&
        2 * (bytes + d.smem_reserved) <= static_cast<size_t>(d.smem_per_sm)) {
      stages = st, ctas_per_sm = 2;
      return true;
    }
  }
  for (int st : {5, 4, 3}) {
    if (smem_bytes(st, k) <= static_cast<size_t>(d.smem_optin)) {
      stages = st, ctas_per_sm = 1;
      return true;
    }
  }
  return false;
}

template <bool KN, int kStages>
void launch(const Params& p, dim3 grid, cudaStream_t stream) {
  auto kernel = absorb_kernel<KN, kStages>;
  const int bytes = static_cast<int>(smem_bytes(kStages, p.k));
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "cudaFuncSetAttribute(mla absorb_bmm)");
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
        "cudaFuncSetAttribute(mla absorb_bmm)");
  kernel<<<grid, kThreads, bytes, stream>>>(p);
  check_launch("mla absorb_bmm_bf16");
}

}  // namespace absorb

}  // namespace

void gemm_bf16(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
               cudaStream_t stream) {
  // 8-element loads: k (and n for a [k, n] B) whole vectors, every row 16-byte aligned.
  const bool ok = k % 8 == 0 && n % 8 == 0 && a.row_stride % 8 == 0 && a.batch_stride % 8 == 0 &&
                  b.row_stride % 8 == 0 && b.batch_stride % 8 == 0 && c.row_stride % 2 == 0 &&
                  c.batch_stride % 2 == 0 && aligned(a.ptr, 16) && aligned(b.ptr, 16) && aligned(c.ptr, 8);
  if (!ok)
    throw std::invalid_argument("mla gemm_bf16: k = " + std::to_string(k) + ", n = " + std::to_string(n) +
                                " and all strides must be multiples of 8 elements with 16-byte aligned bases");
  if (b.type == Elem::kFP8 && batch != 1) throw std::invalid_argument("mla gemm_bf16: fp8 B only unbatched");
  launch<true>(a, b, b_kn, c, m, n, k, batch, stream);
}

bool absorb_bmm_bf16(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
                     int copy_cols, cudaStream_t stream) {
  namespace ab = absorb;
  if (a.type != Elem::kBF16 || b.type != Elem::kBF16 || c.type != Elem::kBF16) return false;
  if (n <= 0 || n % ab::kBN != 0 || k <= 0 || k % ab::kAK != 0 || k > ab::kMaxK || copy_cols < 0 ||
      copy_cols % 8 != 0)
    return false;
  const bool strides_ok = a.row_stride % 8 == 0 && a.batch_stride % 8 == 0 && b.row_stride % 8 == 0 &&
                          b.batch_stride % 8 == 0 && c.row_stride % 8 == 0 && c.batch_stride % 8 == 0;
  if (!strides_ok || !aligned(a.ptr, 16) || !aligned(b.ptr, 16) || !aligned(c.ptr, 16)) return false;
  if (m <= 0 || batch <= 0) return true;  // nothing to compute
  const int col_blocks = n / ab::kBN;
  if (ab::kBM * (copy_cols / 8) > ab::kMaxCopy * col_blocks * ab::kThreads) return false;
  const ab::DeviceLimits d = ab::device_limits();
  int stages = 0, ctas_per_sm = 0;
  if (!ab::pick_config(d, k, stages, ctas_per_sm)) return false;
  // Row tiles are split over CTAs only where (column blocks x heads) CTAs leave SMs idle (few heads).
  const int m_tiles = (m + ab::kBM - 1) / ab::kBM;
  const long long slots = static_cast<long long>(d.sms) * ctas_per_sm, base = static_cast<long long>(col_blocks) * batch;
  const int want = static_cast<int>(std::clamp<long long>(slots / base, 1, m_tiles));
  const int per = (m_tiles + want - 1) / want, groups = (m_tiles + per - 1) / per;
  const ab::Params p{static_cast<const bf16*>(a.ptr), a.batch_stride, a.row_stride,
                     static_cast<const bf16*>(b.ptr), b.batch_stride, b.row_stride,
                     static_cast<bf16*>(c.ptr),       c.batch_stride, c.row_stride,
                     m, n, k, per, copy_cols / 8};
  const dim3 grid(col_blocks, groups, batch);
  if (b_kn) {
    if (stages == 5) ab::launch<true, 5>(p, grid, stream);
    else if (stages == 4) ab::launch<true, 4>(p, grid, stream);
    else ab::launch<true, 3>(p, grid, stream);
  } else {
    if (stages == 5) ab::launch<false, 5>(p, grid, stream);
    else if (stages == 4) ab::launch<false, 4>(p, grid, stream);
    else ab::launch<false, 3>(p, grid, stream);
  }
  return true;
}

void gemm_f32(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
              cudaStream_t stream) {
  if (b.type == Elem::kFP8 && batch != 1) throw std::invalid_argument("mla gemm_f32: fp8 B only unbatched");
  launch<false>(a, b, b_kn, c, m, n, k, batch, stream);
}

}  // namespace pdserve::ops::cuda::mla
