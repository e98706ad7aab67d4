// Batched GEMMs of MLA: the W_UK / W_UV absorptions of decode ([B, 128] x [128, 512] per head) and
// the kv_b expansion of prefill ([T, 512] x [512, H*256]). Written here rather than through
// cuBLAS because the operands come in mixed element types (f32 activations, bf16 or block-scaled
// fp8 weights) that are converted while loading, and the launches must stay graph-capturable
// without a handle or workspace.
//
// gemm_bf16: 128x128x32 tiles, 8 warps of 32x64, mma.sync m16n8k16 bf16 with f32 accumulation.
// Global loads go through registers (conversion to bf16 there) into a double-buffered swizzled
// shared tile. gemm_f32: a plain 64x64 SIMT tile, exact, for the f32 reference-accuracy path.
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

void gemm_f32(const Operand& a, const Operand& b, bool b_kn, const Output& c, int m, int n, int k, int batch,
              cudaStream_t stream) {
  if (b.type == Elem::kFP8 && batch != 1) throw std::invalid_argument("mla gemm_f32: fp8 B only unbatched");
  launch<false>(a, b, b_kn, c, m, n, k, batch, stream);
}

}  // namespace pdserve::ops::cuda::mla
