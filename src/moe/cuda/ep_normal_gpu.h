// GPU normal-mode EP dispatch/combine (prefill; DeepEP's normal mode, model-spec §6.1) for R ranks
// held by one process, one host thread per rank. Results equal the CPU moe::NormalDispatcher's:
// each token goes once to every rank owning one of its experts; the receiver's rows are packed by
// source rank then token, with recv_topk_idx rewritten to local ids (-1 elsewhere, weight 0 there)
// and per-expert counts. As in DeepEP, the host needs the received counts to size what follows
// (received() waits for them): this mode is not CUDA-graph capturable; low-latency mode is.
//
// Rows are bf16 (DeepEP's normal mode takes bf16 or a caller-made FP8 cast; only bf16 here). The
// contiguous per-expert layout for the grouped GEMM is the CPU's: moe::contiguous_layout(
// received.tokens_per_expert, alignment) on the host, then ops::moe_scatter on the device with its
// offsets as row_base (as moe::to_contiguous does on CPU ranks). Combine takes, per received row, the
// sum over this rank's experts of weight * expert output (bf16 [rows, H]; ops::moe_combine gives
// it), sends it back, and writes out[t] = the ranks' partials summed in rank order (overwritten).
//
// Synchronisation, timeouts, abort and the caller rules are those of ep_low_latency_gpu.h.
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
#include "moe/cuda/ep_normal_kernels.h"
#include "tensor/device_frees.h"
#include "tensor/tensor.h"

namespace pdserve::moe::gpu {

struct NormalGpuConfig {
  int64_t num_experts = 0;            // divisible by the number of ranks
  int64_t hidden = 0;                 // a multiple of 8
  int64_t max_tokens_per_rank = 4096;  // 1..8192; every call's T is at most this
  int64_t top_k = 8;                  // 1..32
  std::vector<int> devices;           // CUDA device of each rank (1..8 ranks)
  int blocks = 0;                     // per kernel per rank (0: as many as fit)
  std::chrono::milliseconds timeout{30000};
};

// What a rank received (views of its buffers, valid until its next dispatch).
struct NormalGpuReceived {
  int64_t rows = 0;                         // N_recv
  std::vector<int64_t> rows_from;           // [R] rows from each source rank (in that order)
  std::vector<int64_t> tokens_per_expert;   // [local experts], unpadded
  Tensor recv_x;                            // bf16 [rows, H]
  Tensor recv_topk_idx;                     // i32 [rows, K]
  Tensor recv_topk_weights;                 // f32 [rows, K]
};

class NormalGpuGroup;

class NormalGpuRank {
 public:
  // x bf16 [T, H], topk_ids i32 / topk_weights f32 [T, K], on this rank's device; T = 0 when idle.
  Status dispatch(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights, cudaStream_t stream);
  // Waits for the dispatch and returns what arrived (a host synchronisation, as in DeepEP).
  Result<NormalGpuReceived> received(cudaStream_t stream);
  // partial bf16 [>= rows, H] (rows as received), topk_ids as dispatched, out f32/bf16 [T, H].
  Status combine(const Tensor& partial, const Tensor& topk_ids, Tensor& out, cudaStream_t stream);
  Status synchronize(cudaStream_t stream);
  Status status() const;
  // Gives up on the group (every peer's waiting kernel fails with `reason`), as
  // LowLatencyGpuRank::abort.
  void abort(const std::string& reason);
  int rank() const { return rank_; }
  int device() const { return device_; }
  int ranks() const;
  const NormalGpuConfig& config() const;

 private:
  friend class NormalGpuGroup;
  NormalGpuRank() = default;
  detail::NmCommon common() const;
  Status fail_argument(const std::string& why);
  Status refuse_after_failure();

  NormalGpuGroup* group_ = nullptr;
  int rank_ = 0, device_ = 0;
  Tensor recv_x_, recv_idx_, recv_w_, recv_src_, recv_info_, meta_, dispatch_done_, combine_buf_, combine_done_;
  Tensor dispatch_epochs_, combine_epochs_, err_claim_;
  detail::LlError* err_ = nullptr;  // mapped host memory
  bool met_ = false;  // this rank's first dispatch passed the group's FirstCallRendezvous
  bool dispatched_ = false;
  int64_t last_tokens_ = 0;
  int64_t received_rows_ = -1;  // from received() for the last dispatch, -1 = not asked yet
};

class NormalGpuGroup {
 public:
  static Result<std::unique_ptr<NormalGpuGroup>> create(const NormalGpuConfig& config);
  ~NormalGpuGroup();
  NormalGpuGroup(const NormalGpuGroup&) = delete;
  NormalGpuGroup& operator=(const NormalGpuGroup&) = delete;

  int size() const { return static_cast<int>(ranks_.size()); }
  NormalGpuRank& rank(int r) { return *ranks_.at(static_cast<size_t>(r)); }
  const NormalGpuConfig& config() const { return config_; }
  int blocks() const { return blocks_; }
  int64_t local_experts() const { return config_.num_experts / size(); }
  void abort(const std::string& reason);
  std::string abort_reason() const;

 private:
  friend class NormalGpuRank;
  NormalGpuGroup() = default;

  NormalGpuConfig config_;
  int blocks_ = 0;
  std::vector<std::unique_ptr<NormalGpuRank>> ranks_;
  std::vector<detail::NmPeer> peers_;
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
