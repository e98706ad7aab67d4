#include "ops/cuda/cuda_common.h"

namespace pdserve::ops::cuda {

namespace {
thread_local cudaStream_t t_stream = cudaStreamPerThread;
}

cudaStream_t current_stream() { return t_stream; }
void set_current_stream(cudaStream_t s) { t_stream = s; }

int sm_count() {
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return sms > 0 ? sms : 1;
}

}  // namespace pdserve::ops::cuda
