// The decode absorption kernel (mla::absorb_bmm_bf16, ops/cuda/mla_gemm.cu) against a CPU product of
// the same bf16 values and against gemm_bf16, the kernel it replaces for these shapes, on random
// inputs at the decode shapes: W_UK ([m, 128] x [128, 512] per head, B read (k, n), the q_pe
// columns copied along) and W_UV ([m, 512] x [128, 512]^T per head, B read (n, k)), with the
// weights as head-strided views of one [H, 256, 512] kv_b as the GPU model keeps them and the
// activations as the model lays them out (q [m, H, 192], q_abs [m, H, 576], o_lat [m, H, 512],
// out [m, H, 128]). Outputs are NaN-poisoned before each run, so an element the kernel skips fails.
//
// Error bound: max |gpu - cpu| / max |cpu| below 1e-2 (the CPU sums the bf16 operands in double;
// the GPU rounds its f32 sum to bf16). Against gemm_bf16 the bound is 0: both run the same
// m16n8k16 MMAs over k in the same order and round the same f32 sums.
#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::gpu_test {
namespace {

namespace mla = ops::cuda::mla;

constexpr int kNope = 128, kRope = 64, kV = 128, kRank = 512;

// Uniform in [-scale, scale), rounded to bf16 (kv_b is 16.8M values: Lcg, not std::normal_distribution).
Tensor bf16_host(const Shape& shape, uint64_t seed, float scale) {
  Tensor f = Tensor::empty(shape, DType::kF32);
  Lcg rng{seed * 0x9E3779B97F4A7C15ull + 1};
  for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = rng.next() * scale;
  Tensor h = Tensor::empty(shape, DType::kBF16);
  convert_from_f32(DType::kBF16, f.data<float>(), h.raw_data(), static_cast<size_t>(f.numel()));
  return h;
}

Tensor to_host_f32(const Tensor& t) { return t.to(Device::kCpu).to_f32(); }

// The columns [c0, c0 + n) of every (row, head) of a host f32 [m, heads, cols] tensor, as [m, heads, n].
Tensor columns(const Tensor& t, int64_t c0, int64_t n) {
  const int64_t m = t.size(0), heads = t.size(1), cols = t.size(2);
  Tensor out = Tensor::empty({m, heads, n}, DType::kF32);
  for (int64_t i = 0; i < m * heads; ++i)
    std::copy_n(t.data<float>() + i * cols + c0, n, out.data<float>() + i * n);
  return out;
}

struct Shapes {
  int m, heads;
};

std::string describe(const Shapes& s) { return fmt::format("m {} heads {}", s.m, s.heads); }

// m: a single row, an exact tile, a tail tile, the EP72 decode batch, a tail after 4 tiles. Few
// heads (3, 20) make the launcher split the row tiles over CTAs (evenly and unevenly).
const std::vector<Shapes>& shapes() {
  static const std::vector<Shapes> s = {{1, 128}, {64, 128}, {70, 128}, {256, 128}, {300, 3}, {300, 20}, {130, 20}};
  return s;
}

// kv_b as the GPU model keeps it: [H, nope + v, rank] bf16; W_UK = rows [0, nope), W_UV = [nope, nope + v).
struct KvB {
  Tensor host_f32, dev;
};

KvB make_kv_b(int heads, uint64_t seed) {
  const Tensor h = bf16_host({heads, kNope + kV, kRank}, seed, 0.05f);
  return {h.to_f32(), h.to(Device::kCuda)};
}

TEST(MlaAbsorbGpu, WukMatchesCpuAndGemmBf16AndCopiesQPe) {
  uint64_t seed = 10;
  for (const Shapes& s : shapes()) {
    SCOPED_TRACE(describe(s));
    const int64_t m = s.m, heads = s.heads, qk = kNope + kRope, lat = kRank + kRope;
    const KvB kvb = make_kv_b(s.heads, ++seed);
    const Tensor q = bf16_host({m, heads, qk}, ++seed, 1.0f);
    const Tensor q_dev = q.to(Device::kCuda), q_f = q.to_f32();
    const mla::Operand a{q_dev.raw_data(), mla::Elem::kBF16, qk, heads * qk};
    const mla::Operand b{kvb.dev.raw_data(), mla::Elem::kBF16, (kNope + kV) * kRank, kRank};
    Tensor got = poisoned_device({m, heads, lat}, DType::kBF16);
    const mla::Output c{got.raw_data(), mla::Elem::kBF16, lat, heads * lat};
    cudaStream_t st = ops::cuda::current_stream();
    ASSERT_TRUE(mla::absorb_bmm_bf16(a, b, /*b_kn=*/true, c, s.m, kRank, kNope, s.heads, kRope, st));
    Tensor old = poisoned_device({m, heads, lat}, DType::kBF16);
    mla::gemm_bf16(a, b, true, mla::Output{old.raw_data(), mla::Elem::kBF16, lat, heads * lat}, s.m, kRank, kNope,
                   s.heads, st);
    ops::cuda::check(cudaStreamSynchronize(st), "absorb W_UK");

    // CPU: q_abs[i, h, n] = sum_k q[i, h, k] W_UK[h][k, n]; q_abs[i, h, 512 + j] = q[i, h, 128 + j].
    Tensor want = Tensor::empty({m, heads, kRank}, DType::kF32);
    const float* w = kvb.host_f32.data<float>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        const float* qr = q_f.data<float>() + (i * heads + h) * qk;
        std::vector<double> acc(kRank, 0.0);
        for (int kk = 0; kk < kNope; ++kk) {
          const float* wr = w + (h * (kNope + kV) + kk) * kRank;
          for (int n = 0; n < kRank; ++n) acc[n] += static_cast<double>(qr[kk]) * wr[n];
        }
        float* o = want.data<float>() + (i * heads + h) * kRank;
        for (int n = 0; n < kRank; ++n) o[n] = static_cast<float>(acc[n]);
      }
    const Tensor got_f = to_host_f32(got), old_f = to_host_f32(old);
    const double err = rel_max_err(columns(got_f, 0, kRank), want);
    EXPECT_LT(err, 1e-2);
    EXPECT_EQ(rel_max_err(columns(got_f, 0, kRank), columns(old_f, 0, kRank)), 0.0);
    EXPECT_EQ(rel_max_err(columns(got_f, kRank, kRope), columns(q_f, kNope, kRope)), 0.0);  // q_pe, exact
    std::printf("  W_UK %-16s rel err %.2e\n", describe(s).c_str(), err);
  }
}

