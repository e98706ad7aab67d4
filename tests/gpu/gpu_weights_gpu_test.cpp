// model::overwrite_expert: a slot of uploaded experts becomes another expert in place (online
// rebalancing on GPU EP ranks), byte for byte what a fresh upload of that expert gives, at the
// same device addresses (the GEMV's pointer tables and captured graphs keep pointing at it).
#include <cstring>

#include "gpu/gpu_test_util.h"
#include "model/config.h"
#include "model/deepseek_v3_gpu.h"
#include "model/dummy_weights.h"
#include "model/gpu_weights.h"

namespace pdserve::gpu_test {
namespace {

bool same_bytes(const Tensor& device, const Tensor& other_device) {
  if (!device.defined() || !other_device.defined()) return device.defined() == other_device.defined();
  const Tensor a = device.to(Device::kCpu), b = other_device.to(Device::kCpu);
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(GpuWeights, OverwriteExpertLoadsASlotInPlace) {
  if (!model::cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3";
  // bf16 experts, and FP8 block-quantized ones (the tiny shapes run as bf16 on the device: the
  // conversion upload_experts makes must be the one overwrite_expert makes).
  for (const std::string& overrides :
       {std::string("{}"), std::string(R"({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", )"
                                       R"("activation_scheme": "dynamic", "weight_block_size": [128, 128]}})")}) {
    SCOPED_TRACE(overrides);
    auto cfg = model::load_model_config(dir, overrides);
    ASSERT_TRUE(cfg.has_value()) << cfg.error().message();
    model::MoeWeights host;
    host.experts = model::make_dummy_experts(*cfg, 7, 2, 0, 4);
    model::GpuExperts g = model::upload_experts(host, 0, 3);  // slots hold experts 0, 1, 2
    const void* slot1 = g.gate_up[1].weight.raw_data();
    const Tensor table_before = g.gate_up_table.to(Device::kCpu);
    ASSERT_TRUE(model::overwrite_expert(g, 1, host.experts[3]).has_value());
    const model::GpuExperts fresh = model::upload_experts(host, 3, 4);
    EXPECT_EQ(g.gate_up[1].weight.raw_data(), slot1);  // same buffer
    EXPECT_TRUE(same_bytes(g.gate_up[1].weight, fresh.gate_up[0].weight));
    EXPECT_TRUE(same_bytes(g.gate_up[1].scale_inv, fresh.gate_up[0].scale_inv));
    EXPECT_TRUE(same_bytes(g.down[1].weight, fresh.down[0].weight));
    EXPECT_TRUE(same_bytes(g.down[1].scale_inv, fresh.down[0].scale_inv));
    EXPECT_TRUE(same_bytes(g.gate_up_table, table_before.to(Device::kCuda)));
    // The other slots are untouched.
    const model::GpuExperts first = model::upload_experts(host, 0, 1);
    EXPECT_TRUE(same_bytes(g.gate_up[0].weight, first.gate_up[0].weight));
    EXPECT_FALSE(model::overwrite_expert(g, 3, host.experts[0]).has_value());  // no such slot
  }
}

}  // namespace
}  // namespace pdserve::gpu_test
