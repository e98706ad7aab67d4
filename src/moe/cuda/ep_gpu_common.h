// Host pieces shared by the GPU EP exchanges (low-latency and normal mode): CUDA errors as Status,
// peer access, grid sizing for kernels that spin, and the kernels' error reports as messages.
#pragma once

#if defined(PDSERVE_HAVE_CUDA)

#include <cuda_runtime.h>

#include <chrono>
#include <cstddef>
#include <functional>
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