TEST(MlaAbsorbGpu, WuvMatchesCpuAndGemmBf16) {
  uint64_t seed = 50;
  for (const Shapes& s : shapes()) {
    SCOPED_TRACE(describe(s));
    const int64_t m = s.m, heads = s.heads;
    const KvB kvb = make_kv_b(s.heads, ++seed);
    const Tensor o_lat = bf16_host({m, heads, kRank}, ++seed, 1.0f);
    const Tensor o_dev = o_lat.to(Device::kCuda), o_f = o_lat.to_f32();
    const mla::Operand a{o_dev.raw_data(), mla::Elem::kBF16, kRank, heads * kRank};
    // W_UV[h] = kv_b[h, nope:nope + v, :], read (n, k).
    const mla::Operand b{static_cast<const char*>(kvb.dev.raw_data()) + int64_t(kNope) * kRank * 2, mla::Elem::kBF16,
                         (kNope + kV) * kRank, kRank};
    Tensor got = poisoned_device({m, heads, kV}, DType::kBF16);
    const mla::Output c{got.raw_data(), mla::Elem::kBF16, kV, heads * kV};
    cudaStream_t st = ops::cuda::current_stream();
    ASSERT_TRUE(mla::absorb_bmm_bf16(a, b, /*b_kn=*/false, c, s.m, kV, kRank, s.heads, 0, st));
    Tensor old = poisoned_device({m, heads, kV}, DType::kBF16);
    mla::gemm_bf16(a, b, false, mla::Output{old.raw_data(), mla::Elem::kBF16, kV, heads * kV}, s.m, kV, kRank, s.heads,
                   st);
    ops::cuda::check(cudaStreamSynchronize(st), "absorb W_UV");

    Tensor want = Tensor::empty({m, heads, kV}, DType::kF32);
    const float* w = kvb.host_f32.data<float>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        const float* orow = o_f.data<float>() + (i * heads + h) * kRank;
        for (int n = 0; n < kV; ++n) {
          const float* wr = w + (h * (kNope + kV) + kNope + n) * kRank;
          double acc = 0.0;
          for (int kk = 0; kk < kRank; ++kk) acc += static_cast<double>(orow[kk]) * wr[kk];
          want.data<float>()[(i * heads + h) * kV + n] = static_cast<float>(acc);
        }
      }
    const Tensor got_f = to_host_f32(got);
    const double err = rel_max_err(got_f, want);
    EXPECT_LT(err, 1e-2);
    EXPECT_EQ(rel_max_err(got_f, to_host_f32(old)), 0.0);
    std::printf("  W_UV %-16s rel err %.2e\n", describe(s).c_str(), err);
  }
}

