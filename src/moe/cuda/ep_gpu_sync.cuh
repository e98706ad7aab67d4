// Device helpers shared by the GPU EP kernels (low-latency and normal mode): release/acquire words
// at system scope, bounded waits that report the rank they waited for, and the deterministic
// ranking of routing entries. `C` is a kernel's common-argument struct with err, err_claim,
// abort_flag and timeout_ns (ep_ll_kernels.h).
#pragma once

#include <cstdint>

#include "moe/cuda/ep_ll_kernels.h"

namespace pdserve::moe::gpu::detail {

using u64 = unsigned long long;

static __device__ __forceinline__ u64 ld_acquire_sys(const u64* p) {
  u64 v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
static __device__ __forceinline__ void st_release_sys(u64* p, u64 v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
static __device__ __forceinline__ void red_add_release_sys(u64* p, u64 v) {
  asm volatile("red.release.sys.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
static __device__ __forceinline__ u64 now_ns() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The first report of a rank wins; the fields are written before `code` so a host that sees the
// code sees them too.
template <typename C>
__device__ void report(const C& c, int32_t code, int32_t phase, int32_t peer, int64_t value, u64 epoch) {
  if (atomicCAS(c.err_claim, 0, code) != 0) return;
  c.err->phase = phase;
  c.err->peer = peer;
  c.err->value = value;
  c.err->epoch = static_cast<int64_t>(epoch);
  __threadfence_system();
  c.err->code = code;
  __threadfence_system();
  // A rank that gave up waiting will not take part in this call's later phases: its peers stop
  // waiting for it now (they report kLlAborted) instead of each sitting out the whole timeout.
  if (code == kLlTimeout) *const_cast<volatile int32_t*>(c.abort_flag) = 1;
}

// Spins until ok(*p); false (after reporting) on timeout or group abort, or when another block of
// this rank has already given up on one.
// After the first polls a waiting thread sleeps between polls (doubling up to kMaxBackoffNs): a
// rank waiting long for a peer (an idle rank's exchange starts while the peer still runs its
// attention) would otherwise flood the memory system with system-scope loads from thousands of
// threads and slow down the very kernels it waits for when ranks share a GPU (measured on one
// H200, two ranks, one request: ~100 ms per decode step without the sleep).
constexpr unsigned kSpinPolls = 64, kMaxBackoffNs = 2048;

template <typename C, typename Ok>
__device__ bool wait_for(const C& c, const u64* p, Ok ok, u64& v, int peer, int phase, u64 epoch) {
  const u64 start = now_ns();
  unsigned backoff = 32;
  for (unsigned it = 0;; ++it) {
    v = ld_acquire_sys(p);
    if (ok(v)) return true;
    if (it >= kSpinPolls) {
      __nanosleep(backoff);
      backoff = backoff < kMaxBackoffNs ? 2 * backoff : kMaxBackoffNs;
    }
    if ((it & 127u) == 127u) {
      // Another block of this rank gave up waiting: stop too. (A bad argument does not stop the
      // waits: the rank still completes the exchange so its peers are not left waiting.)
      const int32_t claimed = *reinterpret_cast<volatile int32_t*>(c.err_claim);
      if (claimed == kLlTimeout || claimed == kLlAborted) return false;
      if (*c.abort_flag != 0) {
        report(c, kLlAborted, phase, peer, 0, epoch);
        return false;
      }
      if (now_ns() - start > c.timeout_ns) {
        report(c, kLlTimeout, phase, peer, 0, epoch);
        return false;
      }
    }
  }
}

// Copies `bytes` (a multiple of 16, both ends 16-byte aligned) with the 32 lanes of a warp.
static __device__ __forceinline__ void warp_copy16(void* dst, const void* src, int64_t bytes, int lane) {
  const uint4* s = static_cast<const uint4*>(src);
  uint4* d = static_cast<uint4*>(dst);
#pragma unroll 4
  for (int64_t i = lane; i < bytes / 16; i += 32) d[i] = s[i];
}


// Ranks entries [0, n) by key in index order: slot[i] = number of earlier entries with the same key
// (keys in [0, keys), -1 = none: slot[i] left unset), count[k] = entries with key k. 8 warps walk 8
// contiguous segments (__match_any_sync gives the rank inside 32 lanes), then a prefix over warps:
// deterministic, no atomics. warp_cnt: shared [kWarps][keys]. Ends with __syncthreads(); returns the
// segment length. Called by every thread of the block.
template <typename Key>
__device__ int64_t rank_entries(int64_t n, int64_t keys, Key key, int* slot, int* warp_cnt, int* count) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t i = threadIdx.x; i < kWarps * keys; i += kThreads) warp_cnt[i] = 0;
  __syncthreads();
  const int64_t seg = ((n + kWarps - 1) / kWarps + 31) / 32 * 32;
  {
    const int64_t lo = warp * seg, hi = lo + seg < n ? lo + seg : n;
    int* cnt = warp_cnt + warp * keys;
    for (int64_t start = lo; start < hi; start += 32) {
      const int64_t i = start + lane;
      const int k = i < hi ? key(i) : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, k);
      const int before = __popc(peers & ((1u << lane) - 1u));
      if (k >= 0) slot[i] = cnt[k] + before;
      __syncwarp();
      if (k >= 0 && lane == __ffs(peers) - 1) cnt[k] += __popc(peers);
      __syncwarp();
    }
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < keys; k += kThreads) {
    int run = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int c = warp_cnt[w * keys + k];
      warp_cnt[w * keys + k] = run;
      run += c;
    }
    count[k] = run;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const int k = key(i);
    if (k >= 0) slot[i] += warp_cnt[(i / seg) * keys + k];
  }
  __syncthreads();
  return seg;
}

}  // namespace pdserve::moe::gpu::detail
