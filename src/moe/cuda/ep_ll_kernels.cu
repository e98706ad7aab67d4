// GPU low-latency EP dispatch and combine (DeepEP's low_latency_dispatch / low_latency_combine,
// model-spec §6.2), with the receive layout of the CPU LowLatencyDispatcher: rows of an expert's
// slab packed by source rank, then source token order, so both give the same rows in the same place.
//
// Dispatch, each rank, one launch of `blocks` blocks:
//   1. every block ranks each (token, k) entry among its expert's entries in token order (8 warps
//      walk 8 segments with __match_any_sync, then a prefix over warps): deterministic, no atomics;
//   2. block 0 sends this rank's per-expert counts to every rank (epoch-tagged words);
//   3. every block waits for all ranks' counts, so it knows where its rows go in every slab:
//      row = (rows of lower ranks for that expert) + (rank of the entry);
//   4. a warp per token quantizes it once (FP8, 1x128 groups, the quantizer the other fused kernels
//      use) into local staging, then writes it straight into each destination's slab (16-byte
//      stores; the scales and a source index for the way back go with it);
//   5. each block bumps dispatch_done on every rank, then waits until every rank's blocks have
//      written here (so the kernel ends only when this rank's slabs are complete).
// Combine: every valid slab row goes back to its token's rank (into [t*K + j]); blocks bump
// combine_done; once all ranks are done, the owner sums w[t,j] * row over j in f32.
//
// All waits are bounded (globaltimer, wall-clock ns, not clock64 whose rate varies with the SM
// clock) and give up with an error naming the rank that did not arrive. Blocks spin, so every block
// of every rank on a GPU must be resident at once: the host sizes `blocks` for that.
#include <cuda_bf16.h>

#include "moe/cuda/ep_ll_kernels.h"
#include "moe/cuda/ep_gpu_sync.cuh"
#include "ops/cuda/device_math.cuh"

