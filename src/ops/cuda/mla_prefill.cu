// MLA prefill/extend attention in the expanded form (model-spec §2.3): per head, q (192 = nope 128
// + rope 64) against k = [k_nope (from kv_b) ; k_pe (shared by all heads)] and v (128), causal with a
// cached prefix, over several packed sequences.
//
// prefill_flash: FlashAttention-2 style on tensor cores. One CTA per (128 query rows, head,
// sequence), 8 warps of 16 rows. Q fragments live in registers for the whole CTA; K (64 x 192) and
// V (64 x 128) tiles stream through a two-stage cp.async pipeline; S and P never leave registers
// (the S accumulator layout of m16n8k16 is the A-operand layout of the P.V product). Query blocks
// are launched heaviest (latest) first so the causal triangle does not leave a long tail.
//
// prefill_generic: exact f32 on CUDA cores for any dims; one block per (query row, head, sequence).
#include <stdexcept>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_device.h"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::ops::cuda::mla {

namespace {

constexpr int kBM = 128, kBN = 64, kNope = 128, kRope = 64, kDqk = kNope + kRope, kDv = 128;
constexpr int kThreads = 256;
constexpr int kQkChunks = kDqk / 8, kVChunks = kDv / 8;
constexpr size_t kQBytes = size_t(kBM) * kDqk * 2, kKBytes = size_t(kBN) * kDqk * 2, kVBytes = size_t(kBN) * kDv * 2;
constexpr size_t kSmemBytes = kQBytes + 2 * (kKBytes + kVBytes);
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void load_kv_tiles(bf16* s_k, bf16* s_v, const PrefillArgs& a, const SeqRange& sr, int h,
                                              int tile, int tid) {
  const bf16* kv = static_cast<const bf16*>(a.kv);
  const bf16* kpe = static_cast<const bf16*>(a.k_pe);
  const int64_t kv_row = int64_t(a.heads) * (kNope + kDv);
  for (int i = tid; i < kBN * kQkChunks; i += kThreads) {
    const int row = i / kQkChunks, c = i - row * kQkChunks, pos = tile * kBN + row;
    const bool valid = pos < sr.kv_len;
    const int64_t t = sr.kv_begin + (valid ? pos : 0);
    const bf16* src = c < kNope / 8 ? kv + t * kv_row + h * (kNope + kDv) + c * 8
                                    : kpe + t * a.k_pe_row + (c - kNope / 8) * 8;
    cp_async16(s_k + swz(row, c, kQkChunks), src, valid);
  }
  for (int i = tid; i < kBN * kVChunks; i += kThreads) {
    const int row = i / kVChunks, c = i - row * kVChunks, pos = tile * kBN + row;
    const bool valid = pos < sr.kv_len;
    const int64_t t = sr.kv_begin + (valid ? pos : 0);
    cp_async16(s_v + swz(row, c, kVChunks), kv + t * kv_row + h * (kNope + kDv) + kNope + c * 8, valid);
  }
}

template <typename TO>
__global__ void __launch_bounds__(kThreads, 1) prefill_flash_kernel(const PrefillArgs a) {
  extern __shared__ __align__(128) uint8_t smem[];
  bf16* s_q = reinterpret_cast<bf16*>(smem);
  bf16* s_k = reinterpret_cast<bf16*>(smem + kQBytes);                   // [2][64][192]
  bf16* s_v = reinterpret_cast<bf16*>(smem + kQBytes + 2 * kKBytes);     // [2][64][128]
  const int h = blockIdx.x, seq = blockIdx.y, qb = gridDim.z - 1 - blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const SeqRange sr = seq_range(a, seq);
  if (qb * kBM >= sr.q_len) return;
  // Last key any row of this block sees: prefix + last row.
  const int kv_end = min(sr.kv_len, sr.prefix + min(sr.q_len, (qb + 1) * kBM));
  const int n_tiles = (kv_end + kBN - 1) / kBN;

  {
    const bf16* q = static_cast<const bf16*>(a.q);
    for (int i = tid; i < kBM * kQkChunks; i += kThreads) {
      const int row = i / kQkChunks, c = i - row * kQkChunks, qr = qb * kBM + row;
      const bool valid = qr < sr.q_len;
      const bf16* src = q + int64_t(sr.q_begin + (valid ? qr : 0)) * a.q_row + int64_t(h) * a.q_head + c * 8;
      cp_async16(s_q + swz(row, c, kQkChunks), src, valid);
    }
  }
  load_kv_tiles(s_k, s_v, a, sr, h, 0, tid);
  cp_async_commit();

  const float scale_log2 = a.scale * kLog2e;
  const int row_lo = qb * kBM + warp * 16 + (lane >> 2);  // local query index of accumulator rows 0..7
  uint32_t qf[kDqk / 16][4];
  float o[kDv / 8][4];
#pragma unroll
  for (int j = 0; j < kDv / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  for (int t = 0; t < n_tiles; ++t) {
    const int stage = t & 1;
    cp_async_wait<0>();
    __syncthreads();
    if (t == 0) {
#pragma unroll
      for (int kk = 0; kk < kDqk / 16; ++kk)
        ldmatrix_x4(qf[kk], s_q + swz(warp * 16 + (lane & 15), kk * 2 + (lane >> 4), kQkChunks));
    }
    if (t + 1 < n_tiles) {
      load_kv_tiles(s_k + (stage ^ 1) * (kBN * kDqk), s_v + (stage ^ 1) * (kBN * kDv), a, sr, h, t + 1, tid);
      cp_async_commit();
    }
    const bf16* k_t = s_k + stage * (kBN * kDqk);
    const bf16* v_t = s_v + stage * (kBN * kDv);

    float s[kBN / 8][4];
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kDqk / 16; ++kk)
#pragma unroll
      for (int jp = 0; jp < kBN / 16; ++jp) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_t + swz(jp * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1), kQkChunks));
        mma_bf16(s[2 * jp], qf[kk], kb[0], kb[1]);
        mma_bf16(s[2 * jp + 1], qf[kk], kb[2], kb[3]);
      }

    // Mask only tiles that cross the diagonal of this block or the end of the keys.
    const bool need_mask = (t + 1) * kBN - 1 > sr.prefix + qb * kBM || (t + 1) * kBN > sr.kv_len;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = t * kBN + j * 8 + 2 * (lane & 3) + (e & 1);
        const int r = row_lo + (e >> 1) * 8;
        const bool ok = !need_mask || (tok < sr.kv_len && tok <= sr.prefix + r);
        s[j][e] = ok ? s[j][e] * scale_log2 : -INFINITY;
      }

    uint32_t pa[kBN / 16][4];
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * hi], s[j][2 * hi + 1]));
      mx = quad_max(mx);
      // Tile 0 holds key 0, visible to every row, so m_new is finite from the first tile on.
      const float m_new = fmaxf(m_run[hi], mx);
      const float alpha = exp2f(m_run[hi] - m_new);
      m_run[hi] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const __nv_bfloat162 pv =
            __floats2bfloat162_rn(exp2f(s[j][2 * hi] - m_new), exp2f(s[j][2 * hi + 1] - m_new));
        sum += __low2float(pv) + __high2float(pv);
        // C fragment (row, 2 cols) of n-tile j -> A fragment of k-step j/2: regs hi + 2*(j&1).
        pa[j >> 1][hi + 2 * (j & 1)] = *reinterpret_cast<const uint32_t*>(&pv);
      }
      l_run[hi] = l_run[hi] * alpha + sum;
