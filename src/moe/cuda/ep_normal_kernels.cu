// GPU normal-mode EP dispatch and combine (DeepEP's dispatch / combine, model-spec §6.1) with the
// layout of the CPU NormalDispatcher: each token goes once to every rank that owns one of its
// experts; the receiver gets rows packed by source rank, then source token order, with the top-k
// ids rewritten to local ids (-1 elsewhere, weight 0 there), and per-expert counts.
//
// Dispatch, each rank: every block ranks each (token, destination rank) pair among the tokens going
// to that rank (ep_gpu_sync.cuh's rank_entries) and counts entries per expert; block 0 sends both
// count vectors to every rank; every block waits for all of them (row offsets = tokens of lower
// ranks); a warp per token writes its bf16 row, ids and weights into each destination; done
// counters as in low-latency mode. Combine: every received row's partial sum goes back to its
// source into [this rank][token]; the owner then adds the ranks' partials in rank order.
#include <cuda_bf16.h>

#include "moe/cuda/ep_gpu_sync.cuh"
#include "moe/cuda/ep_normal_kernels.h"

namespace pdserve::moe::gpu::detail {

namespace {

__device__ __forceinline__ float bf16_bits_to_f(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

// True when token t has an expert (valid id) on rank d.
__device__ __forceinline__ bool token_on_rank(const int32_t* ids, int64_t t, int64_t K, int64_t E, int64_t G, int d) {
  for (int64_t j = 0; j < K; ++j) {
    const int e = ids[t * K + j];
    if (e >= 0 && e < E && e / G == d) return true;
  }
  return false;
}

__global__ void __launch_bounds__(kThreads) nm_dispatch_kernel(const __grid_constant__ NmDispatchArgs a) {
  const NmCommon& c = a.c;
  const int me = c.rank, R = c.ranks;
  const int64_t E = c.num_experts, G = c.local_experts, H = c.hidden, K = c.top_k, T = a.tokens, M = c.max_tokens;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u64 epoch = a.epochs[blockIdx.x] + 1;
  const int64_t words = R + E;  // per source: tokens to each rank, then entries per expert

  extern __shared__ int smem[];
  int* slot = smem;                   // [M*R]: rank of token t among this rank's tokens to rank d
  int* warp_cnt = slot + M * R;       // [W][R]
  int* my_cnt = warp_cnt + kWarps * R;  // [R + E]: tokens to each rank, then entries per expert
  int* base = my_cnt + words;         // [R]: first row of this rank's tokens at each destination
  __shared__ int failed;

  if (threadIdx.x == 0) failed = 0;
  for (int64_t e = threadIdx.x; e < E; e += kThreads) my_cnt[R + e] = 0;
  // 1. Rank of each (token, destination) pair; tokens per destination; entries per expert.
  rank_entries(
      T * R, R,
      [&](int64_t i) { return token_on_rank(a.topk_ids, i / R, K, E, G, static_cast<int>(i % R)) ? static_cast<int>(i % R) : -1; },
      slot, warp_cnt, my_cnt);
  for (int64_t i = threadIdx.x; i < T * K; i += kThreads) {
    const int e = a.topk_ids[i];
    if (e >= 0 && e < E) atomicAdd(&my_cnt[R + e], 1);
    else if (e != -1 && blockIdx.x == 0) report(c, kLlBadExpert, kLlPhaseCounts, static_cast<int32_t>(i), e, epoch);
  }
  __syncthreads();

  // 2. Both count vectors to every rank.
  if (blockIdx.x == 0)
    for (int64_t i = threadIdx.x; i < R * words; i += kThreads) {
      const int d = static_cast<int>(i / words);
      const int64_t k = i % words;
      st_release_sys(c.peers[d].meta + me * words + k, (epoch << 32) | static_cast<u64>(my_cnt[k]));
    }

  // 3. Offsets at each destination; (block 0) what this rank receives.
  auto tagged = [&](u64 w) { return (w >> 32) == (epoch & 0xffffffffull); };
  for (int64_t k = threadIdx.x; k < words; k += kThreads) {
    const bool dest = k < R, local_expert = k >= R && (k - R) / G == me;
    if (!dest && !local_expert) continue;
    int64_t below = 0, total = 0;
    for (int s = 0; s < R; ++s) {
      u64 v = 0;
      if (!wait_for(c, c.peers[me].meta + s * words + k, tagged, v, s, kLlPhaseCounts, epoch)) {
        failed = 1;
        break;
      }
      const int64_t n = static_cast<int64_t>(v & 0xffffffffull);
      if (s < me) below += n;
      total += n;
      if (blockIdx.x == 0 && k == me) c.recv_info[2 + s] = static_cast<int32_t>(n);
    }
    if (dest) base[k] = static_cast<int>(below);
    if (blockIdx.x == 0 && k == me) c.recv_info[0] = static_cast<int32_t>(total);
    if (blockIdx.x == 0 && local_expert) c.recv_info[2 + R + (k - R) % G] = static_cast<int32_t>(total);
  }
  __syncthreads();
  if (failed) return;

  // 4. A warp per token: its row, ids and weights to every rank that owns one of its experts.
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + warp; t < T; t += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int e = lane < K ? a.topk_ids[t * K + lane] : -1;
    const bool valid = e >= 0 && e < E;
    const float w = lane < K ? a.topk_weights[t * K + lane] : 0.0f;
    for (int d = 0; d < R; ++d) {
      const bool mine = valid && e / G == d;
      if (__ballot_sync(0xffffffffu, mine) == 0) continue;
      const int64_t row = static_cast<int64_t>(base[d]) + slot[t * R + d];
      const NmPeer& p = c.peers[d];
      warp_copy16(p.recv_x + row * H, a.x + t * H, 2 * H, lane);
      if (lane < K) {
        p.recv_idx[row * K + lane] = mine ? static_cast<int32_t>(e - d * G) : -1;
        p.recv_w[row * K + lane] = mine ? w : 0.0f;
      }
      if (lane == 0) p.recv_src[row] = static_cast<int32_t>(me * M + t);
    }
  }

  // 5. Done writing to every rank; wait for every rank's blocks.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    for (int d = 0; d < R; ++d) red_add_release_sys(c.peers[d].dispatch_done + me, 1);
  }
  if (threadIdx.x < R) {
    const int s = threadIdx.x;
    const u64 want = epoch * static_cast<u64>(gridDim.x);
    u64 v = 0;
    if (!wait_for(c, c.peers[me].dispatch_done + s, [&](u64 x) { return x >= want; }, v, s, kLlPhaseDispatchData, epoch))
      failed = 1;
  }
  __syncthreads();
  if (threadIdx.x == 0 && !failed) a.epochs[blockIdx.x] = epoch;
}

__global__ void __launch_bounds__(kThreads) nm_combine_kernel(const __grid_constant__ NmCombineArgs a) {
  const NmCommon& c = a.c;
  const int me = c.rank, R = c.ranks;
  const int64_t E = c.num_experts, G = c.local_experts, H = c.hidden, K = c.top_k, T = a.tokens, M = c.max_tokens;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u64 epoch = a.epochs[blockIdx.x] + 1;
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;

  // 1. Every received row's partial back to its source, at [this rank][token].
  const int64_t rows = c.recv_info[0];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + warp; i < rows; i += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int32_t src = c.peers[me].recv_src[i];
    const int s = static_cast<int>(src / M);
    const int64_t t = src % M;
    warp_copy16(c.peers[s].combine_buf + (me * M + t) * H, a.partial + i * H, 2 * H, lane);
  }

