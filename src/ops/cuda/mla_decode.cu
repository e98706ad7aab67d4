// MLA decode attention in the absorbed form (model-spec §3): MQA with 576-dim keys (latent c and
// k_pe) and 512-dim values (c itself) shared by all query heads.
//
// decode_core: one CTA per (64-head block, KV split, sequence), 8 warps. The 64 absorbed queries
// (64 x 576 bf16) stay in shared memory; KV tiles of 64 tokens stream in through a two-stage
// cp.async pipeline, gathered row by row through the page table, and each tile serves all 64 heads
// (the two head blocks of a 128-head sequence run side by side, so the second read hits L2).
// Per tile: S = Q K^T (each warp a 16-head x 32-token slice), online softmax with the row maxima
// exchanged through shared memory, P (bf16) written to shared memory, then O += P V with each warp
// owning 64 of the 512 value columns for all 64 heads (128 f32 accumulators per thread).
// Splits write normalized partial outputs and their log2-sum-exp; decode_combine merges them.
//
// decode_generic: exact f32 on CUDA cores for any latent size and a f32 or bf16 pool; one block
// per (head, sequence), tokens in chunks with the same online softmax. Used for f32 caches and
// dims the tensor-core kernel does not cover.
#include <cfloat>
#include <stdexcept>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_device.h"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::ops::cuda::mla {

namespace {

constexpr int kH = kDecodeHeadsPerCta, kN = kDecodeTokensPerTile, kL = kDecodeLatent, kV = kDecodeValue;
constexpr int kThreads = 256;
constexpr int kChunks = kL / 8;  // 72 chunks of 16 bytes per 576-element row
constexpr int kPChunks = kN / 8;
constexpr size_t kQBytes = size_t(kH) * kL * 2, kKvBytes = size_t(kN) * kL * 2, kPBytes = size_t(kH) * kN * 2;
constexpr size_t kSmemBytes = kQBytes + 2 * kKvBytes + kPBytes + 4 * kH * sizeof(float);
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kL % 64 == 0 && kV % 64 == 0, "rows must be whole swizzle groups");

// Gathers KV tile `tile` (tokens tile*64 .. +63 of sequence `b`) into a swizzled shared tile.
// Thread t copies row t / 4, chunks t % 4 + 4k: one page-table lookup per thread and tile, and each
// warp instruction reads 8 rows x 64 contiguous bytes. Tokens past the sequence end are zero-filled
// (their scores are masked anyway).
__device__ __forceinline__ void load_kv_tile(bf16* dst, const DecodeCoreArgs& a, int b, int len, int tile, int tid) {
  static_assert(kThreads == 4 * kN && kChunks % 4 == 0, "4 threads per row");
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
  for (int k = 0; k < kChunks / 4; ++k) {
    const int c = c0 + 4 * k;
    cp_async16(dst + swz(row, c, kChunks), valid ? src + c * 8 : src, valid);
  }
}

