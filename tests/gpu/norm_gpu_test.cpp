// CUDA RMSNorm (f32 / bf16 activations, HF rounding order) and the fused RMSNorm + FP8 group
// quantisation, against the CPU op and the CPU quantiser on fresh random inputs.
//
// Bounds: f32 in/out: max|gpu - cpu| <= 2e-6 * max|cpu| (the only difference is the f32 vs double
// sum of squares). bf16: against an HF-order host reference (t = bf16(x r), y = bf16(w t)) built
// from the CPU op's r: 8e-3 * max|ref| (two bf16 roundings can each move one ulp). Fused quant:
// scales within 1e-5 relative of the CPU quantiser applied to the reference rms_norm output, and the
// fp8 codes equal except for at most 1% of elements that may sit one code apart (a one-ulp change
// in y can cross an fp8 rounding boundary); padding of the scale buffer stays untouched.
#include <cstring>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/norm.h"
#include "ops/elementwise.h"
#include "ops/quant.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

Tensor as_dtype(const Tensor& f32, DType dt) {
  if (dt == DType::kF32) return f32.clone();
  Tensor out = Tensor::empty(f32.shape(), dt);
  convert_from_f32(dt, f32.data<float>(), out.raw_data(), static_cast<size_t>(f32.numel()));
  return out;
}

// Rows with different magnitudes, so a mixed-up row shows.
Tensor rows_input(int64_t m, int64_t d, uint32_t seed) {
  Tensor x = random_host({m, d}, seed);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < d; ++c) x.data<float>()[r * d + c] *= 0.25f + static_cast<float>(r % 5);
  return x;
}

// HF order in bf16 from the CPU op's f32 math: r from the f32 reference output of an all-ones weight.
Tensor hf_bf16_reference(const Tensor& x_f32, const Tensor& w_f32, float eps, bool round_out) {
  const int64_t m = x_f32.size(0), d = x_f32.size(1);
  Tensor ones = Tensor::empty({d}, DType::kF32);
  for (int64_t i = 0; i < d; ++i) ones.data<float>()[i] = 1.0f;
  Tensor xr = Tensor::empty({m, d}, DType::kF32);  // x * r in f32
  ops::rms_norm(x_f32, ones, eps, xr);
  Tensor y = Tensor::empty({m, d}, DType::kF32);
  for (int64_t i = 0; i < m * d; ++i) {
    const float t = bf16_to_f32(f32_to_bf16(xr.data<float>()[i]));
    const float v = w_f32.data<float>()[i % d] * t;
    y.data<float>()[i] = round_out ? bf16_to_f32(f32_to_bf16(v)) : v;
  }
  return y;
}

// A [m, d] device view whose rows are `pad` elements wider than d (a strided activation).
Tensor strided_device(const Tensor& host, int64_t pad) {
  const int64_t m = host.size(0), d = host.size(1);
  Tensor wide = Tensor::empty({m, d + pad}, host.dtype());
  const size_t es = dtype_size(host.dtype());
  for (int64_t r = 0; r < m; ++r)
    std::memcpy(static_cast<char*>(wide.raw_data()) + r * (d + pad) * es,
                static_cast<const char*>(host.raw_data()) + r * d * es, d * es);
  return wide.to(Device::kCuda).slice(1, 0, d);
}

Tensor strided_to_host(const Tensor& dev_view) {
  const int64_t m = dev_view.size(0), d = dev_view.size(1);
  Tensor out = Tensor::empty({m, d}, dev_view.dtype());
  const size_t es = dtype_size(dev_view.dtype());
  for (int64_t r = 0; r < m; ++r) {
    Tensor h = dev_view.select(r).to(Device::kCpu);  // one contiguous row
    std::memcpy(static_cast<char*>(out.raw_data()) + r * d * es, h.raw_data(), d * es);
  }
  return out;
}

Tensor nan_host(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  std::memset(t.raw_data(), 0xFF, t.nbytes());
  return t;
}

