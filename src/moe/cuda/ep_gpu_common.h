// Host pieces shared by the GPU EP exchanges (low-latency and normal mode): CUDA errors as Status,
// peer access, grid sizing for kernels that spin, and the kernels' error reports as messages.
#pragma once

#if defined(PDSERVE_HAVE_CUDA)

#include <cuda_runtime.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "moe/cuda/ep_ll_kernels.h"
#include "tensor/tensor.h"

namespace pdserve::moe::gpu::detail {

Status cuda_status(cudaError_t e, const std::string& what);

// Checks every device exists and enables peer access between every pair of distinct ones.
Status enable_peer_access(const std::vector<int>& devices, const std::string& who);

// Blocks per kernel per rank such that every rank's kernels on a GPU are resident at once. `prepare`
// runs on each used device (current) and returns blocks per SM (0 = does not fit). `wanted` > 0 is
// checked against that bound; 0 picks one block per SM share.
Result<int> pick_blocks(const std::vector<int>& devices, int wanted, const std::function<Result<int>(int device)>& prepare,
                        const std::string& who);

// A rank's first dispatch: primes its stream, then meets every other rank (host side) before any
// rank launches a spinning kernel. Priming: the first kernel launched on a newly created stream may
// not start until the kernels running on the GPU end (measured on an H200 with bench/gpu/
// coschedule_probe_bench: 19-53 of 400 four-rank meetings on fresh streams stalled; none on streams
// that had run a kernel before), which deadlocks ranks that spin waiting for each other; so a no-op
// kernel runs there first and is waited for, and the meeting makes sure no peer spins meanwhile
// (priming alone still stalled once: a prime queued behind peers already spinning). A stream being
// captured into a graph cannot run the no-op; callers keep every later exchange call, and graph
// replays, on streams that have run a kernel before (the model's runs its warm-up passes first).
// arrive() returns once every rank has arrived, or fails when the group aborts (abort_flag) or after
// `timeout`, naming the ranks that did not arrive; then it aborts the group (peers stop), and a
// later arrive() of that rank returns the same failure. Ranks call it once (until it succeeds);
// they are threads of one process.
class FirstCallRendezvous {
 public:
  struct Group {
    std::chrono::milliseconds timeout;
    const volatile int32_t* abort_flag;
    std::function<std::string()> abort_reason;
    std::function<void(const std::string&)> abort;
  };
  FirstCallRendezvous(int ranks, Group group)
      : group_(std::move(group)), arrived_(static_cast<size_t>(ranks), false), failure_(static_cast<size_t>(ranks), ok_status()) {}
  Status arrive(int rank, cudaStream_t stream, const std::string& who);

 private:
  Status wait_for_all(std::unique_lock<std::mutex>& lock, const std::string& who);  // mu_ held

  Group group_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> arrived_;
  std::vector<Status> failure_;
};

// Zero-filled pinned host memory mapped into every device's address space.
Result<void*> alloc_mapped(size_t bytes);

Tensor device_zeros(const Shape& shape, DType dtype);

// The kernels' report as a Status (OK when none). `who` names the rank, e.g. "EP low-latency GPU rank 0".
struct ReportContext {
  std::string who;
  int device = 0;
  std::chrono::milliseconds timeout{0};
  int64_t top_k = 0, num_experts = 0, slab_rows = 0;
  std::string abort_reason;
};
Status report_status(const LlError& err, const ReportContext& ctx);

}  // namespace pdserve::moe::gpu::detail

#endif  // PDSERVE_HAVE_CUDA
