#include "model/gpu_row_sampler.h"

#if defined(PDSERVE_HAVE_CUDA)

#include <algorithm>
#include <climits>
#include <stdexcept>

#include "ops/cuda/cuda_common.h"
#include "ops/sampling.h"

namespace pdserve::model {

using ops::cuda::check;

void GpuRowSampler::reserve(int64_t rows, cudaStream_t stream) {
  if (cap_ >= rows) return;
  check(cudaStreamSynchronize(stream), "sampling buffers");
  cap_ = std::max<int64_t>(rows, 64);
  f32_ = Tensor::empty({3, cap_}, DType::kF32, Device::kCuda);
  i32_ = Tensor::empty({2, cap_}, DType::kI32, Device::kCuda);
  i64_ = Tensor::empty({2, cap_}, DType::kI64, Device::kCuda);
}

Tensor GpuRowSampler::sample(const Tensor& dev_logits, const std::vector<RowSampling>& rows, cudaStream_t stream) {
  const int64_t n = dev_logits.size(0);
  if (static_cast<int64_t>(rows.size()) != n) throw std::runtime_error("forward_sample: one RowSampling per sequence");
  reserve(n, stream);
  // Staged in one host block per dtype; the copies are ordered on the stream before the sampler.
  std::vector<float> f(static_cast<size_t>(3 * cap_));
  std::vector<int32_t> k(static_cast<size_t>(cap_));
  std::vector<int64_t> l(static_cast<size_t>(2 * cap_));
  for (int64_t r = 0; r < n; ++r) {
    const RowSampling& rs = rows[static_cast<size_t>(r)];
    f[r] = rs.params.temperature;
    f[cap_ + r] = rs.params.top_p;
    f[2 * cap_ + r] = rs.params.min_p;
    k[r] = static_cast<int32_t>(std::clamp<int64_t>(rs.params.top_k, -1, INT32_MAX));
    l[r] = static_cast<int64_t>(rs.seed);
    l[cap_ + r] = rs.offset;
  }
  check(cudaMemcpyAsync(f32_.raw_data(), f.data(), f.size() * 4, cudaMemcpyHostToDevice, stream), "sampling params");
  check(cudaMemcpyAsync(i32_.raw_data(), k.data(), k.size() * 4, cudaMemcpyHostToDevice, stream), "sampling params");
  check(cudaMemcpyAsync(i64_.raw_data(), l.data(), l.size() * 8, cudaMemcpyHostToDevice, stream), "sampling params");
  ops::SamplingBatch p;
  p.temperature = f32_.select(0).slice(0, 0, n);
  p.top_p = f32_.select(1).slice(0, 0, n);
  p.min_p = f32_.select(2).slice(0, 0, n);
  p.top_k = i32_.select(0).slice(0, 0, n);
  p.seed = i64_.select(0).slice(0, 0, n);
  p.offset = i64_.select(1).slice(0, 0, n);
  Tensor ids = i32_.select(1).slice(0, 0, n);
  ops::sample_batch(dev_logits, p, ids);
  Tensor out = Tensor::empty({n}, DType::kI32);
  check(cudaMemcpyAsync(out.raw_data(), ids.raw_data(), static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, stream),
        "sampled ids");
  check(cudaStreamSynchronize(stream), "forward");
  return out;
}

}  // namespace pdserve::model

#endif  // PDSERVE_HAVE_CUDA