TEST(NormGpu, RmsNormF32MatchesCpu) {
  // Vector path (d % 4 == 0) with one cached pass, several, and a tail past the register cache;
  // scalar path (d odd).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 7168}, {7, 1536}, {256, 7168}, {5, 512},
                                                           {3, 129},  {2, 40000}, {4, 9001}};
  uint32_t seed = 100;
  for (auto [m, d] : shapes) {
    for (DType wt : {DType::kF32, DType::kBF16}) {
      const std::string what = "m=" + std::to_string(m) + " d=" + std::to_string(d) + " w=" + dtype_name(wt);
      Tensor x = rows_input(m, d, ++seed);
      Tensor w = as_dtype(random_host({d}, ++seed, 0.5f), wt);
      Tensor want = Tensor::empty({m, d}, DType::kF32);
      ops::rms_norm(x, w, 1e-6f, want);
      Tensor xd = x.to(Device::kCuda), wd = w.to(Device::kCuda);
      Tensor out = poisoned_device({m, d});
      ops::rms_norm(xd, wd, 1e-6f, out);
      EXPECT_LT(rel_max_err(out.to(Device::kCpu), want), 2e-6) << what;
      ops::rms_norm(xd, wd, 1e-6f, xd);  // out aliases x
      EXPECT_LT(rel_max_err(xd.to(Device::kCpu), want), 2e-6) << what << " in place";
    }
  }
}

TEST(NormGpu, RmsNormStridedRows) {
  const int64_t m = 9, d = 1536;
  Tensor x = rows_input(m, d, 7);
  Tensor w = random_host({d}, 8);
  Tensor want = Tensor::empty({m, d}, DType::kF32);
  ops::rms_norm(x, w, 1e-6f, want);
  for (int64_t pad : {4, 3}) {  // 4 keeps 16-byte rows (vector path), 3 does not (scalar path)
    Tensor xd = strided_device(x, pad);
    Tensor out = strided_device(nan_host({m, d}), pad + 1);
    ops::rms_norm(xd, w.to(Device::kCuda), 1e-6f, out);
    EXPECT_LT(rel_max_err(strided_to_host(out), want), 2e-6) << "pad " << pad;
  }
}

TEST(NormGpu, RmsNormBf16HfOrder) {
  uint32_t seed = 200;
  for (auto [m, d] : std::vector<std::pair<int64_t, int64_t>>{{1, 7168}, {64, 7168}, {3, 1536}, {2, 130}}) {
    Tensor x32 = as_dtype(rows_input(m, d, ++seed), DType::kBF16).to_f32();
    Tensor w32 = as_dtype(random_host({d}, ++seed, 0.5f), DType::kBF16).to_f32();
    Tensor xd = as_dtype(x32, DType::kBF16).to(Device::kCuda);
    Tensor wd = as_dtype(w32, DType::kBF16).to(Device::kCuda);
    for (DType ot : {DType::kBF16, DType::kF32}) {
      const std::string what = "m=" + std::to_string(m) + " d=" + std::to_string(d) + " out=" + dtype_name(ot);
      Tensor want = hf_bf16_reference(x32, w32, 1e-6f, ot == DType::kBF16);
      Tensor out = poisoned_device({m, d}, ot);
      ops::rms_norm(xd, wd, 1e-6f, out);
      EXPECT_LT(rel_max_err(out.to(Device::kCpu).to_f32(), want), 8e-3) << what;
    }
  }
}

// fp8 e4m3 code as a signed step count (magnitude codes are monotone in value).
int signed_steps(uint8_t c) { return (c & 0x80) ? -(c & 0x7F) : (c & 0x7F); }

// fp8 e4m3 codes: equal, or one representable value apart.
void expect_close_codes(const Tensor& got, const Tensor& want, const std::string& what) {
  const auto* a = got.data<uint8_t>();
  const auto* b = want.data<uint8_t>();
  const int64_t n = want.numel();
  int64_t off_by_one = 0, bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (a[i] == b[i]) continue;
    const bool nan = (a[i] & 0x7F) == 0x7F || (b[i] & 0x7F) == 0x7F;
    if (!nan && std::abs(signed_steps(a[i]) - signed_steps(b[i])) <= 1) {
      ++off_by_one;
    } else if (bad++ == 0) {
      ADD_FAILURE() << what << ": code " << int(a[i]) << " vs " << int(b[i]) << " at " << i;
    }
  }
  EXPECT_EQ(bad, 0) << what;
  EXPECT_LE(off_by_one, n / 100 + 1) << what << ": codes one step apart";
}