#pragma unroll
      for (int j = 0; j < kDv / 8; ++j) {
        o[j][2 * hi] *= alpha;
        o[j][2 * hi + 1] *= alpha;
      }
    }

#pragma unroll
    for (int ks = 0; ks < kBN / 16; ++ks)
#pragma unroll
      for (int jp = 0; jp < kDv / 16; ++jp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_t + swz(ks * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), jp * 2 + (lane >> 4),
                                        kVChunks));
        mma_bf16(o[2 * jp], pa[ks], vb[0], vb[1]);
        mma_bf16(o[2 * jp + 1], pa[ks], vb[2], vb[3]);
      }
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
      store2(orow + j * 8 + 2 * (lane & 3), o[j][2 * hi] * inv, o[j][2 * hi + 1] * inv);
  }
}

// ---- exact f32 path -------------------------------------------------------------------------------

constexpr int kGenThreads = 128, kGenChunk = 128;

template <typename TQ, typename TK, typename TO>
__global__ void __launch_bounds__(kGenThreads) prefill_generic_kernel(const PrefillArgs a) {
  extern __shared__ float sh[];
  const int dqk = a.nope + a.rope;
  float* s_q = sh;              // [dqk]
  float* s_acc = s_q + dqk;     // [v]
  float* s_sc = s_acc + a.v;    // [kGenChunk]
  __shared__ float s_red[kGenThreads / 32];
  const int r = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const SeqRange sr = seq_range(a, seq);
  if (r >= sr.q_len) return;
  const float* kv = static_cast<const float*>(a.kv);
  const TK* kpe = static_cast<const TK*>(a.k_pe);
  const int64_t kv_row = int64_t(a.heads) * (a.nope + a.v);
  const TQ* q = static_cast<const TQ*>(a.q) + int64_t(sr.q_begin + r) * a.q_row + int64_t(h) * a.q_head;
  for (int i = tid; i < dqk; i += kGenThreads) s_q[i] = to_f32(q[i]);
  for (int i = tid; i < a.v; i += kGenThreads) s_acc[i] = 0.0f;
  __syncthreads();
  const int visible = sr.prefix + r + 1;
  float m_run = -INFINITY, l_run = 0.0f;
  for (int t0 = 0; t0 < visible; t0 += kGenChunk) {
    const int n = min(kGenChunk, visible - t0);
    for (int j = warp; j < n; j += kGenThreads / 32) {
      const int64_t t = sr.kv_begin + t0 + j;
      const float* krow = kv + t * kv_row + int64_t(h) * (a.nope + a.v);
      float dot = 0.0f;
      for (int d = lane; d < a.nope; d += 32) dot = fmaf(s_q[d], krow[d], dot);
      for (int d = lane; d < a.rope; d += 32) dot = fmaf(s_q[a.nope + d], to_f32(kpe[t * a.k_pe_row + d]), dot);
      dot = warp_sum(dot);
      if (lane == 0) s_sc[j] = dot * a.scale;
    }
    __syncthreads();
    const float alpha = online_softmax_step<kGenThreads>(s_sc, n, s_red, m_run, l_run);
    for (int d = tid; d < a.v; d += kGenThreads) {
      float acc = s_acc[d] * alpha;
      for (int j = 0; j < n; ++j)
        acc = fmaf(s_sc[j], kv[(sr.kv_begin + t0 + j) * kv_row + int64_t(h) * (a.nope + a.v) + a.nope + d], acc);
      s_acc[d] = acc;
    }
    __syncthreads();
  }
  TO* out = static_cast<TO*>(a.out) + (int64_t(sr.q_begin + r) * a.heads + h) * a.v;
  const float inv = 1.0f / l_run;
  for (int d = tid; d < a.v; d += kGenThreads) out[d] = from_f32<TO>(s_acc[d] * inv);
}

