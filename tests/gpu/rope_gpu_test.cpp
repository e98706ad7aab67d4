// CUDA RoPE-YaRN (interleaved pairs) and the fused rope + paged KV write, against the CPU op with
// DeepSeek-V3's YaRN table on fresh random inputs and positions up to 163840.
//
// Bounds: f32 within 2e-6 of max|cpu| (the rotation uses the CPU op's rounding order; only
// sincosf vs glibc cosf/sinf differ, by an ulp or two); bf16 within one bf16 rounding of the CPU
// result on the same bf16-valued inputs (4e-3 of max|cpu|). KV write: rows of the slots given
// hold [latent, rope(k_pe)] (f32 pool: the latent bit-exact), every other pool row stays poisoned.
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/rope.h"
#include "ops/rope.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

ops::RopeTable v3_table() {
  ops::RopeParams p;
  p.rotary_dim = 64;
  p.theta = 10000.0;
  p.type = "yarn";
  p.factor = 40.0;
  p.original_max_position_embeddings = 4096;
  p.beta_fast = 32.0;
  p.beta_slow = 1.0;
  p.mscale = 1.0;
  p.mscale_all_dim = 1.0;
  return ops::make_rope_table(p);
}

Tensor as_dtype(const Tensor& f32, DType dt) {
  if (dt == DType::kF32) return f32.clone();
  Tensor out = Tensor::empty(f32.shape(), dt);
  convert_from_f32(dt, f32.data<float>(), out.raw_data(), static_cast<size_t>(f32.numel()));
  return out;
}

Tensor positions_host(int64_t t, uint32_t seed, DType dt) {
  Tensor p = Tensor::empty({t}, dt);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> d(0, 163839);
  for (int64_t i = 0; i < t; ++i) {
    const int64_t v = i < 3 ? i * 4095 : d(rng);  // 0, 4095, 8190, then random
    if (dt == DType::kI64)
      p.data<int64_t>()[i] = v;
    else
      p.data<int32_t>()[i] = static_cast<int32_t>(v);
  }
  return p;
}

TEST(RopeGpu, QueryHeadsMatchCpu) {
  const ops::RopeTable table = v3_table();
  uint32_t seed = 1;
  for (auto [t, h] : std::vector<std::pair<int64_t, int64_t>>{{1, 128}, {37, 16}, {256, 128}}) {
    for (DType pt : {DType::kI32, DType::kI64}) {
      for (DType dt : {DType::kF32, DType::kBF16}) {
        const std::string what =
            "T=" + std::to_string(t) + " H=" + std::to_string(h) + " " + dtype_name(pt) + " " + dtype_name(dt);
        Tensor q = as_dtype(random_host({t, h, 192}, ++seed), dt).to_f32();
        Tensor pos = positions_host(t, ++seed, pt);
        Tensor want = q.clone();
        ops::apply_rope_interleaved(want, 128, pos, table);
        Tensor qd = as_dtype(q, dt).to(Device::kCuda);
        ops::apply_rope_interleaved(qd, 128, pos.to(Device::kCuda), table);
        EXPECT_LT(rel_max_err(qd.to(Device::kCpu).to_f32(), want), dt == DType::kF32 ? 2e-6 : 4e-3) << what;
      }
    }
  }
}

// q as a [T, H, 192] view of a [T, H, 195] buffer: odd head stride takes the scalar (unpaired) path;
// an even one ([T, H, 196]) the paired path. The untouched columns must stay as they were.
TEST(RopeGpu, StridedViewsMatchCpu) {
  const ops::RopeTable table = v3_table();
  for (int64_t width : {195, 196}) {
    const int64_t t = 9, h = 4;
    Tensor full = random_host({t, h, width}, 50 + static_cast<uint32_t>(width));
    Tensor want = full.clone();
    Tensor want_view = want.slice(2, 0, 192);
    Tensor pos = positions_host(t, 7, DType::kI32);
    ops::apply_rope_interleaved(want_view, 128, pos, table);
    Tensor fd = full.to(Device::kCuda);
    Tensor view = fd.slice(2, 0, 192);
    ops::apply_rope_interleaved(view, 128, pos.to(Device::kCuda), table);
    EXPECT_LT(rel_max_err(fd.to(Device::kCpu), want), 2e-6) << "width " << width;
  }
}

TEST(RopeGpu, KeyRopeMatchesCpu) {
  const ops::RopeTable table = v3_table();
  Tensor k = random_host({300, 1, 64}, 9);
  Tensor pos = positions_host(300, 10, DType::kI32);
  Tensor want = k.clone();
  ops::apply_rope_interleaved(want, 0, pos, table);
  Tensor kd = k.to(Device::kCuda);
  ops::apply_rope_interleaved(kd, 0, pos.to(Device::kCuda), table);
  EXPECT_LT(rel_max_err(kd.to(Device::kCpu), want), 2e-6);
}

