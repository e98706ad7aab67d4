#include <cuda_bf16.h>
#include <curand_kernel.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/sampling.h"

namespace pdserve::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;
using u64 = unsigned long long;

// One block per row; the scans below assume exactly 32 warps. Two blocks per SM (32 registers a
// thread) keep 256 rows resident at once on an H100 and twice the loads in flight.
constexpr int kThreads = 1024;
constexpr int kBins = 2048;     // histogram bands of (max key - key) ...
constexpr float kBinsPerNat = 64.0f;  // ... 1/64 nat wide, covering [0, 32) nats
constexpr int kCap = 4096;      // boundary-band tokens resolved exactly (4 per thread)
constexpr float kMassOne = 1099511627776.0f;  // 2^40: fixed-point unit of w = 1

enum Mode : int { kNoFilter = 0, kExact = 1, kByIndex = 2 };

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }

template <typename T>
constexpr int kPer = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte access

// Row traversal shared by every pass: warp w owns the contiguous segment [w * seg, (w+1) * seg),
// walked in chunks of 32 * P elements, lane l taking P consecutive elements at chunk + l * P.
// The order of elements within a thread, and of threads, is fixed, which makes every floating-point
// sum below deterministic. f(e0, end, v) is called by all lanes of the warp on every chunk (trip
// count is warp-uniform, so f may use warp shuffles); element e0 + j exists iff e0 + j < end.
template <typename T, bool kVec, typename F>
__device__ __forceinline__ void for_chunks(const T* row, int vocab, int seg, F&& f) {
  constexpr int P = kPer<T>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int beg = warp * seg, end = min(vocab, beg + seg);
  for (int c = beg; c < end; c += 32 * P) {
    const int e0 = c + lane * P;
    float v[P];
    if (kVec && e0 + P <= end) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + e0));
      const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < P; ++j) v[j] = to_f(x[j]);
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) v[j] = e0 + j < end ? to_f(row[e0 + j]) : 0.0f;
    }
    f(e0, end, v);
  }
}

__device__ __forceinline__ bool better(float v, int i, float ov, int oi) { return ov > v || (ov == v && oi < i); }

// Block arg-max (larger value, then lower index); every thread gets the result.
__device__ void block_argmax(float& v, int& i) {
  __shared__ float sv[32];
  __shared__ int si[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(v, i, ov, oi)) v = ov, i = oi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = v, si[warp] = i;
  __syncthreads();
  v = sv[lane], i = si[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(v, i, ov, oi)) v = ov, i = oi;
  }
  __syncthreads();  // sv/si reusable
}

