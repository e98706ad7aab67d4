// CUPTI kernel records (ops/cuda/cupti_tracer.h) on the device: a kernel run under the tracer
// comes back with its name, device, stream and device times mapped into the steady_clock window
// around the launch; two sessions at once (two DP ranks of one process) both see it, and nothing
// run after stop() is recorded.
#include <cuda_runtime.h>

#include <chrono>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/cupti_tracer.h"
#include "ops/elementwise.h"

namespace pdserve::gpu_test {
namespace {

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One elementwise kernel (add_inplace) on the current device, finished before returning.
void run_add_kernel(Tensor& y, const Tensor& x) {
  ops::add_inplace(y, x);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(CuptiTracerGpu, RecordsAKernelWithDeviceTimesInTheLaunchWindow) {
  Tensor y = random_host({64, 256}, 1).to(Device::kCuda), x = random_host({64, 256}, 2).to(Device::kCuda);
  run_add_kernel(y, x);  // warm: module load and first-launch costs stay out of the window
  auto tracer = ops::cuda::KernelTracer::start();
  ASSERT_TRUE(tracer.has_value()) << tracer.error().message();
  auto second = ops::cuda::KernelTracer::start();  // a second rank's session shares CUPTI
  ASSERT_TRUE(second.has_value()) << second.error().message();
  const int64_t t0 = steady_ns();
  run_add_kernel(y, x);
  const int64_t t1 = steady_ns();
  const auto records = (*tracer)->stop();
  ASSERT_FALSE(records.empty());
  int device = -1;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  const auto& k = records.back();
  EXPECT_FALSE(k.name.empty());
  EXPECT_NE(k.name.find("add"), std::string::npos) << k.name;
  EXPECT_EQ(static_cast<int>(k.device), device);
  EXPECT_GT(k.end_ns, k.start_ns);
  EXPECT_LT(k.end_ns - k.start_ns, 1'000'000'000);
  // The clock mapping: the kernel ran between the host times around launch + synchronize (a
  // millisecond of slack for the offset estimate).
  EXPECT_GE(k.start_ns, t0 - 1'000'000) << "start " << k.start_ns << " window " << t0 << ".." << t1;
  EXPECT_LE(k.end_ns, t1 + 1'000'000) << "end " << k.end_ns << " window " << t0 << ".." << t1;
  // The second session is still on: it gets the kernel too, and then kernels after it stopped are not kept.
  const auto seen_by_second = (*second)->stop();
  ASSERT_FALSE(seen_by_second.empty());
  EXPECT_EQ(seen_by_second.back().correlation, k.correlation);
  auto third = ops::cuda::KernelTracer::start();
  ASSERT_TRUE(third.has_value());
  const auto empty = (*third)->stop();
  EXPECT_TRUE(empty.empty()) << empty.size() << " kernels recorded with none launched";
}

}  // namespace
}  // namespace pdserve::gpu_test
