// The second half of the routed experts' MLP on the masked layout (decode / EP low-latency):
// ops::cuda::silu_mul_quant_fp8_masked and ops::grouped_masked_silu_down.
//
// Bounds: silu_mul_quant_fp8_masked must give the same bytes as silu_mul_masked into a buffer of the
// inputs' dtype followed by quantize_fp8_masked (its contract), so it is compared exactly. The
// composed op (SiLU product quantized to FP8, W8A8 wgmma) is compared with the CPU op on the same
// rows (SiLU product in f32, W8A16): e4m3's 3 mantissa bits put ~2.6% rms rounding on every
// activation, so 6e-2 of max |ref|, as linear_gpu_test's W8A8-vs-W8A16 bound.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm.h"

namespace pdserve::gpu_test {
namespace {

Tensor counts_of(const std::vector<int32_t>& c) {
  Tensor t = Tensor::empty({static_cast<int64_t>(c.size())}, DType::kI32);
  std::memcpy(t.raw_data(), c.data(), c.size() * sizeof(int32_t));
  return t;
}

Tensor to_bf16_device(const Tensor& f32) {
  Tensor b = Tensor::empty(f32.shape(), DType::kBF16);
  convert_from_f32(DType::kBF16, f32.data<float>(), b.raw_data(), static_cast<size_t>(f32.numel()));
  return b.to(Device::kCuda);
}

TEST(SiluMulQuantFp8Masked, EqualsSiluMulThenQuantizerAndLeavesTheRest) {
  const int64_t G = 4, M = 70, n = 256;
  const std::vector<int32_t> c = {0, 1, 70, 33};
  const Tensor counts = counts_of(c).to(Device::kCuda);
  {
    const Tensor fused = to_bf16_device(random_host({G, M, 2 * n}, 5, 3.0f));
    const Tensor gate = fused.slice(2, 0, n), up = fused.slice(2, n, 2 * n);
    // Reference: silu_mul_masked into a bf16 buffer, then the masked quantizer.
    Tensor act = poisoned_device({G, M, n}, DType::kBF16);
    ops::silu_mul_masked(gate, up, counts, act);
    Tensor q_want = poisoned_device({G, M, n}, DType::kF8E4M3), s_want = poisoned_device({G, n / 128, M});
    ops::cuda::quantize_fp8_masked(act, counts, q_want, s_want);
    Tensor q = poisoned_device({G, M, n}, DType::kF8E4M3), s = poisoned_device({G, n / 128, M});
    ops::cuda::silu_mul_quant_fp8_masked(gate, up, counts, q, s);
    const Tensor qh = q.to(Device::kCpu), qw = q_want.to(Device::kCpu), sh = s.to(Device::kCpu), sw = s_want.to(Device::kCpu);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t r = 0; r < M; ++r) {
        const bool counted = r < c[g];
        for (int64_t j = 0; j < n; ++j) {
          const uint8_t got = qh.data<uint8_t>()[(g * M + r) * n + j];
          ASSERT_EQ(got, counted ? qw.data<uint8_t>()[(g * M + r) * n + j] : uint8_t{0xFF}) << g << " " << r << " " << j;
        }
        for (int64_t b = 0; b < n / 128; ++b) {
          const float got = sh.data<float>()[(g * (n / 128) + b) * M + r];
          if (counted)
            ASSERT_EQ(got, sw.data<float>()[(g * (n / 128) + b) * M + r]) << g << " " << r;
          else
            ASSERT_TRUE(std::isnan(got)) << "scale of uncounted row " << r << " of group " << g << " was written";
        }
      }
  }
  // f32 inputs run too (no reference quantizer for f32 masked rows: finite scales on counted rows).
  const Tensor f = random_host({G, M, 2 * n}, 6, 3.0f).to(Device::kCuda);
  Tensor q = poisoned_device({G, M, n}, DType::kF8E4M3), s = poisoned_device({G, n / 128, M});
  ops::cuda::silu_mul_quant_fp8_masked(f.slice(2, 0, n), f.slice(2, n, 2 * n), counts, q, s);
  const Tensor sh = s.to(Device::kCpu);
  EXPECT_TRUE(std::isfinite(sh.data<float>()[(2 * (n / 128)) * M + 69]));
  // Bad arguments.
  Tensor bad_s = poisoned_device({G, n / 128 + 1, M});
  EXPECT_THROW(ops::cuda::silu_mul_quant_fp8_masked(f.slice(2, 0, n), f.slice(2, n, 2 * n), counts, q, bad_s),
               std::invalid_argument);
}

// grouped_masked_silu_down against the CPU op on the counted rows, on the FP8 wgmma path (the
// default) and with PDSERVE_MASKED_EXPERTS=gemv (SiLU into act, then the GEMV); rows past the counts
// keep their poison.
TEST(GroupedMaskedSiluDown, MatchesCpuOnBothPaths) {
  const int64_t G = 3, M = 70, inter = 256, hidden = 384;
  const std::vector<int32_t> c = {70, 0, 21};
  std::vector<Weight> down_h, down_d;
  for (int64_t g = 0; g < G; ++g) {
    down_h.push_back(to_fp8_weight(master_weight(hidden, inter, 300 + static_cast<uint64_t>(g))));
    down_d.push_back(down_h.back().to(Device::kCuda));
  }
  const Tensor table = ops::expert_pointer_table(down_d);
  const Tensor counts_h = counts_of(c), counts = counts_h.to(Device::kCuda);
  // bf16-valued gate|up so that the CPU and the GPU see the same inputs.
  Tensor gu_h = random_host({G, M, 2 * inter}, 9, 2.0f);
  const Tensor gu = to_bf16_device(gu_h);
  gu_h = gu.to(Device::kCpu).to_f32();
  Tensor act_h = Tensor::empty({G, M, inter}, DType::kF32), want = Tensor::empty({G, M, hidden}, DType::kF32);
  ops::silu_mul_masked(gu_h.slice(2, 0, inter), gu_h.slice(2, inter, 2 * inter), counts_h, act_h);
  ops::grouped_gemv_masked(act_h, counts_h, down_h, Tensor(), want);
  for (const char* path : {"wgmma", "gemv"}) {
    SCOPED_TRACE(path);
    ::setenv("PDSERVE_MASKED_EXPERTS", path, 1);
    Tensor act = poisoned_device({G, M, inter}, DType::kBF16), y = poisoned_device({G, M, hidden}, DType::kBF16);
    ops::grouped_masked_silu_down(gu, counts, down_d, table, act, y);
    const Tensor yh = y.to(Device::kCpu).to_f32();
    double num = 0, den = 0;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t r = 0; r < M; ++r)
        for (int64_t j = 0; j < hidden; ++j) {
          const float got = yh.data<float>()[(g * M + r) * hidden + j];
          if (r >= c[g]) {
            ASSERT_TRUE(std::isnan(got)) << "row " << r << " of group " << g << " past its count was written";
            continue;
          }
          const float w = want.data<float>()[(g * M + r) * hidden + j];
          ASSERT_TRUE(std::isfinite(got)) << g << " " << r << " " << j;
          num = std::max(num, static_cast<double>(std::fabs(got - w)));
          den = std::max(den, static_cast<double>(std::fabs(w)));
        }
    EXPECT_LT(num / den, 6e-2);
  }
  ::unsetenv("PDSERVE_MASKED_EXPERTS");
  // gate_up not twice down's in-features.
  Tensor act = poisoned_device({G, M, inter}, DType::kBF16), y = poisoned_device({G, M, hidden}, DType::kBF16);
  EXPECT_THROW(ops::grouped_masked_silu_down(gu.slice(2, 0, inter), counts, down_d, table, act, y), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::gpu_test