namespace pdserve::moe::gpu::detail {

namespace {

__global__ void __launch_bounds__(kThreads) ll_dispatch_kernel(const __grid_constant__ LlDispatchArgs a) {
  const LlCommon& c = a.c;
  const int me = c.rank, R = c.ranks;
  const int64_t E = c.num_experts, G = c.local_experts, H = c.hidden, K = c.top_k, T = a.tokens, N = T * K;
  const int64_t slab = R * c.max_tokens, groups = H / kQuantGroup;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u64 epoch = a.epochs[blockIdx.x] + 1;

  extern __shared__ int smem[];
  int* slot = smem;                          // [max*K]: rank of the entry among its expert's entries
  int* warp_cnt = slot + c.max_tokens * K;   // [W][E]: per-warp counts, then per-warp offsets
  int* my_cnt = warp_cnt + kWarps * E;       // [E]: rows this rank sends to each expert
  int* base = my_cnt + E;                    // [E]: first row of this rank's rows in each slab
  __shared__ int failed;

  unsigned long long* trace = a.trace + 4 * blockIdx.x;
  if (threadIdx.x == 0) {
    failed = 0;
    trace[0] = now_ns();
    trace[1] = trace[2] = trace[3] = 0;
  }

  // 1. Rank of each entry within its expert, in (token, k) order; this rank's count per expert.
  rank_entries(
      N, E,
      [&](int64_t i) {
        const int e = a.topk_ids[i];
        if (e < -1 || e >= E) {
          if (blockIdx.x == 0) report(c, kLlBadExpert, kLlPhaseCounts, static_cast<int32_t>(i), e, epoch);
          return -1;  // skipped: the call fails, but peers are not left waiting
        }
        return e;
      },
      slot, warp_cnt, my_cnt);
  if (threadIdx.x == 0) trace[1] = now_ns();

  // 2. Counts to every rank (all-gather: a sender needs the lower ranks' counts for its offsets).
  if (blockIdx.x == 0)
    for (int64_t i = threadIdx.x; i < R * E; i += kThreads) {
      const int d = static_cast<int>(i / E);
      const int64_t e = i % E;
      st_release_sys(c.peers[d].counts + me * E + e, (epoch << 32) | static_cast<u64>(my_cnt[e]));
    }

  // 3. Everyone's counts: offsets of this rank's rows, and (block 0) this rank's recv_count.
  for (int64_t e = threadIdx.x; e < E; e += kThreads) {
    int64_t below = 0, total = 0;
    for (int s = 0; s < R; ++s) {
      u64 v = 0;
      if (!wait_for(
              c, c.peers[me].counts + s * E + e, [&](u64 w) { return (w >> 32) == (epoch & 0xffffffffull); }, v, s,
              kLlPhaseCounts, epoch)) {
        failed = 1;
        break;
      }
      const int64_t n = static_cast<int64_t>(v & 0xffffffffull);
      if (s < me) below += n;
      total += n;
    }
    base[e] = static_cast<int>(below);
    if (blockIdx.x == 0 && e / G == me) c.recv_count[e % G] = static_cast<int32_t>(total < slab ? total : slab);
  }
  __syncthreads();
  if (failed) return;
  if (threadIdx.x == 0) trace[2] = now_ns();

  // 4. A warp per token: quantize it once into local staging (8 groups' loads in flight at a time),
  //    then each 16-byte piece is loaded once and stored into every destination slab (lane j < K
  //    works out entry j's destination; the warp shares them through shared memory).
  __shared__ char* dst_row[kWarps][kMaxTopK];
  __shared__ float* dst_scale[kWarps][kMaxTopK];
  const int64_t row_bytes = c.fp8 ? H : 2 * H;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + warp; t < T; t += static_cast<int64_t>(gridDim.x) * kWarps) {
    const void* src = a.x + t * H;
    if (c.fp8) {
      constexpr int kBatch = 8;
      for (int64_t kb0 = 0; kb0 < groups; kb0 += kBatch) {
        uint2 raw[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u)
          if (kb0 + u < groups) raw[u] = __ldg(reinterpret_cast<const uint2*>(a.x + t * H + (kb0 + u) * kQuantGroup + 4 * lane));
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          if (kb0 + u >= groups) break;  // warp-uniform: quant_group shuffles over the full warp
          const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw[u]);
          const float2 f0 = __bfloat1622float2(h[0]), f1 = __bfloat1622float2(h[1]);
          const float y[4] = {f0.x, f0.y, f1.x, f1.y};
          ops::cuda::dev::quant_group(y, a.xq + t * H + (kb0 + u) * kQuantGroup, a.xs + t * groups + kb0 + u, lane);
        }
      }
      src = a.xq + t * H;
    }
    if (lane < K) {
      char* row_ptr = nullptr;
      float* scale_ptr = nullptr;
      const int e = a.topk_ids[t * K + lane];
      if (e >= 0 && e < E) {
        const int d = static_cast<int>(e / G);
        const int64_t g = e % G;
        const int64_t row = static_cast<int64_t>(base[e]) + slot[t * K + lane];
        if (row >= slab) {  // only possible when a token names one expert twice
          report(c, kLlOverflow, kLlPhaseDispatchData, static_cast<int32_t>(t * K + lane), row, epoch);
        } else {
          const LlPeer& p = c.peers[d];
          row_ptr = static_cast<char*>(p.recv_x) + (g * slab + row) * row_bytes;
          if (c.fp8) scale_ptr = p.recv_scales + g * groups * slab + row;
          p.recv_src[g * slab + row] = static_cast<int32_t>(me * c.max_tokens * K + t * K + lane);
        }
      }
      dst_row[warp][lane] = row_ptr;
      dst_scale[warp][lane] = scale_ptr;
    }
    __syncwarp();  // staging bytes and destinations are read by every lane below
    const uint4* piece = static_cast<const uint4*>(src);
    for (int64_t i = lane; i < row_bytes / 16; i += 32) {
      const uint4 v = piece[i];
      for (int64_t j = 0; j < K; ++j)
        if (char* dst = dst_row[warp][j]) reinterpret_cast<uint4*>(dst)[i] = v;
    }
    if (c.fp8)
      for (int64_t kb = lane; kb < groups; kb += 32) {
        const float v = a.xs[t * groups + kb];
        for (int64_t j = 0; j < K; ++j)
          if (float* dst = dst_scale[warp][j]) dst[kb * slab] = v;
      }
    __syncwarp();  // dst_row / dst_scale are rewritten for the warp's next token
  }

  // 5. Tell every rank this block is done writing to it, then wait for every rank's blocks.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    for (int d = 0; d < R; ++d) red_add_release_sys(c.peers[d].dispatch_done + me, 1);
  }
  if (threadIdx.x < R) {
    const int s = threadIdx.x;
    const u64 want = epoch * static_cast<u64>(gridDim.x);
    u64 v = 0;
    if (!wait_for(
            c, c.peers[me].dispatch_done + s, [&](u64 w) { return w >= want; }, v, s, kLlPhaseDispatchData, epoch))
      failed = 1;
  }
  __syncthreads();
  if (threadIdx.x == 0 && !failed) a.epochs[blockIdx.x] = epoch;
  if (threadIdx.x == 0) trace[3] = now_ns();
}