template <typename TQ, typename TK>
void launch_generic_o(const PrefillArgs& a, dim3 grid, size_t smem, cudaStream_t s) {
  if (a.out_type == Elem::kF32)
    prefill_generic_kernel<TQ, TK, float><<<grid, kGenThreads, smem, s>>>(a);
  else
    prefill_generic_kernel<TQ, TK, bf16><<<grid, kGenThreads, smem, s>>>(a);
}

template <typename TQ>
void launch_generic_k(const PrefillArgs& a, dim3 grid, size_t smem, cudaStream_t s) {
  if (a.k_pe_type == Elem::kF32)
    launch_generic_o<TQ, float>(a, grid, smem, s);
  else
    launch_generic_o<TQ, bf16>(a, grid, smem, s);
}

bool f32_or_bf16(Elem e) { return e == Elem::kF32 || e == Elem::kBF16; }

}  // namespace

void prefill_flash(const PrefillArgs& a, cudaStream_t stream) {
  // The Hopper wgmma kernel (mla_prefill_wgmma.cu) where chosen and applicable, else the one below.
  if (prefill_kernel_choice() == PrefillKernel::kWgmma && prefill_flash_wgmma_launch(a, stream)) return;
  prefill_flash2(a, stream);
}

void prefill_flash2(const PrefillArgs& a, cudaStream_t stream) {
  if (a.num_seqs <= 0 || a.max_q_len <= 0) return;
  if (a.nope != kNope || a.rope != kRope || a.v != kDv || a.q_type != Elem::kBF16 || a.k_pe_type != Elem::kBF16 ||
      !f32_or_bf16(a.out_type) || a.q_row % 8 != 0 || a.q_head % 8 != 0 || a.k_pe_row % 8 != 0)
    throw std::invalid_argument("mla prefill_flash: needs nope 128 / rope 64 / v 128, bf16 q and k_pe with rows "
                                "of whole 16-byte chunks");
  const int q_blocks = static_cast<int>(ceil_div(a.max_q_len, kBM));
  if (q_blocks > 65535 || a.num_seqs > 65535) throw std::invalid_argument("mla prefill_flash: grid too large");
  const dim3 grid(a.heads, a.num_seqs, q_blocks);
  if (a.out_type == Elem::kF32) {
    check(cudaFuncSetAttribute(prefill_flash_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(kSmemBytes)),
          "cudaFuncSetAttribute(prefill_flash)");
    prefill_flash_kernel<float><<<grid, kThreads, kSmemBytes, stream>>>(a);
  } else {
    check(cudaFuncSetAttribute(prefill_flash_kernel<bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(kSmemBytes)),
          "cudaFuncSetAttribute(prefill_flash)");
    prefill_flash_kernel<bf16><<<grid, kThreads, kSmemBytes, stream>>>(a);
  }
  check_launch("mla prefill_flash");
}

void prefill_generic(const PrefillArgs& a, cudaStream_t stream) {
  if (a.num_seqs <= 0 || a.max_q_len <= 0) return;
  if (!f32_or_bf16(a.q_type) || !f32_or_bf16(a.k_pe_type) || !f32_or_bf16(a.out_type))
    throw std::invalid_argument("mla prefill_generic: q, k_pe and out must be f32 or bf16");
  if (a.heads > 65535 || a.num_seqs > 65535) throw std::invalid_argument("mla prefill_generic: grid too large");
  const size_t smem = (size_t(a.nope) + a.rope + a.v + kGenChunk) * sizeof(float);
  if (smem > 48 * 1024) throw std::invalid_argument("mla prefill_generic: head dims too large");
  const dim3 grid(a.max_q_len, a.heads, a.num_seqs);
  if (a.q_type == Elem::kF32)
    launch_generic_k<float>(a, grid, smem, stream);
  else
    launch_generic_k<bf16>(a, grid, smem, stream);
  check_launch("mla prefill_generic");
}

}  // namespace pdserve::ops::cuda::mla
