// CUDA FP8 per-token-group quantizer against the CPU reference: the same bytes and the same scales,
// bit for bit (both compute amax, amax / 448 and x / s in IEEE f32 and round to nearest even).
#include <cstring>
#include <limits>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/quant.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

// x [m, k] whose rows and 128-groups have different magnitudes (so a scale written to the wrong
// row or group shows), with some all-zero groups (amax clamped to 1e-4) and some tiny values
// (fp8 subnormals after scaling).
Tensor varied_input(int64_t m, int64_t k, uint32_t seed) {
  Tensor x = random_host({m, k}, seed);
  float* p = x.data<float>();
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const int64_t g = c / 128;
      float& v = p[r * k + c];
      v *= std::ldexp(1.0f, static_cast<int>((r * 3 + g * 5) % 11) - 5);
      if ((r + 2 * g) % 7 == 3) v = 0.0f;          // an all-zero group
      if ((r + g) % 5 == 1 && c % 3 == 0) v *= 1e-3f;  // small values inside a group
    }
  return x;
}

Tensor as_dtype(const Tensor& f32, DType dt) {
  if (dt == DType::kF32) return f32.clone();
  Tensor out = Tensor::empty(f32.shape(), dt);
  convert_from_f32(dt, f32.data<float>(), out.raw_data(), static_cast<size_t>(f32.numel()));
  return out;
}

void expect_same_bytes(const Tensor& got_host, const Tensor& want_host, const std::string& what) {
  ASSERT_EQ(got_host.nbytes(), want_host.nbytes()) << what;
  const auto* a = static_cast<const uint8_t*>(got_host.raw_data());
  const auto* b = static_cast<const uint8_t*>(want_host.raw_data());
  const size_t es = dtype_size(got_host.dtype());
  size_t mismatches = 0, first = 0;
  for (size_t i = 0; i < got_host.nbytes(); ++i)
    if (a[i] != b[i]) {
      if (mismatches++ == 0) first = i / es;
    }
  EXPECT_EQ(mismatches, 0u) << what << ": " << mismatches << " differing bytes, first at element " << first;
}

TEST(QuantGpu, BitExactAgainstCpu) {
  // (m, k): one token; V3's K dims (7168, 1536, 2048); partial last group with K % 8 == 0 (vector
  // path) and K % 8 != 0 (scalar path); many rows.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 128},  {7, 7168},  {128, 1536}, {33, 200},
                                                           {5, 130},  {3, 1},     {512, 2048}, {1000, 7168}};
  uint32_t seed = 10;
  for (auto [m, k] : shapes) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const std::string what = "m=" + std::to_string(m) + " k=" + std::to_string(k) + " x " + dtype_name(dt);
      Tensor x = as_dtype(varied_input(m, k, ++seed), dt);
      const int64_t groups = (k + 127) / 128;
      Tensor q_ref = Tensor::empty({m, k}, DType::kF8E4M3);
      Tensor s_ref = Tensor::empty({groups, m}, DType::kF32);
      ops::quantize_fp8_per_token_group(x, q_ref, s_ref);

      Tensor xd = x.to(Device::kCuda);
      Tensor qd = poisoned_device({m, k}, DType::kF8E4M3);
      Tensor sd = poisoned_device({groups, m}, DType::kF32);
      ops::quantize_fp8_per_token_group(xd, qd, sd);
      expect_same_bytes(qd.to(Device::kCpu), q_ref, what + " q");
      expect_same_bytes(sd.to(Device::kCpu), s_ref, what + " scales");
    }
  }
}

// The reference itself follows model-spec §4.2: scale = max(amax, 1e-4) / 448, q = e4m3(x / s).
TEST(QuantGpu, ReferenceFollowsSpec) {
  Tensor x = Tensor::empty({2, 256}, DType::kF32);
  float* p = x.data<float>();
  for (int c = 0; c < 256; ++c) p[c] = (c % 2 ? -1.0f : 1.0f) * static_cast<float>(c) / 10.0f;  // row 0
  // row 1: group 0 all zeros, group 1 holds one value
  p[256 + 130] = 3.0f;
  Tensor q = Tensor::empty({2, 256}, DType::kF8E4M3);
  Tensor s = Tensor::empty({2, 2}, DType::kF32);
  ops::quantize_fp8_per_token_group(x, q, s);
  const float* sv = s.data<float>();  // [group][row]
  EXPECT_EQ(sv[0 * 2 + 0], 12.7f / 448.0f);
  EXPECT_EQ(sv[1 * 2 + 0], 25.5f / 448.0f);
  EXPECT_EQ(sv[0 * 2 + 1], 1e-4f / 448.0f);
  EXPECT_EQ(sv[1 * 2 + 1], 3.0f / 448.0f);
  const uint8_t* qv = q.data<uint8_t>();
  EXPECT_EQ(fp8e4m3_to_f32(qv[127]), -448.0f);  // the group's amax maps to -+448
  EXPECT_EQ(qv[256 + 5], 0);
  EXPECT_EQ(fp8e4m3_to_f32(qv[256 + 130]), 448.0f);
  for (int c = 0; c < 128; ++c) EXPECT_EQ(qv[c], f32_to_fp8e4m3(p[c] / (12.7f / 448.0f))) << c;
}

}  // namespace
}  // namespace pdserve::gpu_test
