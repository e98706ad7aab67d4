// Device memory for tensors. The only file of tensor/ that calls CUDA, so a CPU-only build keeps
// the same API (device requests then fail with a clear message instead of a link error).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "tensor/device_frees.h"
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

std::atomic<int> g_deferrals{0};

bool debug_alloc() {
  static const bool on = [] {
    const char* v = std::getenv("PDSERVE_DEBUG_DEVICE_ALLOC");
    return v != nullptr && std::strcmp(v, "0") != 0 && *v != '\0';
  }();
  return on;
}

// Blocks are cached by their allocated size: requests rounded up to 512 bytes.
size_t rounded(size_t bytes) { return (std::max<size_t>(bytes, 1) + 511) / 512 * 512; }

struct FreedBlocks {
  std::unordered_map<size_t, std::vector<void*>> by_size;
  ~FreedBlocks() {
    for (auto& [size, blocks] : by_size)
      for (void* p : blocks) cudaFree(p);  // at thread exit; errors (runtime gone) ignored
  }
};
thread_local FreedBlocks t_freed;
}  // namespace

// PDSERVE_DEVICE_FREE_DEFERRAL=0 turns deferral off (to show the stall it prevents).
DeferredDeviceFrees::DeferredDeviceFrees() {
  const char* v = std::getenv("PDSERVE_DEVICE_FREE_DEFERRAL");
  active_ = v == nullptr || std::strcmp(v, "0") != 0;
  if (active_) g_deferrals.fetch_add(1);
}
DeferredDeviceFrees::~DeferredDeviceFrees() {
  if (active_) g_deferrals.fetch_sub(1);
}

std::shared_ptr<Storage> Storage::allocate_device(size_t bytes) {
  const size_t size = rounded(bytes);
  const bool deferring = g_deferrals.load() > 0;
  void* p = nullptr;
  if (auto it = t_freed.by_size.find(size); it != t_freed.by_size.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
  } else {
    if (deferring && debug_alloc()) std::fprintf(stderr, "[device-alloc] cudaMalloc of %zu bytes ...\n", size);
    const cudaError_t e = cudaMalloc(&p, size);
    if (e != cudaSuccess) {
      size_t free_b = 0, total_b = 0;
      cudaGetLastError();
      cudaMemGetInfo(&free_b, &total_b);
      throw std::runtime_error(fmt::format("cudaMalloc of {:.3f} GiB failed ({}); {:.3f} GiB free of {:.3f}",
                                           bytes / 1073741824.0, cudaGetErrorString(e), free_b / 1073741824.0,
                                           total_b / 1073741824.0));
    }
  }
  if (deferring && debug_alloc()) std::fprintf(stderr, "[device-alloc] %p %zu bytes\n", p, size);
  auto s = borrow(p, bytes, nullptr, Device::kCuda);
  s->owned_ = true;
  return s;
}

void free_device_memory(void* p, size_t bytes) {
  if (g_deferrals.load() > 0) {
    if (debug_alloc()) std::fprintf(stderr, "[device-alloc] %p %zu bytes freed (kept for reuse)\n", p, rounded(bytes));
    t_freed.by_size[rounded(bytes)].push_back(p);
    return;
  }
  cudaFree(p);
}

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

void free_device_memory(void*, size_t) {}

DeferredDeviceFrees::DeferredDeviceFrees() = default;
DeferredDeviceFrees::~DeferredDeviceFrees() = default;

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) {
  if (dst_dev != Device::kCpu || src_dev != Device::kCpu)
    throw std::runtime_error("device copy requested, but this build has no CUDA");
  std::memcpy(dst, src, n);
}
#endif

}  // namespace pdserve
