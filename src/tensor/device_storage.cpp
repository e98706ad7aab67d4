// Device memory for tensors. The only file of tensor/ that calls CUDA, so a CPU-only build keeps
// the same API (device requests then fail with a clear message instead of a link error).
#include <cstring>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "tensor/tensor.h"

#ifdef PDSERVE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace pdserve {

#ifdef PDSERVE_HAVE_CUDA
namespace {
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(fmt::format("{}: {}", what, cudaGetErrorString(e)));
}
}  // namespace

std::shared_ptr<Storage> Storage::allocate_device(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes == 0 ? 256 : bytes);
  if (e != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_b, &total_b);
    throw std::runtime_error(fmt::format("cudaMalloc of {:.3f} GiB failed ({}); {:.3f} GiB free of {:.3f}",
                                         bytes / 1073741824.0, cudaGetErrorString(e), free_b / 1073741824.0,
                                         total_b / 1073741824.0));
  }
  auto s = borrow(p, bytes, nullptr, Device::kCuda);
  s->owned_ = true;
  return s;
}

void free_device_memory(void* p) { cudaFree(p); }

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) {
  if (n == 0) return;
  cudaMemcpyKind kind = dst_dev == Device::kCuda ? (src_dev == Device::kCuda ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                                 : (src_dev == Device::kCuda ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  check_cuda(cudaMemcpy(dst, src, n, kind), "cudaMemcpy");
}
#else
std::shared_ptr<Storage> Storage::allocate_device(size_t) {
  throw std::runtime_error("device memory requested, but this build has no CUDA (configure with PDSERVE_CUDA=ON)");
}

void free_device_memory(void*) {}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) {
  if (dst_dev != Device::kCpu || src_dev != Device::kCpu)
    throw std::runtime_error("device copy requested, but this build has no CUDA");
  std::memcpy(dst, src, n);
}
#endif

}  // namespace pdserve