// Exclusive scan over the block in thread order (fixed tree: deterministic for doubles too).
template <typename V>
__device__ V block_excl_scan(V v, V& total) {
  __shared__ V warp_incl[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  V x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const V y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  V excl = __shfl_up_sync(0xffffffffu, x, 1);
  if (lane == 0) excl = V(0);
  if (lane == 31) warp_incl[warp] = x;
  __syncthreads();
  if (warp == 0) {
    V w = warp_incl[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const V y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    warp_incl[lane] = w;
  }
  __syncthreads();
  total = warp_incl[31];
  const V base = warp > 0 ? warp_incl[warp - 1] : V(0);
  __syncthreads();  // warp_incl reusable
  return base + excl;
}

struct RowState {
  float inv_t, mkey, min_p;
  int mode, bstar, n_keep, tidx;
  float tkey;
};

__device__ __forceinline__ int bin_of(float key, float mkey) {
  const float r = mkey - key;  // >= 0; NaN for a NaN key, which lands in no bin
  return r < 32.0f ? static_cast<int>(r * kBinsPerNat) : kBins;
}

__device__ __forceinline__ u64 mass_of(float w) { return __float2ull_rz(w * kMassOne); }

__device__ __forceinline__ bool before(float ka, int ia, float kb, int ib) { return ka > kb || (ka == kb && ia < ib); }

// The last pass: visits the kept tokens in traversal order. Sum mode adds their w into `sum`;
// find mode (run by one warp) has lane `owner_lane` walk from `acc` and return the first token at
// which the running mass exceeds `target` (else its last kept token) in `found`.
template <typename T, bool kVec, bool kFind>
__device__ void kept_pass(const T* row, int vocab, int seg, const RowState& st, const int* warp_base, float& sum,
                          double acc, double target, int owner_lane, int& found) {
  const int lane = threadIdx.x & 31;
  int run = kByIndex == st.mode ? warp_base[threadIdx.x >> 5] : 0;  // band tokens before this chunk
  int last = -1;
  for_chunks<T, kVec>(row, vocab, seg, [&](int e0, int end, const float (&v)[kPer<T>]) {
    constexpr int P = kPer<T>;
    int rank0 = 0;  // rank in id order of this lane's first band token (kByIndex only)
    if (st.mode == kByIndex) {
      int cnt = 0;
#pragma unroll
      for (int j = 0; j < P; ++j) cnt += (e0 + j < end && bin_of(v[j] * st.inv_t, st.mkey) == st.bstar) ? 1 : 0;
      int incl = cnt;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      rank0 = run + incl - cnt;
      run += __shfl_sync(0xffffffffu, incl, 31);
    }
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int e = e0 + j;
      if (e >= end) continue;
      const float key = v[j] * st.inv_t;
      const float w = __expf(key - st.mkey);
      bool keep = w > 0.0f && w >= st.min_p;
      if (keep && st.mode != kNoFilter) {
        const int b = bin_of(key, st.mkey);
        if (b > st.bstar) {
          keep = false;
        } else if (b == st.bstar) {
          keep = st.mode == kExact ? (key > st.tkey || (key == st.tkey && e <= st.tidx)) : rank0 < st.n_keep;
          if (st.mode == kByIndex) ++rank0;
        }
      } else if (st.mode == kByIndex && bin_of(key, st.mkey) == st.bstar) {
        ++rank0;
      }
      if (!keep) continue;
      if constexpr (kFind) {
        if (lane == owner_lane && found < 0) {
          acc += w;
          last = e;
          if (acc > target) found = e;
        }
      } else {
        sum += w;
      }
    }
  });
  if constexpr (kFind) {
    if (lane == owner_lane && found < 0) found = last;
  }
}

struct Hist {
  unsigned cnt[kBins];
  u64 mass[kBins];
};
struct Cand {
  float key[kCap];
  int idx[kCap];
};

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, 2) sample_kernel(const T* logits, long long ld, int vocab,
                                                          const float* temperature, const float* top_p,
                                                          const int* top_k, const float* min_p,
                                                          const long long* seed, const long long* offset, int* out) {
  __shared__ union {
    Hist h;
    Cand c;
  } sm;
  __shared__ RowState st;
  __shared__ int s_bstar, s_ncand, s_fail, s_owner, s_found;
  __shared__ u64 s_cbefore, s_mbefore, s_bcount, s_bmass;
  __shared__ double s_target;
  __shared__ int s_warp_base[32];

  const int b = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T* row = logits + b * ld;
  const int seg = ((vocab + 31) / 32 + kPer<T> - 1) / kPer<T> * kPer<T>;

  // Parameters, sanitised (they live in device memory and cannot be validated on the host).
  const float temp = temperature[b];
  const int tk = top_k[b];
  float tp = top_p[b], mp = min_p[b];
  const bool greedy = !(temp >= 1e-6f) || tk == 1 || !(tp > 0.0f);
  const int k = (tk <= 0 || tk >= vocab) ? vocab : tk;
  tp = fminf(tp, 1.0f);
  mp = mp > 0.0f ? fminf(mp, 1.0f) : 0.0f;
  const float inv_t = greedy ? 1.0f : 1.0f / temp;

  // Pass 1: first index of the maximum logit.
  float bv = -INFINITY;
  int bi = INT_MAX;
  for_chunks<T, kVec>(row, vocab, seg, [&](int e0, int end, const float (&v)[kPer<T>]) {
#pragma unroll
    for (int j = 0; j < kPer<T>; ++j)
      if (e0 + j < end && better(bv, bi, v[j], e0 + j)) bv = v[j], bi = e0 + j;
  });
  block_argmax(bv, bi);
  const int argmax = bi == INT_MAX ? 0 : bi;
  const float mkey = bv * inv_t;
  if (greedy || !isfinite(mkey)) {
    if (tid == 0) out[b] = argmax;
    return;
  }

  if (tid == 0) {
    st.inv_t = inv_t, st.mkey = mkey, st.min_p = mp, st.mode = kNoFilter;
    st.bstar = -1, st.n_keep = 0, st.tidx = -1, st.tkey = 0.0f;
  }
  const bool filter = k < vocab || tp < 1.0f;
  if (filter) {
    // Pass 2: histogram of bands, then the band holding the last kept token of the sorted order.
    for (int i = tid; i < kBins; i += kThreads) sm.h.cnt[i] = 0, sm.h.mass[i] = 0;
    if (tid == 0) s_bstar = -1, s_ncand = 0, s_fail = INT_MAX;
    __syncthreads();
    for_chunks<T, kVec>(row, vocab, seg, [&](int e0, int end, const float (&v)[kPer<T>]) {
#pragma unroll
      for (int j = 0; j < kPer<T>; ++j) {
        if (e0 + j >= end) continue;
        const float key = v[j] * inv_t;
        const int bin = bin_of(key, mkey);
        if (bin >= kBins) continue;
        atomicAdd(&sm.h.cnt[bin], 1u);
        atomicAdd(&sm.h.mass[bin], mass_of(__expf(key - mkey)));
      }
    });
    __syncthreads();
    const int b0 = 2 * tid;  // kBins == 2 * kThreads
    const u64 c0 = sm.h.cnt[b0], c1 = sm.h.cnt[b0 + 1], m0 = sm.h.mass[b0], m1 = sm.h.mass[b0 + 1];
    u64 ctot, mtot;
    const u64 cb = block_excl_scan<u64>(c0 + c1, ctot);
    const u64 mb = block_excl_scan<u64>(m0 + m1, mtot);
    const double thr = tp >= 1.0f ? INFINITY : static_cast<double>(tp) * static_cast<double>(mtot);
    auto starts_kept = [&](u64 cbefore, u64 mbefore) {
      return cbefore < static_cast<u64>(k) && static_cast<double>(mbefore) < thr;
    };
    int mine = -1;
    if (c0 > 0 && starts_kept(cb, mb)) mine = b0;
    if (c1 > 0 && starts_kept(cb + c0, mb + m0)) mine = b0 + 1;
    if (mine >= 0) atomicMax(&s_bstar, mine);
    __syncthreads();
    const int bstar = s_bstar;
    if (bstar < 0) {  // unreachable: the maximum's band always qualifies
      if (tid == 0) out[b] = argmax;
      return;
    }
    if (bstar == b0) s_cbefore = cb, s_mbefore = mb, s_bcount = c0, s_bmass = m0;
    if (bstar == b0 + 1) s_cbefore = cb + c0, s_mbefore = mb + m0, s_bcount = c1, s_bmass = m1;
    __syncthreads();  // the histogram is dead from here on; its memory holds candidates
    const int nb = static_cast<int>(s_bcount);
    const u64 cbefore = s_cbefore, mbefore = s_mbefore;

    if (nb <= kCap) {
      // Pass 3: gather the band, sort it, resolve the boundary exactly.
      for_chunks<T, kVec>(row, vocab, seg, [&](int e0, int end, const float (&v)[kPer<T>]) {
#pragma unroll
        for (int j = 0; j < kPer<T>; ++j) {
          if (e0 + j >= end) continue;
          const float key = v[j] * inv_t;
          if (bin_of(key, mkey) != bstar) continue;
          const int slot = atomicAdd(&s_ncand, 1);
          if (slot < kCap) sm.c.key[slot] = key, sm.c.idx[slot] = e0 + j;
        }
      });
      int n2 = 1;
      while (n2 < nb) n2 <<= 1;
      for (int i = nb + tid; i < n2; i += kThreads) sm.c.key[i] = -INFINITY, sm.c.idx[i] = INT_MAX;
      __syncthreads();
      for (int size = 2; size <= n2; size <<= 1) {  // bitonic sort into (key desc, id asc)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
          for (int i = tid; i < n2; i += kThreads) {
            const int j = i ^ stride;
            if (j <= i) continue;
            const float ki = sm.c.key[i], kj = sm.c.key[j];
            const int ii = sm.c.idx[i], ij = sm.c.idx[j];
            const bool up = (i & size) == 0;
            if (up ? before(kj, ij, ki, ii) : before(ki, ii, kj, ij)) {
              sm.c.key[i] = kj, sm.c.idx[i] = ij;
              sm.c.key[j] = ki, sm.c.idx[j] = ii;
            }
          }
          __syncthreads();
        }
      }
      u64 mm[4], tsum = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int pos = 4 * tid + j;
        mm[j] = pos < nb ? mass_of(__expf(sm.c.key[pos] - mkey)) : 0;
        tsum += mm[j];
      }
      u64 unused;
      u64 run = mbefore + block_excl_scan<u64>(tsum, unused);
      int fail = INT_MAX;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int pos = 4 * tid + j;
        if (pos < nb && fail == INT_MAX && !starts_kept(cbefore + pos, run)) fail = pos;
        run += mm[j];
      }
      if (fail != INT_MAX) atomicMin(&s_fail, fail);
      __syncthreads();
      if (tid == 0) {
        const int n_keep = max(1, min(s_fail, nb));
        st.mode = kExact, st.bstar = bstar, st.n_keep = n_keep;
        st.tkey = sm.c.key[n_keep - 1], st.tidx = sm.c.idx[n_keep - 1];
      }
    } else {
      // Too many near-equal tokens for the exact sort: cut the band in id order. Pass 3 counts
      // each warp's band tokens so the last pass can rank them.
      int cnt = 0;
      for_chunks<T, kVec>(row, vocab, seg, [&](int e0, int end, const float (&v)[kPer<T>]) {
#pragma unroll
        for (int j = 0; j < kPer<T>; ++j) cnt += (e0 + j < end && bin_of(v[j] * inv_t, mkey) == bstar) ? 1 : 0;
      });
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
      if (lane == 0) s_warp_base[warp] = cnt;
      __syncthreads();
      if (tid == 0) {
        int acc = 0;
        for (int w = 0; w < 32; ++w) {
          const int c = s_warp_base[w];
          s_warp_base[w] = acc;
          acc += c;
        }
        long long n_keep = min(static_cast<long long>(nb), static_cast<long long>(k) - static_cast<long long>(cbefore));
        if (thr < INFINITY) {
          const double avg = static_cast<double>(s_bmass) / nb;
          const double need = avg > 0.0 ? ceil((thr - static_cast<double>(mbefore)) / avg) : static_cast<double>(nb);
          n_keep = min(n_keep, static_cast<long long>(fmin(need, static_cast<double>(nb))));
        }
        st.mode = kByIndex, st.bstar = bstar, st.n_keep = static_cast<int>(max(1LL, n_keep));
      }
    }
  }
  __syncthreads();
  const RowState rs = st;

  // Pass 4: mass of the kept tokens per thread, block scan, one uniform, the owning thread.
  float sum = 0.0f;
  int found = -1;
  kept_pass<T, kVec, false>(row, vocab, seg, rs, s_warp_base, sum, 0.0, 0.0, -1, found);
  double total;
  const double excl = block_excl_scan<double>(static_cast<double>(sum), total);
  if (tid == 0) {
    curandStatePhilox4_32_10_t rng;
    curand_init(static_cast<u64>(seed[b]), static_cast<u64>(offset[b]), 0, &rng);
    const double u = static_cast<double>(curand(&rng)) * (1.0 / 4294967296.0);  // [0, 1)
    s_target = u * total;
    s_owner = -1;
    s_found = -1;
  }
  __syncthreads();
  if (sum > 0.0f && excl <= s_target) atomicMax(&s_owner, tid);
  __syncthreads();
  const int owner = s_owner;
  if (owner >= 0 && warp == owner / 32) {
    kept_pass<T, kVec, true>(row, vocab, seg, rs, s_warp_base, sum, excl, s_target, owner % 32, found);
    if (lane == owner % 32) s_found = found;
  }
  __syncthreads();
  if (tid == 0) out[b] = s_found >= 0 ? s_found : argmax;
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("sample_batch: " + msg);
}

