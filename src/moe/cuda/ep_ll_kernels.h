// Kernels of the GPU low-latency EP exchange (moe/cuda/ep_low_latency_gpu.h is the API; this header
// is the plain-struct boundary between the C++20 host code and the CUDA translation unit).
//
// Every rank's buffers are plain device pointers known to every rank (one process; peers on other
// GPUs are reached through peer access). Ranks synchronise inside the kernels through words in the
// *receiver's* memory, so every spin reads local memory:
//   counts[s][e]      (epoch << 32) | rows rank s sends to expert e. The epoch is in the word, so a
//                     stale count from the last call can never be taken for this call's.
//   dispatch_done[s]  blocks of rank s that finished writing into this rank, monotonic: call n is
//   combine_done[s]   complete when it reaches n * blocks. Nothing is ever reset (graph replays too).
// The epoch of a call lives in device memory (one counter per block, bumped by that block only),
// not in a kernel argument, so a captured CUDA graph replays with fresh epochs.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace pdserve::moe::gpu::detail {

inline constexpr int kMaxRanks = 8;
inline constexpr int kThreads = 256;
inline constexpr int kWarps = kThreads / 32;
inline constexpr int kQuantGroup = 128;
inline constexpr int kMaxTopK = 32;  // lane j of a warp handles a token's entry j

enum LlErrorCode : int32_t { kLlOk = 0, kLlTimeout = 1, kLlAborted = 2, kLlBadExpert = 3, kLlOverflow = 4, kLlBadSource = 5 };
enum LlPhase : int32_t { kLlPhaseCounts = 1, kLlPhaseDispatchData = 2, kLlPhaseCombineData = 3 };

// Written by the first block of a rank that gives up; lives in mapped host memory so the host can
// read it without synchronising. `code` is written last.
struct LlError {
  volatile int32_t code;
  volatile int32_t phase;
  volatile int32_t peer;       // the rank waited for (timeout), or the flat index t*K+j (bad expert)
  volatile int32_t pad;
  volatile int64_t value;      // the bad expert id, or the slab row that overflowed
  volatile int64_t epoch;      // which call (1 = the first)
};

// One rank's receive side, as seen by every rank.
struct LlPeer {
  void* recv_x = nullptr;                        // [G][R*max][H] fp8 e4m3 or bf16
  float* recv_scales = nullptr;                  // [G][H/128][R*max] (fp8 only; M-major per expert)
  int32_t* recv_src = nullptr;                   // [G][R*max]: source * (max*K) + t*K + j
  unsigned long long* counts = nullptr;          // [R][E]
  unsigned long long* dispatch_done = nullptr;   // [R]
  uint16_t* combine_buf = nullptr;               // [max*K][H] bf16 bits: expert rows back at their owner
  unsigned long long* combine_done = nullptr;    // [R]
};

struct LlCommon {
  int ranks = 0, rank = 0;
  int64_t num_experts = 0, local_experts = 0, hidden = 0, max_tokens = 0, top_k = 0;
  bool fp8 = true;
  int blocks = 0;
  unsigned long long timeout_ns = 0;
  LlPeer peers[kMaxRanks];
  int32_t* recv_count = nullptr;             // this rank's [G]
  LlError* err = nullptr;                    // this rank's (mapped host memory)
  int32_t* err_claim = nullptr;              // this rank's device word: first failing block wins
  const volatile int32_t* abort_flag = nullptr;  // the group's (mapped host memory)
};

struct LlDispatchArgs {
  LlCommon c;
  const uint16_t* x = nullptr;        // [T][H] bf16 bits
  const int32_t* topk_ids = nullptr;  // [T][K]
  int64_t tokens = 0;
  uint8_t* xq = nullptr;              // [max][H] staging: this rank's tokens quantized once
  float* xs = nullptr;                // [max][H/128]
  unsigned long long* epochs = nullptr;  // [blocks]
  // [blocks][4]: globaltimer (ns) when each block entered, ranked its entries, had every rank's
  // counts, and ended; the last call's, for stall reports (four stores per block per call).
  unsigned long long* trace = nullptr;
};

struct LlCombineArgs {
  LlCommon c;
  const uint16_t* expert_out = nullptr;  // [G][R*max][H] bf16 bits
  const int32_t* topk_ids = nullptr;     // [T][K]
  const float* topk_weights = nullptr;   // [T][K]
  int64_t tokens = 0;
  void* out = nullptr;                   // [T][H] f32 or bf16
  bool out_bf16 = false;
  unsigned long long* epochs = nullptr;  // [blocks]
};

// Dynamic shared memory the dispatch kernel needs.
size_t ll_dispatch_smem_bytes(int64_t max_tokens, int64_t top_k, int64_t num_experts);
// On the current device: allows `smem` bytes of dynamic shared memory and returns how many blocks of
// the dispatch and combine kernels fit on one SM at once (the smaller of the two).
cudaError_t ll_prepare_kernels(size_t smem, int* blocks_per_sm);
// A no-op kernel on `stream` (ep_gpu_common.h, FirstCallRendezvous, says why).
cudaError_t launch_stream_prime(cudaStream_t stream);
cudaError_t ll_launch_dispatch(const LlDispatchArgs& a, cudaStream_t stream);
cudaError_t ll_launch_combine(const LlCombineArgs& a, cudaStream_t stream);

}  // namespace pdserve::moe::gpu::detail
