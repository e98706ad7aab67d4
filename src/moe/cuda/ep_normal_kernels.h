// Kernels of the GPU normal-mode EP exchange (moe/cuda/ep_normal_gpu.h is the API). Same
// synchronisation as the low-latency kernels (ep_ll_kernels.h): epoch-tagged count words and
// monotonic done counters in the receiver's memory, bounded waits, nothing reset between calls.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "moe/cuda/ep_ll_kernels.h"

namespace pdserve::moe::gpu::detail {

// One rank's receive side (M = max tokens per rank; a source sends each token at most once).
struct NmPeer {
  uint16_t* recv_x = nullptr;                   // [R*M][H] bf16, packed by source rank then token
  int32_t* recv_idx = nullptr;                  // [R*M][K] local expert ids, -1 where not local
  float* recv_w = nullptr;                      // [R*M][K] weights, 0 where the id is -1
  int32_t* recv_src = nullptr;                  // [R*M] source * M + token
  unsigned long long* meta = nullptr;           // [R][R + E] (epoch << 32) | value: tokens to each rank, entries per expert
  unsigned long long* dispatch_done = nullptr;  // [R]
  uint16_t* combine_buf = nullptr;              // [R][M][H] bf16: rank d's partial sum for token t
  unsigned long long* combine_done = nullptr;   // [R]
};

struct NmCommon {
  int ranks = 0, rank = 0;
  int64_t num_experts = 0, local_experts = 0, hidden = 0, max_tokens = 0, top_k = 0;
  int blocks = 0;
  unsigned long long timeout_ns = 0;
  NmPeer peers[kMaxRanks];
  // This rank's [2 + R + G]: total rows received, 0, rows from each source, rows per local expert.
  int32_t* recv_info = nullptr;
  LlError* err = nullptr;
  int32_t* err_claim = nullptr;
  const volatile int32_t* abort_flag = nullptr;
};

struct NmDispatchArgs {
  NmCommon c;
  const uint16_t* x = nullptr;  // [T][H] bf16
  const int32_t* topk_ids = nullptr;
  const float* topk_weights = nullptr;
  int64_t tokens = 0;
  unsigned long long* epochs = nullptr;
};

struct NmCombineArgs {
  NmCommon c;
  const uint16_t* partial = nullptr;  // [R*M][H] bf16; rows < recv_info[0] are read
  const int32_t* topk_ids = nullptr;  // [T][K], as dispatched
  int64_t tokens = 0;
  void* out = nullptr;                // [T][H] f32 or bf16
  bool out_bf16 = false;
  unsigned long long* epochs = nullptr;
};

size_t nm_dispatch_smem_bytes(int64_t max_tokens, int ranks, int64_t num_experts);
cudaError_t nm_prepare_kernels(size_t smem, int* blocks_per_sm);
cudaError_t nm_launch_dispatch(const NmDispatchArgs& a, cudaStream_t stream);
cudaError_t nm_launch_combine(const NmCombineArgs& a, cudaStream_t stream);

}  // namespace pdserve::moe::gpu::detail