TEST(MlaAbsorbGpu, DeclinesWhatItDoesNotCover) {
  // Nothing is launched (the output keeps its poison) and gemm_bf16 remains the caller's path.
  const Tensor a = poisoned_device({4, 2, 192}, DType::kBF16), a32 = poisoned_device({4, 2, 192});
  const Tensor w = poisoned_device({2, 256, 512}, DType::kBF16);
  Tensor c = poisoned_device({4, 2, 576}, DType::kBF16), c32 = poisoned_device({4, 2, 576});
  cudaStream_t st = ops::cuda::current_stream();
  const mla::Operand ab{a.raw_data(), mla::Elem::kBF16, 192, 2 * 192}, af{a32.raw_data(), mla::Elem::kF32, 192, 2 * 192};
  const mla::Operand b{w.raw_data(), mla::Elem::kBF16, 256 * 512, 512};
  const mla::Output cb{c.raw_data(), mla::Elem::kBF16, 576, 2 * 576}, cf{c32.raw_data(), mla::Elem::kF32, 576, 2 * 576};
  EXPECT_FALSE(mla::absorb_bmm_bf16(af, b, true, cb, 4, 512, 128, 2, 64, st));   // f32 activations
  EXPECT_FALSE(mla::absorb_bmm_bf16(ab, b, true, cf, 4, 512, 128, 2, 64, st));   // f32 output
  EXPECT_FALSE(mla::absorb_bmm_bf16(ab, b, true, cb, 4, 96, 128, 2, 0, st));     // n not a multiple of 128
  EXPECT_FALSE(mla::absorb_bmm_bf16(ab, b, true, cb, 4, 512, 64, 2, 0, st));     // k not a multiple of 128
  EXPECT_FALSE(mla::absorb_bmm_bf16(ab, b, false, cb, 4, 128, 640, 2, 0, st));   // k above 512
  EXPECT_FALSE(mla::absorb_bmm_bf16(ab, b, true, cb, 4, 128, 128, 2, 12, st));   // copy not whole chunks
  EXPECT_FALSE(mla::absorb_bmm_bf16(ab, b, true, cb, 4, 128, 128, 2, 128, st));  // copy > 64 per column block
  const mla::Operand odd{a.raw_data(), mla::Elem::kBF16, 190, 2 * 190};
  EXPECT_FALSE(mla::absorb_bmm_bf16(odd, b, true, cb, 4, 512, 128, 2, 0, st));   // stride not a multiple of 8
  ops::cuda::check(cudaStreamSynchronize(st), "absorb declines");
  const Tensor h = to_host_f32(c);
  EXPECT_TRUE(std::all_of(h.data<float>(), h.data<float>() + h.numel(), [](float v) { return std::isnan(v); }));
}

}  // namespace
}  // namespace pdserve::gpu_test