void expect_scales_close(const Tensor& got, const Tensor& want, const std::string& what) {
  for (int64_t i = 0; i < want.numel(); ++i) {
    const float a = got.data<float>()[i], b = want.data<float>()[i];
    ASSERT_LE(std::abs(a - b), 1e-5f * std::abs(b)) << what << " scale " << i;
  }
}

TEST(NormGpu, RmsNormQuantFp8MatchesNormThenQuantiser) {
  uint32_t seed = 300;
  for (auto [m, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 7168}, {7, 1536}, {256, 7168}, {33, 512},
                                                              {2, 128 * 300}}) {
    for (DType xt : {DType::kF32, DType::kBF16}) {
      const std::string what = "m=" + std::to_string(m) + " k=" + std::to_string(k) + " x=" + dtype_name(xt);
      Tensor x32 = as_dtype(rows_input(m, k, ++seed), xt).to_f32();
      Tensor w32 = as_dtype(random_host({k}, ++seed, 0.5f), DType::kBF16).to_f32();
      if (k == 512)  // some groups all zero (scale clamps to 1e-4 / 448)
        for (int64_t r = 0; r < m; r += 3) std::memset(x32.data<float>() + r * k + 128, 0, 128 * sizeof(float));
      // Reference y in the activation dtype, then the CPU quantiser.
      Tensor y = Tensor::empty({m, k}, DType::kF32);
      if (xt == DType::kF32)
        ops::rms_norm(x32, w32, 1e-6f, y);
      else
        y = hf_bf16_reference(x32, w32, 1e-6f, true);
      const int64_t groups = k / 128;
      Tensor q_ref = Tensor::empty({m, k}, DType::kF8E4M3);
      Tensor s_ref = Tensor::empty({groups, m}, DType::kF32);
      ops::quantize_fp8_per_token_group(y, q_ref, s_ref);

      Tensor xd = as_dtype(x32, xt).to(Device::kCuda);
      Tensor wd = as_dtype(w32, DType::kBF16).to(Device::kCuda);
      Tensor qd = poisoned_device({m, k}, DType::kF8E4M3);
      Tensor s_full = poisoned_device({groups, m + 3});  // padded leading dim
      Tensor sd = s_full.slice(1, 0, m);
      ops::cuda::rms_norm_quant_fp8(xd, wd, 1e-6f, qd, sd);
      expect_close_codes(qd.to(Device::kCpu), q_ref, what);
      Tensor s_host = s_full.to(Device::kCpu);
      Tensor s_got = Tensor::empty({groups, m}, DType::kF32);
      for (int64_t g = 0; g < groups; ++g) {
        std::memcpy(s_got.data<float>() + g * m, s_host.data<float>() + g * (m + 3), m * sizeof(float));
        for (int64_t p = m; p < m + 3; ++p) {
          uint32_t bits;
          std::memcpy(&bits, s_host.data<float>() + g * (m + 3) + p, 4);
          ASSERT_EQ(bits, 0xFFFFFFFFu) << what << ": scale padding written at group " << g;
        }
      }
      expect_scales_close(s_got, s_ref, what);
    }
  }
}

TEST(NormGpu, RejectsBadQuantShapes) {
  Tensor x = poisoned_device({4, 200});
  Tensor w = poisoned_device({200});
  Tensor q = poisoned_device({4, 200}, DType::kF8E4M3);
  Tensor s = poisoned_device({2, 4});
  EXPECT_THROW(ops::cuda::rms_norm_quant_fp8(x, w, 1e-6f, q, s), std::invalid_argument);  // K % 128 != 0
}

}  // namespace
}  // namespace pdserve::gpu_test