__global__ void __launch_bounds__(kThreads, 1) decode_core_kernel(const DecodeCoreArgs a) {
  extern __shared__ __align__(128) uint8_t smem[];
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  bf16* s_kv = reinterpret_cast<bf16*>(smem + kQBytes);
  bf16* s_p = reinterpret_cast<bf16*>(smem + kQBytes + 2 * kKvBytes);
  float* red_max = reinterpret_cast<float*>(smem + kQBytes + 2 * kKvBytes + kPBytes);  // [2][64]
  float* red_sum = red_max + 2 * kH;                                                   // [2][64]

  const int hb = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h0 = hb * kH;
  const int len = a.seq_lens[b];
  const SplitTiles st = decode_split_tiles(a, b, split);
  const int t_begin = st.begin, t_end = st.end;
  if (t_begin >= t_end) {
    decode_write_empty_split<kThreads>(a, b, split, h0, tid);
    return;
  }

  // Q block (rows past the head count are zero: they score 0 and are never written out).
  {
    const bf16* q = static_cast<const bf16*>(a.q_abs);
    for (int i = tid; i < kH * kChunks; i += kThreads) {
      const int row = i / kChunks, c = i - row * kChunks;
      const bool valid = h0 + row < a.heads;
      const bf16* src = q + (int64_t(b) * a.heads + (valid ? h0 + row : 0)) * kL + c * 8;
      cp_async16(s_q + swz(row, c, kChunks), src, valid);
    }
  }
  load_kv_tile(s_kv, a, b, len, t_begin, tid);
  cp_async_commit();

  const float scale_log2 = a.scale * kLog2e;
  const int srow = (warp & 3) * 16;   // this warp's 16 heads of S
  const int scol = (warp >> 2) * 32;  // and its 32 tokens
  const int half = warp >> 2;

  float o[4][8][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][j][e] = 0.0f;
  float m_o[4][2];  // running max (log2 units) of the 8 rows this lane holds in o
#pragma unroll
  for (int i = 0; i < 4; ++i) m_o[i][0] = m_o[i][1] = -INFINITY;
  float m_s[2] = {-INFINITY, -INFINITY};  // the same for this lane's 2 rows of S
  float l_s[2] = {0.0f, 0.0f};            // partial row sums over this warp's tokens

  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) & 1;
    cp_async_wait<0>();
    __syncthreads();  // tile t visible; every warp is done with tile t-1, so its stage is free
    if (t + 1 < t_end) {
      load_kv_tile(s_kv + (stage ^ 1) * (kN * kL), a, b, len, t + 1, tid);
      cp_async_commit();
    }
    const bf16* s_k = s_kv + stage * (kN * kL);

    // ---- S = Q K^T for 16 heads x 32 tokens ----
    float s[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll 4
    for (int kk = 0; kk < kChunks / 2; ++kk) {
      uint32_t qa[4], kb0[4], kb1[4];
      ldmatrix_x4(qa, s_q + swz(srow + (lane & 15), kk * 2 + (lane >> 4), kChunks));
      ldmatrix_x4(kb0, s_k + swz(scol + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1), kChunks));
      ldmatrix_x4(kb1, s_k + swz(scol + 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1), kChunks));
      mma_bf16(s[0], qa, kb0[0], kb0[1]);
      mma_bf16(s[1], qa, kb0[2], kb0[3]);
      mma_bf16(s[2], qa, kb1[0], kb1[1]);
      mma_bf16(s[3], qa, kb1[2], kb1[3]);
    }
    const bool tail = (t + 1) * kN > len;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = t * kN + scol + j * 8 + 2 * (lane & 3) + (e & 1);
        s[j][e] = (tail && tok >= len) ? -INFINITY : s[j][e] * scale_log2;
      }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
      mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
    mx0 = quad_max(mx0);
    mx1 = quad_max(mx1);
    if ((lane & 3) == 0) {
      red_max[half * kH + srow + (lane >> 2)] = mx0;
      red_max[half * kH + srow + (lane >> 2) + 8] = mx1;
    }
    __syncthreads();

    // ---- online softmax: every lane updates the maxima of the rows it holds ----
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int r = i * 16 + (lane >> 2) + hi * 8;
        const float m_new = fmaxf(m_o[i][hi], fmaxf(red_max[r], red_max[kH + r]));
        const float alpha = exp2f(m_o[i][hi] - m_new);
        m_o[i][hi] = m_new;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          o[i][j][2 * hi] *= alpha;
          o[i][j][2 * hi + 1] *= alpha;
        }
      }
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int r = srow + (lane >> 2) + hi * 8;
      const float m_new = fmaxf(m_s[hi], fmaxf(red_max[r], red_max[kH + r]));
      const float alpha = exp2f(m_s[hi] - m_new);
      m_s[hi] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const __nv_bfloat162 pv = __floats2bfloat162_rn(exp2f(s[j][2 * hi] - m_new), exp2f(s[j][2 * hi + 1] - m_new));
        sum += __low2float(pv) + __high2float(pv);
        const int col = scol + j * 8 + 2 * (lane & 3);
        *reinterpret_cast<__nv_bfloat162*>(s_p + swz(r, col >> 3, kPChunks) + (col & 7)) = pv;
      }
      l_s[hi] = l_s[hi] * alpha + sum;
    }
    __syncthreads();

    // ---- O += P V: this warp's 64 value columns for all 64 heads ----
