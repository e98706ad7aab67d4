// CUDA embedding lookup against the CPU op: bf16, f32 and block-scaled fp8 tables, f32 and bf16
// outputs, i32 and i64 ids. The lookup is a pure conversion, so results must be bit-exact (bf16
// output: the CPU f32 row rounded to bf16). Out-of-range ids give zero rows and raise the flag.
#include <random>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/embedding.h"
#include "ops/elementwise.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

Weight make_table(int64_t rows, int64_t hidden, DType dt, uint32_t seed) {
  Tensor f = random_host({rows, hidden}, seed);
  Weight w;
  w.weight = Tensor::empty({rows, hidden}, dt);
  if (dt == DType::kF8E4M3) {
    const int64_t sr = (rows + 127) / 128, sc = (hidden + 127) / 128;
    w.scale_inv = Tensor::empty({sr, sc}, DType::kF32);
    for (int64_t i = 0; i < sr * sc; ++i) w.scale_inv.data<float>()[i] = 0.001f * static_cast<float>(i + 1);
    for (int64_t i = 0; i < rows * hidden; ++i) f.data<float>()[i] *= 100.0f;  // use the fp8 range
  }
  convert_from_f32(dt, f.data<float>(), w.weight.raw_data(), static_cast<size_t>(rows * hidden));
  return w;
}

Tensor make_ids(const std::vector<int64_t>& v, DType dt) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, dt);
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::kI64)
      t.data<int64_t>()[i] = v[i];
    else
      t.data<int32_t>()[i] = static_cast<int32_t>(v[i]);
  }
  return t;
}

Tensor round_bf16(const Tensor& f32) {
  Tensor b = Tensor::empty(f32.shape(), DType::kBF16);
  convert_from_f32(DType::kBF16, f32.data<float>(), b.raw_data(), static_cast<size_t>(f32.numel()));
  return b.to_f32();
}

TEST(EmbeddingGpu, MatchesCpuBitExact) {
  struct Case {
    int64_t rows, hidden;
    DType table;
  };
  // 7168 is V3's hidden; 640 and 1000 are multiples of 8 (vector path, 1000 not of 128: partial
  // scale block); 100 and 13 take the scalar path. 300 rows span three fp8 scale-block rows.
  const std::vector<Case> cases = {{300, 7168, DType::kBF16}, {300, 640, DType::kF8E4M3}, {300, 1000, DType::kF8E4M3},
                                   {50, 100, DType::kF32},    {20, 13, DType::kBF16},     {40, 1024, DType::kF16}};
  uint32_t seed = 1;
  for (const Case& c : cases) {
    Weight table = make_table(c.rows, c.hidden, c.table, ++seed);
    Weight td = table.to(Device::kCuda);
    std::mt19937 rng(seed);
    std::vector<int64_t> v(97);
    for (auto& x : v) x = std::uniform_int_distribution<int64_t>(0, c.rows - 1)(rng);
    v[0] = 0, v[1] = c.rows - 1, v[2] = v[3];  // both ends and a repeat
    for (DType it : {DType::kI32, DType::kI64}) {
      const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.hidden) + " " +
                               dtype_name(c.table) + " ids " + dtype_name(it);
      Tensor ids = make_ids(v, it);
      Tensor want = Tensor::empty({97, c.hidden}, DType::kF32);
      ops::embedding(ids, table, want);
      Tensor out = poisoned_device({97, c.hidden});
      ops::embedding(ids.to(Device::kCuda), td, out);
      EXPECT_EQ(rel_max_err(out.to(Device::kCpu), want), 0.0) << what << " f32 out";
      Tensor outb = poisoned_device({97, c.hidden}, DType::kBF16);
      ops::embedding(ids.to(Device::kCuda), td, outb);
      EXPECT_EQ(rel_max_err(outb.to(Device::kCpu).to_f32(), round_bf16(want)), 0.0) << what << " bf16 out";
    }
  }
}

TEST(EmbeddingGpu, OutOfRangeIdsGiveZeroRowsAndFlag) {
  Weight table = make_table(64, 256, DType::kBF16, 9);
  Weight td = table.to(Device::kCuda);
  const std::vector<int64_t> v = {3, -1, 64, 63, 1000000, 0};
  Tensor flag = Tensor::empty({1}, DType::kI32).to(Device::kCuda);  // zero-filled host copy
  Tensor out = poisoned_device({6, 256});
  ops::cuda::embedding(make_ids(v, DType::kI64).to(Device::kCuda), td, out, &flag);
  Tensor got = out.to(Device::kCpu);
  Tensor want = Tensor::empty({6, 256}, DType::kF32);
  for (size_t i : {0u, 3u, 5u}) {
    Tensor one = Tensor::empty({1, 256}, DType::kF32);
    ops::embedding(make_ids({v[i]}, DType::kI32), table, one);
    std::copy(one.data<float>(), one.data<float>() + 256, want.data<float>() + i * 256);
  }
  EXPECT_EQ(rel_max_err(got, want), 0.0);  // rows 1, 2, 4 are zero in both
  EXPECT_EQ(flag.to(Device::kCpu).data<int32_t>()[0], 1);

  Tensor flag2 = Tensor::empty({1}, DType::kI32).to(Device::kCuda);
  Tensor out2 = poisoned_device({2, 256});
  ops::cuda::embedding(make_ids({1, 2}, DType::kI32).to(Device::kCuda), td, out2, &flag2);
  EXPECT_EQ(flag2.to(Device::kCpu).data<int32_t>()[0], 0);
}

}  // namespace
}  // namespace pdserve::gpu_test
