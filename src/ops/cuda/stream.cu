#include "ops/cuda/cuda_common.h"

namespace pdserve::ops::cuda {

namespace {
thread_local cudaStream_t t_stream = cudaStreamPerThread;
}

cudaStream_t current_stream() { return t_stream; }
void set_current_stream(cudaStream_t s) { t_stream = s; }

}  // namespace pdserve::ops::cuda