void check_param(const Tensor& t, const char* name, DType dtype, int64_t rows) {
  require(t.defined() && t.device() == Device::kCuda && t.dtype() == dtype && t.dim() == 1 && t.size(0) == rows &&
              t.is_contiguous(),
          std::string(name) + " must be a contiguous device " + dtype_name(dtype) + " [" + std::to_string(rows) + "]");
}

template <typename T>
void launch(const Tensor& logits, const SamplingBatch& p, Tensor& out) {
  const int rows = static_cast<int>(logits.size(0)), vocab = static_cast<int>(logits.size(1));
  const long long ld = logits.strides()[0];
  const bool vec = ld % kPer<T> == 0 && reinterpret_cast<uintptr_t>(logits.raw_data()) % 16 == 0;
  auto kernel = vec ? sample_kernel<T, true> : sample_kernel<T, false>;
  kernel<<<rows, kThreads, 0, current_stream()>>>(logits.data<T>(), ld, vocab, p.temperature.data<float>(),
                                                  p.top_p.data<float>(), p.top_k.data<int>(), p.min_p.data<float>(),
                                                  p.seed.data<long long>(), p.offset.data<long long>(), out.data<int>());
}

}  // namespace

void sample_batch(const Tensor& logits, const SamplingBatch& params, Tensor& out_ids) {
  require(logits.defined() && logits.device() == Device::kCuda &&
              (logits.dtype() == DType::kF32 || logits.dtype() == DType::kBF16) && logits.dim() == 2 &&
              (logits.size(1) <= 1 || logits.strides()[1] == 1),
          "logits must be a device f32/bf16 [B, V] with a unit-stride last dim");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  require(vocab > 0 && vocab < (1LL << 31) && rows < (1LL << 31), "needs 0 < V < 2^31 and B < 2^31");
  check_param(params.temperature, "temperature", DType::kF32, rows);
  check_param(params.top_p, "top_p", DType::kF32, rows);
  check_param(params.top_k, "top_k", DType::kI32, rows);
  check_param(params.min_p, "min_p", DType::kF32, rows);
  check_param(params.seed, "seed", DType::kI64, rows);
  check_param(params.offset, "offset", DType::kI64, rows);
  check_param(out_ids, "out_ids", DType::kI32, rows);
  if (rows == 0) return;
  if (logits.dtype() == DType::kF32)
    launch<float>(logits, params, out_ids);
  else
    launch<bf16>(logits, params, out_ids);
  check_launch("sample_batch");
}

}  // namespace pdserve::ops::cuda