#pragma unroll
    for (int ks = 0; ks < kN / 16; ++ks) {
      uint32_t vb[4][4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        ldmatrix_x4_trans(vb[j], s_k + swz(ks * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                           warp * 8 + j * 2 + (lane >> 4), kChunks));
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t pa[4];
        ldmatrix_x4(pa, s_p + swz(i * 16 + (lane & 15), ks * 2 + (lane >> 4), kPChunks));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          mma_bf16(o[i][2 * j], pa, vb[j][0], vb[j][1]);
          mma_bf16(o[i][2 * j + 1], pa, vb[j][2], vb[j][3]);
        }
      }
    }
  }

  // ---- finish: row sums from both token halves, normalize, write ----
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const float l = quad_sum(l_s[hi]);
    if ((lane & 3) == 0) red_sum[half * kH + srow + (lane >> 2) + hi * 8] = l;
  }
  __syncthreads();
  const bool direct = a.num_splits == 1;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int r = i * 16 + (lane >> 2) + hi * 8;
      const int h = h0 + r;
      if (h >= a.heads) continue;
      const float l = red_sum[r] + red_sum[kH + r];
      const float inv = 1.0f / l;
      const int64_t row = direct ? int64_t(b) * a.heads + h : (int64_t(b) * a.num_splits + split) * a.heads + h;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int col = warp * 64 + j * 8 + 2 * (lane & 3);
        if (direct)
          store2(static_cast<bf16*>(a.o_lat) + row * kV + col, o[i][j][2 * hi] * inv, o[i][j][2 * hi + 1] * inv);
        else
          store2(a.o_part + row * kV + col, o[i][j][2 * hi] * inv, o[i][j][2 * hi + 1] * inv);
      }
      if (!direct && warp == 0 && (lane & 3) == 0) a.lse_part[row] = m_o[i][hi] + log2f(l);
    }
}

// One block of 128 threads per (head, sequence); each thread merges 4 of the 512 columns.
__global__ void __launch_bounds__(128) decode_combine_kernel(const float* __restrict__ o_part,
                                                             const float* __restrict__ lse_part, bf16* o_lat,
                                                             int heads, int splits) {
  extern __shared__ float s_w[];  // [splits]
  __shared__ float s_lse;
  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
  const int64_t base = int64_t(b) * splits * heads + h;  // (b, s, h) = base + s*heads
  if (tid < 32) {
    float mx = -INFINITY;
    for (int s = tid; s < splits; s += 32) mx = fmaxf(mx, lse_part[base + int64_t(s) * heads]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int s = tid; s < splits; s += 32) sum += exp2f(lse_part[base + int64_t(s) * heads] - mx);
    sum = warp_sum(sum);
    if (tid == 0) s_lse = mx == -INFINITY ? -INFINITY : mx + log2f(sum);
  }
  __syncthreads();
  // All splits empty (seq_len 0, a padding slot): zeros rather than NaN.
  for (int s = tid; s < splits; s += 128)
    s_w[s] = s_lse == -INFINITY ? 0.0f : exp2f(lse_part[base + int64_t(s) * heads] - s_lse);
  __syncthreads();
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s = 0; s < splits; ++s) {
    const float w = s_w[s];
    if (w == 0.0f) continue;  // empty split: its partial is zero, and -inf weights must not multiply
    const float4 v = reinterpret_cast<const float4*>(o_part + (base + int64_t(s) * heads) * kV)[tid];
    acc.x += w * v.x;
    acc.y += w * v.y;
    acc.z += w * v.z;
    acc.w += w * v.w;
  }
  uint2 packed = make_uint2(pack_bf16(acc.x, acc.y), pack_bf16(acc.z, acc.w));
  reinterpret_cast<uint2*>(o_lat + (int64_t(b) * heads + h) * kV)[tid] = packed;
}

// ---- exact f32 path -------------------------------------------------------------------------------

constexpr int kGenThreads = 256, kGenChunk = 128;

