// Shared pieces of the CUDA ops: error checks and the stream every op runs on.
//
// Streams: each thread has a current stream (default: the per-thread default stream). A model
// runner sets its own stream once (set_current_stream) so its whole forward — and a CUDA graph
// captured from it — runs on one stream without passing it through every op signature.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pdserve::ops::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

cudaStream_t current_stream();
void set_current_stream(cudaStream_t s);

// Multiprocessors of the current device (at least 1), for grids sized in waves.
int sm_count();

// Checks the last launch (cheap: no synchronisation).
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace pdserve::ops::cuda
