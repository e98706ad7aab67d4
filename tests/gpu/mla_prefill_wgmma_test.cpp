// The Hopper (wgmma) MLA prefill kernel, mla::prefill_flash_wgmma (src/ops/cuda/mla_prefill_wgmma.cu),
// against (a) a CPU reference computed here in double precision from the very bf16 inputs the
// kernel reads (q [S, H, 192], the expanded kv [T, H * 256], k_pe [T, 64] inside a latent-like
// [T, 576] buffer) and (b) the mma.sync kernel prefill_flash2 on the same device buffers; and the
// PDSERVE_MLA_PREFILL switch end to end through ops::mla_prefill_varlen against the CPU op.
// Every kernel case runs on both versions of the kernel (test parameter 1 and 2:
// prefill_flash_wgmma_launch_version); version 2 is also compared with version 1.
//
// Tolerances, as max |got - want| / max |want|:
//   vs the CPU reference, f32 out: 1e-2. Both kernels round P = exp2(s - m) to bf16 before P V
//     (and sum the rounded values), 2^-9 relative per weight; the reference keeps P exact. The
//     errors are independent across keys, so the output error stays far below the per-weight
//     bound; 1e-2 is the bound the existing bf16 prefill tests use (attention_gpu_test.cpp).
//   bf16 out: 1.5e-2 (the output's own rounding, 2^-9, on top).
//   vs prefill_flash2: 1e-2. Same inputs, same bf16 P rounding, same f32 accumulation; only the
//     tensor cores' summation order differs (wgmma vs mma.sync), which can flip a P rounding here
//     and there. The maximum difference is printed (0 would mean bit for bit).
// Every output starts NaN-poisoned, so a row or column the kernel forgets fails.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "gpu/gpu_test_util.h"
#include "ops/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::gpu_test {
namespace {

namespace mla = ops::cuda::mla;

constexpr float kScale = 0.1352337788608801f;  // DeepSeek-V3's softmax scale (model-spec §2.3)
constexpr int kNope = 128, kRope = 64, kDqk = 192, kDv = 128, kLatent = 576;

// Uniform in [-scale, scale), rounded to bf16; returns the bf16 tensor, `vals` the exact values.
Tensor bf16_host(const Shape& shape, uint64_t seed, float scale, std::vector<float>& vals) {
  Tensor f = Tensor::empty(shape, DType::kF32);
  Lcg rng{seed * 0x9E3779B97F4A7C15ull + 7};
  for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = rng.next() * scale;
  Tensor b = Tensor::empty(shape, DType::kBF16);
  convert_from_f32(DType::kBF16, f.data<float>(), b.raw_data(), static_cast<size_t>(f.numel()));
  const Tensor back = b.to_f32();
  vals.assign(back.data<float>(), back.data<float>() + back.numel());
  return b;
}

struct Case {
  int heads;
  std::vector<std::pair<int, int>> seqs;  // (prefix_len, q_len)
};

struct Inputs {
  int heads = 0, num_seqs = 0, max_q = 0, s = 0, t = 0;
  std::vector<int32_t> cu_q, cu_kv;
  std::vector<float> q, kv, lat;  // exact (bf16-representable) host values
  Tensor q_d, kv_d, lat_d, cu_q_d, cu_kv_d;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  in.heads = c.heads;
  in.num_seqs = static_cast<int>(c.seqs.size());
  in.cu_q = {0};
  in.cu_kv = {0};
  for (auto [prefix, q_len] : c.seqs) {
    in.cu_q.push_back(in.cu_q.back() + q_len);
    in.cu_kv.push_back(in.cu_kv.back() + prefix + q_len);
    in.max_q = std::max(in.max_q, q_len);
  }
  in.s = in.cu_q.back();
  in.t = in.cu_kv.back();
  // Scores of a few units (q, k ~ U(-1.7, 1.7)): the softmax is far from uniform.
  in.q_d = bf16_host({in.s, c.heads, kDqk}, seed, 1.7f, in.q).to(Device::kCuda);
  in.kv_d = bf16_host({in.t, int64_t(c.heads) * (kNope + kDv)}, seed + 1, 1.7f, in.kv).to(Device::kCuda);
  in.lat_d = bf16_host({in.t, kLatent}, seed + 2, 1.7f, in.lat).to(Device::kCuda);
  const int64_t n1 = in.num_seqs + 1;
  Tensor cq = Tensor::empty({n1}, DType::kI32), ck = Tensor::empty({n1}, DType::kI32);
  std::copy(in.cu_q.begin(), in.cu_q.end(), cq.data<int32_t>());
  std::copy(in.cu_kv.begin(), in.cu_kv.end(), ck.data<int32_t>());
  in.cu_q_d = cq.to(Device::kCuda);
  in.cu_kv_d = ck.to(Device::kCuda);
  return in;
}

mla::PrefillArgs args_for(const Inputs& in, Tensor& out) {
  mla::PrefillArgs p;
  p.cu_q = in.cu_q_d.data<int32_t>();
  p.cu_kv = in.cu_kv_d.data<int32_t>();
  p.num_seqs = in.num_seqs;
  p.max_q_len = in.max_q;
  p.heads = in.heads;
  p.scale = kScale;
  p.q = in.q_d.raw_data();
  p.q_type = mla::Elem::kBF16;
  p.q_row = int64_t(in.heads) * kDqk;
  p.q_head = kDqk;
  p.kv = in.kv_d.raw_data();
  p.k_pe = static_cast<const char*>(in.lat_d.raw_data()) + 512 * 2;  // as mla_prefill_varlen: latent[:, 512:]
  p.k_pe_type = mla::Elem::kBF16;
  p.k_pe_row = kLatent;
  p.out = out.raw_data();
  p.out_type = out.dtype() == DType::kF32 ? mla::Elem::kF32 : mla::Elem::kBF16;
  p.nope = kNope;
  p.rope = kRope;
  p.v = kDv;
  return p;
}

// Causal attention with a prefix, in double, from the exact bf16 values: out [S, H, 128].
Tensor reference(const Inputs& in) {
  Tensor out = Tensor::empty({in.s, in.heads, kDv}, DType::kF32);
  const int64_t kv_row = int64_t(in.heads) * (kNope + kDv);
  std::vector<double> sc, acc(kDv);
  for (int i = 0; i < in.num_seqs; ++i) {
    const int q0 = in.cu_q[i], q_len = in.cu_q[i + 1] - q0, k0 = in.cu_kv[i];
    const int prefix = in.cu_kv[i + 1] - k0 - q_len;
    for (int r = 0; r < q_len; ++r)
      for (int h = 0; h < in.heads; ++h) {
        const float* qv = &in.q[(int64_t(q0 + r) * in.heads + h) * kDqk];
        const int visible = prefix + r + 1;
        sc.assign(visible, 0.0);
        double mx = -INFINITY;
        for (int j = 0; j < visible; ++j) {
          const float* kn = &in.kv[int64_t(k0 + j) * kv_row + int64_t(h) * (kNope + kDv)];
          const float* kp = &in.lat[int64_t(k0 + j) * kLatent + 512];
          double d = 0;
          for (int c = 0; c < kNope; ++c) d += double(qv[c]) * kn[c];
          for (int c = 0; c < kRope; ++c) d += double(qv[kNope + c]) * kp[c];
          sc[j] = d * kScale;
          mx = std::max(mx, sc[j]);
        }
        double l = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int j = 0; j < visible; ++j) {
          const double p = std::exp(sc[j] - mx);
          l += p;
          const float* v = &in.kv[int64_t(k0 + j) * kv_row + int64_t(h) * (kNope + kDv) + kNope];
          for (int c = 0; c < kDv; ++c) acc[c] += p * v[c];
        }
        float* o = out.data<float>() + (int64_t(q0 + r) * in.heads + h) * kDv;
        for (int c = 0; c < kDv; ++c) o[c] = static_cast<float>(acc[c] / l);
      }
  }
  return out;
}