  // 2. Done writing; wait for every rank.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    for (int d = 0; d < R; ++d) red_add_release_sys(c.peers[d].combine_done + me, 1);
  }
  if (threadIdx.x < R) {
    const int s = threadIdx.x;
    const u64 want = epoch * static_cast<u64>(gridDim.x);
    u64 v = 0;
    if (!wait_for(c, c.peers[me].combine_done + s, [&](u64 x) { return x >= want; }, v, s, kLlPhaseCombineData, epoch))
      failed = 1;
  }
  __syncthreads();
  if (failed) return;

  // 3. out[t] = sum over the ranks token t went to, in rank order, of their partials (f32).
  const uint16_t* buf = c.peers[me].combine_buf;
  const int64_t pieces = T * (H / 8);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < pieces;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t t = i / (H / 8), col = (i % (H / 8)) * 8;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int d = 0; d < R; ++d) {
      if (!token_on_rank(a.topk_ids, t, K, E, G, d)) continue;
      const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(buf + (d * M + t) * H + col));
      const uint16_t* h = reinterpret_cast<const uint16_t*>(&raw);
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[k] += bf16_bits_to_f(h[k]);
    }
    if (a.out_bf16) {
      __nv_bfloat16* o = static_cast<__nv_bfloat16*>(a.out) + t * H + col;
#pragma unroll
      for (int k = 0; k < 8; ++k) o[k] = __float2bfloat16_rn(acc[k]);
    } else {
      float* o = static_cast<float*>(a.out) + t * H + col;
#pragma unroll
      for (int k = 0; k < 8; ++k) o[k] = acc[k];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) a.epochs[blockIdx.x] = epoch;
}

}  // namespace

size_t nm_dispatch_smem_bytes(int64_t max_tokens, int ranks, int64_t num_experts) {
  return sizeof(int) * static_cast<size_t>(max_tokens * ranks + kWarps * ranks + ranks + num_experts + ranks);
}

cudaError_t nm_prepare_kernels(size_t smem, int* blocks_per_sm) {
  cudaError_t e = cudaFuncSetAttribute(nm_dispatch_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  int d = 0, cb = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&d, nm_dispatch_kernel, kThreads, smem);
  if (e != cudaSuccess) return e;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&cb, nm_combine_kernel, kThreads, 0);
  if (e != cudaSuccess) return e;
  *blocks_per_sm = d < cb ? d : cb;
  return cudaSuccess;
}

cudaError_t nm_launch_dispatch(const NmDispatchArgs& a, cudaStream_t stream) {
  nm_dispatch_kernel<<<a.c.blocks, kThreads, nm_dispatch_smem_bytes(a.c.max_tokens, a.c.ranks, a.c.num_experts), stream>>>(a);
  return cudaGetLastError();
}

cudaError_t nm_launch_combine(const NmCombineArgs& a, cudaStream_t stream) {
  nm_combine_kernel<<<a.c.blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace pdserve::moe::gpu::detail
