// model::fused_host_mlp: the host form of an MLP as the GPU keeps it (gate and up concatenated by
// rows, one GEMM). Runs on the CPU: the concatenation and the conversions are host work.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "model/gpu_weights.h"
#include "tensor/dtype.h"

namespace pdserve::model {
namespace {

// [rows, cols] fp8 with random codes (NaN patterns avoided) and [ceil(rows/128), ceil(cols/128)] scales.
Weight random_fp8(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  Weight w{Tensor::empty({rows, cols}, DType::kF8E4M3),
           Tensor::empty({(rows + 127) / 128, (cols + 127) / 128}, DType::kF32)};
  auto* q = static_cast<uint8_t*>(w.weight.raw_data());
  for (int64_t i = 0; i < rows * cols; ++i) q[i] = f32_to_fp8e4m3(std::uniform_real_distribution<float>(-400, 400)(rng));
  for (int64_t i = 0; i < w.scale_inv.numel(); ++i) w.scale_inv.data<float>()[i] = 0.001f * static_cast<float>(i + 1);
  return w;
}

Weight random_bf16(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  Weight w{Tensor::empty({rows, cols}, DType::kBF16), Tensor()};
  auto* p = static_cast<uint16_t*>(w.weight.raw_data());
  for (int64_t i = 0; i < rows * cols; ++i) p[i] = f32_to_bf16(std::uniform_real_distribution<float>(-1, 1)(rng));
  return w;
}

// Row r of `fused` (as f32) equals row r of `part` shifted by `first`.
void expect_rows(const Weight& fused, int64_t first, const Weight& part) {
  const Tensor f = fused.to_f32(), p = part.to_f32();
  const int64_t cols = p.size(1);
  for (int64_t r = 0; r < p.size(0); ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float want = bf16_to_f32(f32_to_bf16(p.data<float>()[r * cols + c]));  // bf16 when converted
      const float got = f.data<float>()[(first + r) * cols + c];
      if (fused.is_block_fp8())
        ASSERT_EQ(got, p.data<float>()[r * cols + c]) << "row " << r << " col " << c;
      else
        ASSERT_EQ(got, want) << "row " << r << " col " << c;
    }
}

TEST(FusedHostMlp, Fp8InWholeScaleBlocksStaysFp8WithItsScalesConcatenated) {
  const MlpWeights m{random_fp8(256, 384, 1), random_fp8(256, 384, 2), random_fp8(384, 256, 3)};
  const GpuMlp f = fused_host_mlp(m);
  ASSERT_TRUE(f.gate_up.is_block_fp8());
  EXPECT_EQ(f.gate_up.weight.shape(), (Shape{512, 384}));
  EXPECT_EQ(f.gate_up.scale_inv.shape(), (Shape{4, 3}));
  EXPECT_EQ(0, std::memcmp(f.gate_up.weight.raw_data(), m.gate_proj.weight.raw_data(), 256 * 384));
  EXPECT_EQ(0, std::memcmp(static_cast<const char*>(f.gate_up.weight.raw_data()) + 256 * 384, m.up_proj.weight.raw_data(),
                           256 * 384));
  expect_rows(f.gate_up, 0, m.gate_proj);
  expect_rows(f.gate_up, 256, m.up_proj);
  EXPECT_EQ(f.inter(), 256);
  EXPECT_TRUE(f.defined());
}

TEST(FusedHostMlp, Fp8WithPartialScaleBlocksGoesToBf16) {
  // 64 gate rows: the up rows would start inside gate's last scale block, so both become bf16.
  const MlpWeights m{random_fp8(64, 256, 4), random_fp8(64, 256, 5), random_fp8(256, 64, 6)};
  const GpuMlp f = fused_host_mlp(m);
  EXPECT_EQ(f.gate_up.weight.dtype(), DType::kBF16);
  EXPECT_FALSE(f.gate_up.scale_inv.defined());
  EXPECT_EQ(f.gate_up.weight.shape(), (Shape{128, 256}));
  expect_rows(f.gate_up, 0, m.gate_proj);
  expect_rows(f.gate_up, 64, m.up_proj);
}

TEST(FusedHostMlp, Bf16IsConcatenatedAndMismatchesAreRefused) {
  const MlpWeights m{random_bf16(24, 48, 7), random_bf16(24, 48, 8), random_bf16(48, 24, 9)};
  const GpuMlp f = fused_host_mlp(m);
  EXPECT_EQ(f.gate_up.weight.shape(), (Shape{48, 48}));
  expect_rows(f.gate_up, 0, m.gate_proj);
  expect_rows(f.gate_up, 24, m.up_proj);
  const MlpWeights bad{random_bf16(24, 48, 7), random_bf16(24, 40, 8), random_bf16(48, 24, 9)};
  EXPECT_THROW(fused_host_mlp(bad), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::model