Tensor host_f32(const Tensor& device_tensor) { return device_tensor.to(Device::kCpu).to_f32(); }

bool wgmma_available() {
  Case c{1, {{0, 1}}};
  Inputs in = make_inputs(c, 1);
  Tensor out = Tensor::empty({1, 1, kDv}, DType::kF32, Device::kCuda);
  return mla::prefill_flash_wgmma_applies(args_for(in, out));
}

std::string describe(const Case& c) {
  std::string s = fmt::format("H {} seqs", c.heads);
  for (auto [prefix, q_len] : c.seqs) s += fmt::format(" ({}+{})", prefix, q_len);
  return s;
}

void run_case(int version, const Case& c, uint64_t seed, DType out_type = DType::kF32) {
  const std::string what =
      fmt::format("v{} ", version) + describe(c) + (out_type == DType::kF32 ? " f32 out" : " bf16 out");
  SCOPED_TRACE(what);
  Inputs in = make_inputs(c, seed);
  const Tensor want = reference(in);
  cudaStream_t stream = ops::cuda::current_stream();

  Tensor got = poisoned_device(want.shape(), out_type);
  mla::PrefillArgs p = args_for(in, got);
  ASSERT_TRUE(mla::prefill_flash_wgmma_launch_version(p, stream, version)) << "the wgmma kernel did not take this case";
  Tensor v1 = poisoned_device(want.shape(), out_type);
  if (version != 1) {
    mla::PrefillArgs p_v1 = args_for(in, v1);
    ASSERT_TRUE(mla::prefill_flash_wgmma_launch_version(p_v1, stream, 1));
  }
  Tensor old = poisoned_device(want.shape(), out_type);
  mla::PrefillArgs p_old = args_for(in, old);
  mla::prefill_flash2(p_old, stream);
  ops::cuda::check(cudaStreamSynchronize(stream), "sync");

  const Tensor got_h = host_f32(got), old_h = host_f32(old);
  const double err = rel_max_err(got_h, want), err_old = rel_max_err(old_h, want), diff = rel_max_err(got_h, old_h);
  EXPECT_LT(err, out_type == DType::kF32 ? 1e-2 : 1.5e-2);
  EXPECT_LT(diff, 1e-2);
  if (version != 1) {
    const double diff_v1 = rel_max_err(got_h, host_f32(v1));
    EXPECT_LT(diff_v1, 1e-2);
    std::printf("  %-60s vs CPU %.2e (flash2 %.2e), vs flash2 %.2e, vs v1 %.2e\n", what.c_str(), err, err_old, diff,
                diff_v1);
  } else {
    std::printf("  %-60s vs CPU %.2e (flash2 %.2e), vs flash2 %.2e\n", what.c_str(), err, err_old, diff);
  }
}

