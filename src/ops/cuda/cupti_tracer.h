// GPU kernel timings for the profiler's Chrome trace, from CUPTI activity records (what the
// PyTorch profiler shows as its "GPU" rows): each kernel's name, device start and end, device and
// stream, with the device timestamps converted to steady_clock so they line up with the CPU spans.
//
// Why dlopen: libcupti ships with the CUDA toolkit but not with every driver-only install; loading
// it at the first profile keeps `pdserve` runnable without it (the trace then has no GPU track and
// the log says why). PDSERVE_CUPTI_LIBRARY names the library file when it is somewhere unusual.
//
// CUPTI's activity API is process-wide, while several DP ranks of one process may profile at once:
// sessions share one enabled activity stream, each keeps the kernels of its own device that started
// after it did. Builds without CUDA compile a stub whose start() says so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

namespace pdserve::ops::cuda {

struct KernelRecord {
  std::string name;          // demangled
  int64_t start_ns = 0;      // steady_clock nanoseconds (converted from CUPTI's clock)
  int64_t end_ns = 0;
  uint32_t device = 0;
  uint32_t stream = 0;
  uint32_t correlation = 0;  // CUPTI's id of the launch call
  uint32_t graph = 0;        // CUDA graph id when replayed from a graph, else 0
};

class KernelTracer {
 public:
  // Starts recording the kernels of the calling thread's current CUDA device. Errors when this build
  // has no CUDA, libcupti cannot be loaded, or CUPTI refuses (no driver, another tool holds it).
  static Result<std::unique_ptr<KernelTracer>> start();
  ~KernelTracer();
  KernelTracer(const KernelTracer&) = delete;
  KernelTracer& operator=(const KernelTracer&) = delete;

  // Flushes CUPTI's buffers and returns this session's kernels in start order; ends the session.
  // The caller synchronizes its streams first: kernels still running may be missing.
  std::vector<KernelRecord> stop();

 private:
  KernelTracer(int device, int64_t start_ns) : device_(device), start_ns_(start_ns) {}
  int device_;
  int64_t start_ns_;
  bool stopped_ = false;
};

}  // namespace pdserve::ops::cuda