TEST(RopeGpu, FusedRopeAndKvWrite) {
  const ops::RopeTable table = v3_table();
  const int64_t pages = 8, page_size = 16, lat = 512, rot = 64, width = lat + rot, heads = 16;
  uint32_t seed = 100;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (DType pool_t : {DType::kF32, DType::kBF16}) {
      for (DType st : {DType::kI32, DType::kI64}) {
        const std::string what = std::string("act ") + dtype_name(dt) + " pool " + dtype_name(pool_t) + " slots " +
                                 dtype_name(st);
        const int64_t t = 40;
        Tensor q = as_dtype(random_host({t, heads, 192}, ++seed), dt).to_f32();
        // kv_a output [T, 576]: latent (already normalised here) | k_pe; both passed as views.
        Tensor kv = as_dtype(random_host({t, width}, ++seed), dt).to_f32();
        Tensor pos = positions_host(t, ++seed, DType::kI32);
        // Distinct slots in random order; token 5 and 17 are padding (-1) and write nothing.
        std::vector<int64_t> perm(pages * page_size);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
        Tensor slots = Tensor::empty({t}, st);
        for (int64_t i = 0; i < t; ++i) {
          const int64_t s = (i == 5 || i == 17) ? -1 : perm[i];
          if (st == DType::kI64)
            slots.data<int64_t>()[i] = s;
          else
            slots.data<int32_t>()[i] = static_cast<int32_t>(s);
        }
        // CPU reference: rope on q and on a copy of k_pe.
        Tensor q_want = q.clone();
        ops::apply_rope_interleaved(q_want, 128, pos, table);
        Tensor kpe = Tensor::empty({t, 1, rot}, DType::kF32);
        for (int64_t i = 0; i < t; ++i)
          std::memcpy(kpe.data<float>() + i * rot, kv.data<float>() + i * width + lat, rot * sizeof(float));
        ops::apply_rope_interleaved(kpe, 0, pos, table);

        Tensor qd = as_dtype(q, dt).to(Device::kCuda);
        Tensor kvd = as_dtype(kv, dt).to(Device::kCuda);
        Tensor pool = poisoned_device({pages, page_size, width}, pool_t);
        ops::cuda::rope_kv_write(qd, 128, kvd.slice(1, 0, lat), kvd.slice(1, lat, width), pos.to(Device::kCuda), table,
                                 slots.to(Device::kCuda), pool);
        const double tol = (dt == DType::kF32 && pool_t == DType::kF32) ? 2e-6 : 4e-3;
        EXPECT_LT(rel_max_err(qd.to(Device::kCpu).to_f32(), q_want), dt == DType::kF32 ? 2e-6 : 4e-3) << what;
        Tensor kv_after = kvd.to(Device::kCpu).to_f32();  // inputs are not modified
        EXPECT_EQ(rel_max_err(kv_after, kv), 0.0) << what;

        Tensor pool_h = pool.to(Device::kCpu).to_f32();
        std::vector<int64_t> token_of(pages * page_size, -1);
        for (int64_t i = 0; i < t; ++i)
          if (i != 5 && i != 17) token_of[perm[i]] = i;
        for (int64_t s = 0; s < pages * page_size; ++s) {
          const float* row = pool_h.data<float>() + s * width;
          const int64_t i = token_of[s];
          if (i < 0) {
            for (int64_t c = 0; c < width; ++c) ASSERT_TRUE(std::isnan(row[c])) << what << ": slot " << s << " written";
            continue;
          }
          Tensor got = Tensor::empty({width}, DType::kF32), want = Tensor::empty({width}, DType::kF32);
          std::memcpy(got.data<float>(), row, width * sizeof(float));
          std::memcpy(want.data<float>(), kv.data<float>() + i * width, lat * sizeof(float));
          std::memcpy(want.data<float>() + lat, kpe.data<float>() + i * rot, rot * sizeof(float));
          ASSERT_LT(rel_max_err(got, want), tol) << what << ": token " << i << " slot " << s;
          if (pool_t == DType::kF32 && dt == DType::kF32) {
            ASSERT_EQ(std::memcmp(got.data<float>(), want.data<float>(), lat * sizeof(float)), 0) << what;
          }
        }
      }
    }
  }
}

TEST(RopeGpu, RejectsOversizedTable) {
  ops::RopeParams p;
  p.rotary_dim = 256;
  const ops::RopeTable table = ops::make_rope_table(p);
  Tensor x = poisoned_device({2, 1, 256});
  Tensor pos = Tensor::empty({2}, DType::kI32).to(Device::kCuda);
  EXPECT_THROW(ops::apply_rope_interleaved(x, 0, pos, table), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::gpu_test