// The kernel version under test (1, or 2 = PDSERVE_MLA_PREFILL=wgmma2).
class MlaPrefillWgmma : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Version, MlaPrefillWgmma, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& i) { return fmt::format("v{}", i.param); });

TEST_P(MlaPrefillWgmma, SingleSequenceLengths) {
  if (!wgmma_available()) GTEST_SKIP() << "not an sm_90 device";
  uint64_t seed = 100;
  for (int len : {1, 63, 64, 65, 127, 128, 129, 1000}) run_case(GetParam(), {3, {{0, len}}}, seed++);
  for (int len : {1, 64, 129}) run_case(GetParam(), {1, {{0, len}}}, seed++);
}

TEST_P(MlaPrefillWgmma, PackedSequencesWithPrefixes) {
  if (!wgmma_available()) GTEST_SKIP() << "not an sm_90 device";
  // Fresh prompts and extends after prefixes of 17 (mid-tile) and 300 (several tiles, mid-tile),
  // a single-token extend, lengths on and off the 64/128 boundaries.
  run_case(GetParam(), {3, {{0, 200}, {17, 77}, {300, 1}, {300, 129}, {0, 64}}}, 200);
  run_case(GetParam(), {1, {{17, 128}, {0, 1}, {300, 65}}}, 201);
  run_case(GetParam(), {3, {{300, 300}, {17, 17}}}, 202, DType::kBF16);
}

