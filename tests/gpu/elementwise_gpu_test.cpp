// CUDA elementwise ops against the CPU reference on random inputs.
#include "gpu/gpu_test_util.h"
#include "ops/elementwise.h"

namespace pdserve::gpu_test {
namespace {

TEST(ElementwiseGpu, SiluMulMatchesCpu) {
  for (auto shape : {Shape{1, 1}, Shape{7, 129}, Shape{256, 2048}}) {
    Tensor g = random_host(shape, 1, 3.0f), u = random_host(shape, 2);
    Tensor want = Tensor::empty(shape, DType::kF32);
    ops::silu_mul(g, u, want);
    Tensor out = poisoned_device(shape);
    Tensor gd = g.to(Device::kCuda), ud = u.to(Device::kCuda);
    ops::silu_mul(gd, ud, out);
    EXPECT_LT(rel_max_err(out.to(Device::kCpu), want), 1e-6) << shape_to_string(shape);
  }
}

TEST(ElementwiseGpu, AddInplaceMatchesCpu) {
  Tensor y = random_host({33, 100}, 3), x = random_host({33, 100}, 4);
  Tensor want = y.clone();
  ops::add_inplace(want, x);
  Tensor yd = y.to(Device::kCuda), xd = x.to(Device::kCuda);
  ops::add_inplace(yd, xd);
  EXPECT_EQ(rel_max_err(yd.to(Device::kCpu), want), 0.0);
}

}  // namespace
}  // namespace pdserve::gpu_test
