// Sampling on the device for DeepseekV3GpuModel::forward_sample: each sequence's parameters and
// draw key (RowSampling) go to device buffers, ops::sample_batch draws from the device logits, and
// only the ids come back to the host ([B] i32 instead of [B, vocab] f32 logits).
#pragma once

#if defined(PDSERVE_HAVE_CUDA)

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "model/deepseek_v3_gpu.h"
#include "tensor/tensor.h"

namespace pdserve::model {

class GpuRowSampler {
 public:
  // Buffers for `rows` sequences (they grow to the largest batch seen). Growing synchronises
  // `stream` (the old buffers may still be read) and allocates: EP ranks, which must not allocate
  // while serving (a peer's spinning exchange could wait for it), reserve their largest at creation.
  void reserve(int64_t rows, cudaStream_t stream);
  // One id per row of dev_logits ([B, vocab] f32 on the device; B == rows.size()), on the host.
  // Synchronises `stream`.
  Tensor sample(const Tensor& dev_logits, const std::vector<RowSampling>& rows, cudaStream_t stream);

 private:
  Tensor f32_;  // [3, cap]: temperature, top_p, min_p
  Tensor i32_;  // [2, cap]: top_k, sampled ids
  Tensor i64_;  // [2, cap]: seed, offset
  int64_t cap_ = 0;
};

}  // namespace pdserve::model

#endif  // PDSERVE_HAVE_CUDA