TEST_P(MlaPrefillWgmma, AllHeadsOfTheModel) {
  if (!wgmma_available()) GTEST_SKIP() << "not an sm_90 device";
  run_case(GetParam(), {128, {{0, 129}}}, 300);
  run_case(GetParam(), {128, {{0, 65}, {17, 130}, {300, 64}}}, 301);
  run_case(GetParam(), {128, {{17, 40}, {0, 1}}}, 302, DType::kBF16);
}

// Diagnosis aid for a failing run: V the same for every key (value column c = (c - 64) / 32), so
// the output is exactly that row whatever S, the softmax or P's register layout do, as long as
// P V reads V through the right (MN-major) descriptor: this isolates the V operand.
TEST_P(MlaPrefillWgmma, ValueOperandLayoutProbe) {
  if (!wgmma_available()) GTEST_SKIP() << "not an sm_90 device";
  Case c{3, {{17, 150}}};
  Inputs in = make_inputs(c, 450);
  const int64_t kv_row = int64_t(in.heads) * (kNope + kDv);
  for (int64_t t = 0; t < in.t; ++t)
    for (int h = 0; h < in.heads; ++h)
      for (int j = 0; j < kDv; ++j) in.kv[t * kv_row + h * (kNope + kDv) + kNope + j] = (j - 64) / 32.0f;
  Tensor kv_h = Tensor::empty({in.t, kv_row}, DType::kBF16);
  convert_from_f32(DType::kBF16, in.kv.data(), kv_h.raw_data(), in.kv.size());
  in.kv_d = kv_h.to(Device::kCuda);
  Tensor got = poisoned_device({in.s, in.heads, kDv});
  mla::PrefillArgs p = args_for(in, got);
  ASSERT_TRUE(mla::prefill_flash_wgmma_launch_version(p, ops::cuda::current_stream(), GetParam()));
  const Tensor g = host_f32(got);
  double err = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    const double want = ((i % kDv) - 64) / 32.0, x = g.data<float>()[i];
    err = std::isnan(x) ? INFINITY : std::max(err, std::abs(x - want));
  }
  std::printf("  V probe: max |out - v| = %.2e (of max |v| = 2)\n", err);
  EXPECT_LT(err, 1e-4);
}

TEST_P(MlaPrefillWgmma, DeclinesWhatItDoesNotCover) {
  if (!wgmma_available()) GTEST_SKIP() << "not an sm_90 device";
  Case c{1, {{0, 8}}};
  Inputs in = make_inputs(c, 400);
  Tensor out = Tensor::empty({in.s, 1, kDv}, DType::kF32, Device::kCuda);
  mla::PrefillArgs p = args_for(in, out);
  EXPECT_TRUE(mla::prefill_flash_wgmma_applies(p));
  mla::PrefillArgs bad = p;
  bad.q = static_cast<const char*>(p.q) + 8;  // not 16-byte aligned
  EXPECT_FALSE(mla::prefill_flash_wgmma_applies(bad));
  bad = p;
  bad.k_pe = static_cast<const char*>(p.k_pe) + 8;
  EXPECT_FALSE(mla::prefill_flash_wgmma_applies(bad));
  bad = p;
  bad.nope = 64;
  EXPECT_FALSE(mla::prefill_flash_wgmma_applies(bad));
  bad = p;
  bad.q_type = mla::Elem::kF32;
  EXPECT_FALSE(mla::prefill_flash_wgmma_applies(bad));
  EXPECT_FALSE(mla::prefill_flash_wgmma_launch_version(bad, ops::cuda::current_stream(), GetParam()));
}

