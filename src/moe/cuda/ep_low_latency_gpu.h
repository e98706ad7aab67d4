// GPU low-latency EP dispatch/combine (decode; DeepEP's low-latency mode, model-spec §6.2) for R
// ranks held by one process, one host thread per rank (as parallel::LocalWorld runs CPU ranks).
//
// Layouts and results are those of the CPU moe::LowLatencyDispatcher: on each rank recv_x is
// [local_experts][R * max_tokens][hidden], recv_count[local_experts] (on the device) says how many
// leading rows of each slab are valid, rows packed by source rank then source token order. Dispatch
// casts to FP8 e4m3 inside the kernel with 1x128 scales (the rounding of ops::quantize_fp8_per_
// token_group) into recv_scales [local_experts][hidden/128][R * max_tokens] (M-major per expert, like
// DeepEP's and ops' scale layout), or moves bf16 rows (fp8 = false). Combine takes the experts'
// unweighted bf16 outputs in the same layout and writes out[t] = sum_j topk_weights[t,j] * row(t,j)
// (overwritten, f32 or bf16) on the token's own rank.
//
// No host synchronisation: dispatch and combine are one kernel each on the caller's stream, so a
// CUDA graph can capture them (flags are epoch-numbered in device memory and never reset). Every
// wait inside the kernels is bounded by the group's timeout; a rank that does not arrive turns into
// an error naming it (synchronize() / status()), never a hang. After an error the group is unusable.
//
// Placement: ranks[r] lives on devices[r]. Ranks on different GPUs write each other's memory through
// peer access (enabled at creation). Several ranks may share one GPU (the kernels of all of them are
// resident together: the group sizes its grids for that).
//
// Caller rules (both can otherwise stall a peer until the timeout):
//  * every rank calls dispatch, then combine, the same number of times (a rank with no tokens calls
//    them with T = 0), on a stream created with cudaStreamNonBlocking (the legacy default stream and
//    cudaStreamPerThread synchronise with other threads' work);
//  * while peers may be inside a call, do not cudaFree / cudaDeviceSynchronize on a shared GPU (both
//    wait for the peers' spinning kernels, which wait for you);
//  * ranks sharing a GPU need their streams on distinct hardware queues, or one rank's kernel queues
//    behind another's spinning one: CUDA hands queues out round-robin at stream creation
//    (CUDA_DEVICE_MAX_CONNECTIONS, default 8), so create the ranks' streams one after another, or
//    raise that variable to at least the number of ranks per GPU.
//  * a stream's first kernel may wait for every running kernel: the group primes the stream of each
//    rank's first dispatch (ep_gpu_common.h, FirstCallRendezvous); later calls and graph replays
//    belong on that stream or on others that have run a kernel before.
#pragma once

#if defined(PDSERVE_HAVE_CUDA)

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "moe/cuda/ep_gpu_common.h"
#include "moe/cuda/ep_ll_kernels.h"
#include "tensor/device_frees.h"
#include "tensor/tensor.h"

namespace pdserve::moe::gpu {

struct LowLatencyGpuConfig {
  int64_t num_experts = 0;             // physical experts, divisible by the number of ranks
  int64_t hidden = 0;                  // a multiple of 128
  int64_t max_tokens_per_rank = 128;   // SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK, 1..1024
  int64_t top_k = 8;                   // every call's topk_ids is [T, top_k]
  bool fp8 = true;                     // dispatch FP8 + scales, else bf16
  std::vector<int> devices;            // CUDA device of each rank; size = number of ranks, 1..8
  int blocks = 0;                      // blocks per kernel per rank (0: as many as fit); same on all ranks
  std::chrono::milliseconds timeout{10000};
};

// One per rank slot for each of R ranks when `device_count` >= R, else all on device 0.
std::vector<int> default_devices(int ranks, int device_count);

class LowLatencyGpuGroup;

// One rank's handle. Called from that rank's thread only.
class LowLatencyGpuRank {
 public:
  // x bf16 [T, hidden], topk_ids i32 [T, top_k] (global physical expert ids, -1 = none; a token's
  // ids distinct), both on this rank's device, T <= max_tokens_per_rank. Fills recv_x, recv_scales,
  // recv_count when the kernel ends. Returns an error only for bad arguments (then the group is
  // aborted so peers fail at once) or an earlier failure; a timeout shows in synchronize().
  Status dispatch(const Tensor& x, const Tensor& topk_ids, cudaStream_t stream);
  // expert_out bf16 [local_experts, R * max_tokens, hidden] (rows past recv_count are never read),
  // topk_ids / topk_weights (i32 / f32 [T, top_k]) as given to the last dispatch, out f32 or bf16
  // [T, hidden], all on this rank's device.
  Status combine(const Tensor& expert_out, const Tensor& topk_ids, const Tensor& topk_weights, Tensor& out,
                 cudaStream_t stream);
  // The first-call meeting (ep_gpu_common.h, FirstCallRendezvous) on `stream`, if this rank has
  // not met its peers yet; dispatch does it itself, except while `stream` is being captured into a
  // CUDA graph (a capture runs nothing, and the peers may not be exchanging yet): then whoever
  // replays the graph calls this first.
  Status meet_peers(cudaStream_t stream);
  // Waits for `stream` and reports what the kernels reported (timeouts name the missing rank).
  Status synchronize(cudaStream_t stream);
  // The kernels' report so far, without waiting.
  Status status() const;
  // The exchange's synchronisation words, summarised for a stall report: per source rank the epochs
  // of its count words here, dispatch_done / combine_done, the blocks' call epochs, and the last
  // dispatch's per-block timeline (globaltimer at entry, ranked, all counts in, end). Copies from
  // the device (synchronously): call only once this rank's kernels have ended (e.g. after a timeout).
  std::string exchange_state() const;
  // Gives up on the group (every peer's waiting kernel fails with `reason`): for a caller that
  // cannot make the calls its peers wait for (e.g. its own work failed mid-pass).
  void abort(const std::string& reason);