template <typename TP>
__global__ void __launch_bounds__(kGenThreads) decode_generic_kernel(const DecodeGenericArgs a) {
  extern __shared__ float sh[];
  float* s_q = sh;                     // [latent]
  float* s_acc = s_q + a.latent;       // [rank]
  float* s_sc = s_acc + a.rank;        // [kGenChunk]
  __shared__ float s_red[kGenThreads / 32];
  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const TP* pool = static_cast<const TP*>(a.pool);
  const int32_t* table = a.page_table + b * a.page_table_stride;
  const int len = a.seq_lens[b];
  const float* q = a.q_abs + (int64_t(b) * a.heads + h) * a.latent;
  for (int i = tid; i < a.latent; i += kGenThreads) s_q[i] = q[i];
  for (int i = tid; i < a.rank; i += kGenThreads) s_acc[i] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;
  auto row_ptr = [&](int pos) {
    const int page = table[pos / a.page_size];
    return pool + (int64_t(page) * a.page_size + pos % a.page_size) * a.latent;
  };
  __syncthreads();
  for (int t0 = 0; t0 < len; t0 += kGenChunk) {
    const int n = min(kGenChunk, len - t0);
    for (int j = warp; j < n; j += kGenThreads / 32) {
      const TP* row = row_ptr(t0 + j);
      float dot = 0.0f;
      for (int d = lane; d < a.latent; d += 32) dot = fmaf(s_q[d], to_f32(row[d]), dot);
      dot = warp_sum(dot);
      if (lane == 0) s_sc[j] = dot * a.scale;
    }
    __syncthreads();
    const float alpha = online_softmax_step<kGenThreads>(s_sc, n, s_red, m_run, l_run);
    for (int d = tid; d < a.rank; d += kGenThreads) {
      float acc = s_acc[d] * alpha;
      for (int j = 0; j < n; ++j) acc = fmaf(s_sc[j], to_f32(row_ptr(t0 + j)[d]), acc);
      s_acc[d] = acc;
    }
    __syncthreads();  // s_sc and s_red are reused by the next chunk
  }
  float* out = a.o_lat + (int64_t(b) * a.heads + h) * a.rank;
  const float inv = len > 0 ? 1.0f / l_run : 0.0f;  // seq_len 0 (a padding slot): zeros
  for (int d = tid; d < a.rank; d += kGenThreads) out[d] = s_acc[d] * inv;
}

}  // namespace

size_t decode_core_smem_bytes() { return kSmemBytes; }

void decode_core(const DecodeCoreArgs& a, cudaStream_t stream) {
  if (a.batch <= 0) return;
  if (a.num_splits < 1 || (a.num_splits > 1 && (a.o_part == nullptr || a.lse_part == nullptr)) ||
      (a.num_splits == 1 && a.o_lat == nullptr))
    throw std::invalid_argument("mla decode_core: bad split outputs");
  int dev = 0, optin = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  if (static_cast<size_t>(optin) < kSmemBytes)
    throw std::runtime_error("mla decode_core needs " + std::to_string(kSmemBytes) + " B of shared memory per block, " +
                             "the device allows " + std::to_string(optin));
  check(cudaFuncSetAttribute(decode_core_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)),
        "cudaFuncSetAttribute(decode_core)");
  const dim3 grid(ceil_div(a.heads, kH), a.num_splits, a.batch);
  decode_core_kernel<<<grid, kThreads, kSmemBytes, stream>>>(a);
  check_launch("mla decode_core");
}

void decode_combine(const float* o_part, const float* lse_part, void* o_lat, int batch, int heads, int num_splits,
                    cudaStream_t stream) {
  if (batch <= 0) return;
  const dim3 grid(heads, batch);
  decode_combine_kernel<<<grid, 128, num_splits * sizeof(float), stream>>>(o_part, lse_part,
                                                                           static_cast<bf16*>(o_lat), heads,
                                                                           num_splits);
  check_launch("mla decode_combine");
}

void decode_generic(const DecodeGenericArgs& a, cudaStream_t stream) {
  if (a.batch <= 0) return;
  const size_t smem = (size_t(a.latent) + a.rank + kGenChunk) * sizeof(float);
  if (smem > 48 * 1024) throw std::invalid_argument("mla decode_generic: latent dim too large");
  const dim3 grid(a.heads, a.batch);
  if (a.pool_type == Elem::kF32)
    decode_generic_kernel<float><<<grid, kGenThreads, smem, stream>>>(a);
  else if (a.pool_type == Elem::kBF16)
    decode_generic_kernel<bf16><<<grid, kGenThreads, smem, stream>>>(a);
  else
    throw std::invalid_argument("mla decode_generic: pool must be f32 or bf16");
  check_launch("mla decode_generic");
}

}  // namespace pdserve::ops::cuda::mla