// The switch end to end: mla_prefill_varlen (bf16 latent, fp8 kv_b) under PDSERVE_MLA_PREFILL=wgmma,
// =wgmma2 and =flash2 against the CPU op, with the bound of attention_gpu_test.cpp's bf16 prefill
// tests.
TEST(MlaPrefillWgmma, SwitchThroughMlaPrefillVarlen) {
  if (!wgmma_available()) GTEST_SKIP() << "not an sm_90 device";
  const char* prev = std::getenv("PDSERVE_MLA_PREFILL");
  const std::string saved = prev ? prev : "";
  ops::MlaDims d;
  d.num_heads = 16;
  const std::vector<std::pair<int, int>> seqs = {{0, 200}, {37, 77}, {130, 1}, {64, 129}};
  std::vector<int32_t> cu_q = {0}, cu_kv = {0};
  int64_t max_q = 0;
  for (auto [prefix, q_len] : seqs) {
    cu_q.push_back(cu_q.back() + q_len);
    cu_kv.push_back(cu_kv.back() + prefix + q_len);
    max_q = std::max<int64_t>(max_q, q_len);
  }
  const int64_t n = static_cast<int64_t>(seqs.size()), s = cu_q.back(), t = cu_kv.back();
  std::vector<float> unused;
  const Tensor q = bf16_host({s, d.num_heads, d.qk_head_dim()}, 500, 1.7f, unused);
  const Tensor latent = bf16_host({t, d.latent_dim()}, 501, 1.7f, unused);
  const Tensor w = bf16_host({d.num_heads * (d.qk_nope_head_dim + d.v_head_dim), d.kv_lora_rank}, 502, 0.09f, unused);
  const Weight kv_b{w, Tensor()};
  Tensor cq = Tensor::empty({n + 1}, DType::kI32), ck = Tensor::empty({n + 1}, DType::kI32);
  std::copy(cu_q.begin(), cu_q.end(), cq.data<int32_t>());
  std::copy(cu_kv.begin(), cu_kv.end(), ck.data<int32_t>());
  Tensor want = Tensor::empty({s, d.num_heads, d.v_head_dim}, DType::kF32);
  ops::mla_prefill_varlen(q, latent, kv_b, d, cq, ck, max_q, kScale, want);
  const Tensor q_d = q.to(Device::kCuda), lat_d = latent.to(Device::kCuda), cq_d = cq.to(Device::kCuda),
               ck_d = ck.to(Device::kCuda);
  const Weight kv_b_d = kv_b.to(Device::kCuda);
  Tensor outs[3];
  const char* modes[3] = {"wgmma", "flash2", "wgmma2"};
  for (int m = 0; m < 3; ++m) {
    setenv("PDSERVE_MLA_PREFILL", modes[m], 1);
    if (m == 2) {
      EXPECT_EQ(mla::prefill_wgmma_version(), 2);
    }
    outs[m] = poisoned_device(want.shape());
    ops::mla_prefill_varlen(q_d, lat_d, kv_b_d, d, cq_d, ck_d, max_q, kScale, outs[m]);
    const double err = rel_max_err(host_f32(outs[m]), want);
    EXPECT_LT(err, 2e-2) << modes[m];
    std::printf("  mla_prefill_varlen PDSERVE_MLA_PREFILL=%-6s vs CPU op %.2e\n", modes[m], err);
  }
  const double diff = rel_max_err(host_f32(outs[0]), host_f32(outs[1]));
  EXPECT_LT(diff, 1e-2);
  std::printf("  mla_prefill_varlen wgmma vs flash2 %.2e\n", diff);
  const double diff2 = rel_max_err(host_f32(outs[2]), host_f32(outs[0]));
  EXPECT_LT(diff2, 1e-2);
  std::printf("  mla_prefill_varlen wgmma2 vs wgmma %.2e\n", diff2);
  if (prev) setenv("PDSERVE_MLA_PREFILL", saved.c_str(), 1);
  else unsetenv("PDSERVE_MLA_PREFILL");
}

}  // namespace
}  // namespace pdserve::gpu_test