  const Tensor& recv_x() const { return recv_x_; }            // fp8 or bf16 [G, R*max, H]
  const Tensor& recv_scales() const { return recv_scales_; }  // f32 [G, H/128, R*max] (fp8 only)
  const Tensor& recv_count() const { return recv_count_; }    // i32 [G]
  int rank() const { return rank_; }
  int device() const { return device_; }

 private:
  friend class LowLatencyGpuGroup;
  LowLatencyGpuRank() = default;
  detail::LlCommon common() const;
  Status check_tokens(const Tensor& t, DType dtype, int64_t cols, const char* what) const;
  Status fail_argument(const std::string& why);
  Status refuse_after_failure();

  LowLatencyGpuGroup* group_ = nullptr;
  int rank_ = 0, device_ = 0;
  Tensor recv_x_, recv_scales_, recv_src_, recv_count_;
  Tensor counts_, dispatch_done_, combine_buf_, combine_done_;
  Tensor xq_, xs_, dispatch_epochs_, combine_epochs_, err_claim_, dispatch_trace_;
  detail::LlError* err_ = nullptr;  // mapped host memory
  bool met_ = false;  // this rank's first dispatch passed the group's FirstCallRendezvous
  bool dispatched_ = false;
  int64_t last_tokens_ = 0;
};

class LowLatencyGpuGroup {
 public:
  static Result<std::unique_ptr<LowLatencyGpuGroup>> create(const LowLatencyGpuConfig& config);
  ~LowLatencyGpuGroup();
  LowLatencyGpuGroup(const LowLatencyGpuGroup&) = delete;
  LowLatencyGpuGroup& operator=(const LowLatencyGpuGroup&) = delete;

  int size() const { return static_cast<int>(ranks_.size()); }
  LowLatencyGpuRank& rank(int r) { return *ranks_.at(static_cast<size_t>(r)); }
  const LowLatencyGpuConfig& config() const { return config_; }
  int blocks() const { return blocks_; }
  int64_t local_experts() const { return config_.num_experts / size(); }
  // Every kernel waiting in this group gives up with "aborted: reason" (first reason kept).
  void abort(const std::string& reason);
  std::string abort_reason() const;

 private:
  friend class LowLatencyGpuRank;
  LowLatencyGpuGroup() = default;

  LowLatencyGpuConfig config_;
  int blocks_ = 0;
  std::vector<std::unique_ptr<LowLatencyGpuRank>> ranks_;
  std::vector<detail::LlPeer> peers_;
  int32_t* abort_flag_ = nullptr;  // mapped host memory
  mutable std::mutex mu_;
  // Device frees are deferred while the group lives (tensor.h says why); dropped first in the
  // destructor so the group's own buffers are really freed.
  std::unique_ptr<DeferredDeviceFrees> defer_frees_ = std::make_unique<DeferredDeviceFrees>();
  std::string abort_reason_;
  std::unique_ptr<detail::FirstCallRendezvous> first_call_;
};

}  // namespace pdserve::moe::gpu

#endif  // PDSERVE_HAVE_CUDA