__device__ __forceinline__ float bf16_bits_to_f(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

__global__ void __launch_bounds__(kThreads) ll_combine_kernel(const __grid_constant__ LlCombineArgs a) {
  const LlCommon& c = a.c;
  const int me = c.rank, R = c.ranks;
  const int64_t G = c.local_experts, H = c.hidden, K = c.top_k, T = a.tokens;
  const int64_t slab = R * c.max_tokens;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u64 epoch = a.epochs[blockIdx.x] + 1;
  __shared__ int failed;
  extern __shared__ int row_start[];  // [G + 1]: prefix of recv_count, so warps share rows evenly

  if (threadIdx.x == 0) {
    // This rank's dispatch gave up (timeout or abort): its slabs and recv_src are not this call's,
    // so sending rows back could write anywhere. The group is unusable; peers stop on the report.
    const int32_t claimed = *reinterpret_cast<volatile int32_t*>(c.err_claim);
    failed = claimed == kLlTimeout || claimed == kLlAborted;
    int run = 0;
    for (int64_t g = 0; g < G; ++g) {
      row_start[g] = run;
      run += min(max(c.recv_count[g], 0), static_cast<int32_t>(slab));
    }
    row_start[G] = run;
  }
  __syncthreads();
  if (failed) return;

  // 1. Every valid row back to its token's rank, at [t*K + j] of its combine buffer.
  const int total = row_start[G];
  int64_t g = 0;
  for (int q = blockIdx.x * kWarps + warp; q < total; q += gridDim.x * kWarps) {
    while (row_start[g + 1] <= q) ++g;  // q only grows, so g does too
    const int64_t p = q - row_start[g];
    const int32_t info = c.peers[me].recv_src[g * slab + p];
    const int s = static_cast<int>(info / (c.max_tokens * K));
    const int64_t idx = info % (c.max_tokens * K);
    if (info < 0 || s >= R) {  // never written by this call's dispatch: report, do not write anywhere
      if (lane == 0) report(c, kLlBadSource, kLlPhaseCombineData, static_cast<int32_t>(g), info, epoch);
      continue;
    }
    warp_copy16(c.peers[s].combine_buf + idx * H, a.expert_out + (g * slab + p) * H, 2 * H, lane);
  }

  // 2. Done writing to every rank; wait until every rank has written here.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    for (int d = 0; d < R; ++d) red_add_release_sys(c.peers[d].combine_done + me, 1);
  }
  if (threadIdx.x < R) {
    const int s = threadIdx.x;
    const u64 want = epoch * static_cast<u64>(gridDim.x);
    u64 v = 0;
    if (!wait_for(
            c, c.peers[me].combine_done + s, [&](u64 w) { return w >= want; }, v, s, kLlPhaseCombineData, epoch))
      failed = 1;
  }
  __syncthreads();
  if (failed) return;

  // 3. out[t] = sum_j w[t,j] * row(t, j), in j order (f32), 8 columns per thread.
  const uint16_t* buf = c.peers[me].combine_buf;
  const int64_t pieces = T * (H / 8);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < pieces;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t t = i / (H / 8), col = (i % (H / 8)) * 8;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < K; ++j) {
      const int e = a.topk_ids[t * K + j];
      if (e < 0 || e >= c.num_experts) continue;
      const float w = a.topk_weights[t * K + j];
      // Written by peers during this kernel: read through L2 (.cg), never a stale L1 line.
      const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(buf + (t * K + j) * H + col));
      const uint16_t* h = reinterpret_cast<const uint16_t*>(&raw);
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[k] = fmaf(w, bf16_bits_to_f(h[k]), acc[k]);
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

__global__ void stream_prime_kernel() {}

}  // namespace

cudaError_t launch_stream_prime(cudaStream_t stream) {
  stream_prime_kernel<<<1, 32, 0, stream>>>();
  return cudaGetLastError();
}

size_t ll_dispatch_smem_bytes(int64_t max_tokens, int64_t top_k, int64_t num_experts) {
  return sizeof(int) * static_cast<size_t>(max_tokens * top_k + kWarps * num_experts + 2 * num_experts);
}

// Also loads both kernels into the current device's context now: with lazy module loading (the
// default since CUDA 12) a first launch loads its module, and loading while a peer's kernel spins
// waiting for this one could stall until the timeout.
cudaError_t ll_prepare_kernels(size_t smem, int* blocks_per_sm) {
  cudaError_t e = cudaFuncSetAttribute(ll_dispatch_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  int d = 0, cb = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&d, ll_dispatch_kernel, kThreads, smem);
  if (e != cudaSuccess) return e;
  // The combine kernel's dynamic shared memory is G + 1 ints, far below the dispatch's.
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&cb, ll_combine_kernel, kThreads, 4096);
  if (e != cudaSuccess) return e;
  *blocks_per_sm = d < cb ? d : cb;
  return cudaSuccess;
}

cudaError_t ll_launch_dispatch(const LlDispatchArgs& a, cudaStream_t stream) {
  const size_t smem = ll_dispatch_smem_bytes(a.c.max_tokens, a.c.top_k, a.c.num_experts);
  ll_dispatch_kernel<<<a.c.blocks, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t ll_launch_combine(const LlCombineArgs& a, cudaStream_t stream) {
  const size_t smem = sizeof(int) * static_cast<size_t>(a.c.local_experts + 1);
  ll_combine_kernel<<<a.c.blocks, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace pdserve::moe::gpu::detail
