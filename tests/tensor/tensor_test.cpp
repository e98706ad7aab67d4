#include "tensor/tensor.h"

#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve {
namespace {

// A [rows, cols] f32 tensor holding 0, 1, 2, ... in row-major order.
Tensor iota_f32(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(i);
  return t;
}

// Reads element (idx...) of a strided f32 view through its strides.
float at(const Tensor& t, std::initializer_list<int64_t> idx) {
  int64_t off = 0, d = 0;
  for (int64_t i : idx) off += i * t.strides()[static_cast<size_t>(d++)];
  return t.data<float>()[off];
}

TEST(Tensor, EmptyIsZeroFilledRowMajor) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::kBF16);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 48u);
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.device(), Device::kCpu);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  const auto* p = t.data<uint16_t>();
  for (int i = 0; i < 24; ++i) EXPECT_EQ(p[i], 0);
  EXPECT_THROW(Tensor::empty({2, -1}, DType::kF32), std::invalid_argument);
  Tensor z = Tensor::empty({0, 5}, DType::kF32);
  EXPECT_EQ(z.numel(), 0);
  EXPECT_EQ(z.clone().numel(), 0);
  EXPECT_FALSE(Tensor().defined());
  EXPECT_EQ(shape_to_string({2, 3}), "[2, 3]");
}

TEST(Tensor, ReshapeSharesStorage) {
  Tensor t = iota_f32({2, 3, 4});
  Tensor r = t.reshape({6, -1});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.strides(), (Shape{4, 1}));
  EXPECT_EQ(at(r, {5, 3}), 23.0f);
  r.data<float>()[0] = 100.0f;
  EXPECT_EQ(t.data<float>()[0], 100.0f);
  EXPECT_EQ(t.reshape({24}).shape(), (Shape{24}));
  EXPECT_THROW(t.reshape({5, -1}), std::invalid_argument);
  EXPECT_THROW(t.reshape({-1, -1}), std::invalid_argument);
  EXPECT_THROW(t.reshape({7}), std::invalid_argument);
  EXPECT_THROW(t.slice(2, 0, 2).reshape({12}), std::logic_error);  // not contiguous
}

TEST(Tensor, SliceKeepsStrides) {
  Tensor t = iota_f32({4, 6});
  Tensor s = t.slice(1, 2, 5);
  EXPECT_EQ(s.shape(), (Shape{4, 3}));
  EXPECT_EQ(s.strides(), (Shape{6, 1}));
  EXPECT_FALSE(s.is_contiguous());
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(at(s, {r, c}), static_cast<float>(r * 6 + c + 2));
  Tensor rows = t.slice(0, 1, 3);
  EXPECT_TRUE(rows.is_contiguous());
  EXPECT_EQ(at(rows, {0, 0}), 6.0f);
  Tensor neg = t.slice(-1, 4, 6);
  EXPECT_EQ(at(neg, {3, 1}), 23.0f);
  Tensor both = s.slice(0, 1, 3);  // slice of a slice
  EXPECT_EQ(at(both, {1, 2}), 16.0f);
  EXPECT_EQ(t.slice(1, 3, 3).numel(), 0);
  EXPECT_THROW(t.slice(1, 4, 7), std::out_of_range);
  EXPECT_THROW(t.slice(1, 3, 2), std::out_of_range);
  EXPECT_THROW(t.slice(2, 0, 1), std::out_of_range);
}

TEST(Tensor, SelectDropsFirstDim) {
  Tensor t = iota_f32({3, 4, 5});
  Tensor s = t.select(2);
  EXPECT_EQ(s.shape(), (Shape{4, 5}));
  EXPECT_EQ(s.strides(), (Shape{5, 1}));
  EXPECT_EQ(at(s, {1, 2}), 47.0f);
  Tensor col = t.slice(2, 1, 2).select(1);  // [4, 1] view with strides [5, 1]
  EXPECT_EQ(col.shape(), (Shape{4, 1}));
  EXPECT_EQ(at(col, {3, 0}), 20.0f + 15.0f + 1.0f);
  Tensor scalar = t.select(0).select(0).select(3);
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(*scalar.data<float>(), 3.0f);
  EXPECT_THROW(t.select(3), std::out_of_range);
  EXPECT_THROW(t.select(-1), std::out_of_range);
  EXPECT_THROW(scalar.select(0), std::out_of_range);
}

TEST(Tensor, CloneOfStridedViewIsContiguousCopy) {
  Tensor t = iota_f32({3, 4, 5});
  Tensor v = t.slice(1, 1, 3).slice(2, 2, 5);  // [3, 2, 3]
  Tensor c = v.clone();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.shape(), (Shape{3, 2, 3}));
  const float* p = c.data<float>();
  int k = 0;
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t l = 0; l < 3; ++l) EXPECT_EQ(p[k++], static_cast<float>(i * 20 + (j + 1) * 5 + l + 2));
  t.data<float>()[27] = -1.0f;  // element (1, 1, 2) = c(1, 0, 0)
  EXPECT_EQ(c.data<float>()[6], 27.0f);
  Tensor scalar = t.select(0).select(0).select(1).clone();
  EXPECT_EQ(*scalar.data<float>(), 1.0f);
}

TEST(Tensor, ToF32ConvertsStridedViews) {
  Tensor b = Tensor::empty({3, 5}, DType::kBF16);
  auto* p = b.data<uint16_t>();
  for (int i = 0; i < 15; ++i) p[i] = f32_to_bf16(static_cast<float>(i) * 0.5f - 3.0f);
  Tensor f = b.slice(1, 1, 4).to_f32();
  EXPECT_EQ(f.dtype(), DType::kF32);
  EXPECT_EQ(f.shape(), (Shape{3, 3}));
  EXPECT_TRUE(f.is_contiguous());
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(f.data<float>()[r * 3 + c], static_cast<float>(r * 5 + c + 1) * 0.5f - 3.0f);

  Tensor e = Tensor::empty({4}, DType::kF8E4M3);
  const uint8_t bytes[4] = {0x38, 0x7E, 0x80, 0xC0};
  std::memcpy(e.raw_data(), bytes, 4);
  Tensor ef = e.to_f32();
  EXPECT_EQ(ef.data<float>()[0], 1.0f);
  EXPECT_EQ(ef.data<float>()[1], 448.0f);
  EXPECT_TRUE(std::signbit(ef.data<float>()[2]));
  EXPECT_EQ(ef.data<float>()[3], -2.0f);

  Tensor f32 = iota_f32({2, 3}).slice(1, 1, 3).to_f32();
  EXPECT_EQ(f32.data<float>()[3], 5.0f);
  EXPECT_THROW(Tensor::empty({2}, DType::kI32).to_f32(), std::logic_error);
}

TEST(Tensor, FromStorageChecksBounds) {
  auto st = Storage::allocate_host(64);
  Tensor a = Tensor::from_storage(st, 32, {8}, DType::kF32);
  EXPECT_EQ(a.raw_data(), static_cast<char*>(st->data()) + 32);
  EXPECT_THROW(Tensor::from_storage(st, 36, {8}, DType::kF32), std::out_of_range);
  std::vector<float> buf(6, 2.0f);
  auto keep = std::make_shared<int>(1);
  Tensor b = Tensor::from_storage(Storage::borrow(buf.data(), 24, keep), 0, {2, 3}, DType::kF32);
  EXPECT_EQ(keep.use_count(), 2);
  EXPECT_EQ(at(b, {1, 2}), 2.0f);
  // Tensor::borrow: the caller's memory, as a row-major view; freeing the view frees nothing.
  {
    Tensor c = Tensor::borrow(buf.data(), {3, 2}, DType::kF32, Device::kCpu);
    EXPECT_EQ(c.raw_data(), buf.data());
    EXPECT_EQ(c.strides(), (Shape{2, 1}));
    c.data<float>()[5] = 7.0f;
  }
  EXPECT_EQ(buf[5], 7.0f);
}

// fp8 weight [300, 200]: blocks of 128x128 -> scale_inv [3, 2], last block row and column partial.
TEST(Weight, DequantizeRowsAppliesScalePerBlock) {
  const int64_t R = 300, C = 200;
  Weight w;
  w.weight = Tensor::empty({R, C}, DType::kF8E4M3);
  w.scale_inv = Tensor::empty({3, 2}, DType::kF32);
  auto* q = w.weight.data<uint8_t>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      uint8_t mag = static_cast<uint8_t>((r * 7 + c * 3) % 0x7E);  // never a NaN pattern
      q[r * C + c] = static_cast<uint8_t>(mag | (((r + c) & 1) ? 0x80 : 0));
    }
  auto* s = w.scale_inv.data<float>();
  for (int br = 0; br < 3; ++br)
    for (int bc = 0; bc < 2; ++bc) s[br * 2 + bc] = 0.5f + static_cast<float>(br * 4 + bc);  // 0.5 1.5 4.5 5.5 8.5 9.5
  ASSERT_TRUE(w.is_block_fp8());
  EXPECT_EQ(w.rows(), R);
  EXPECT_EQ(w.cols(), C);

  auto expect_row = [&](int64_t r, const float* got) {
    for (int64_t c = 0; c < C; ++c) {
      const float scale = 0.5f + static_cast<float>((r / 128) * 4 + (c / 128));
      const float want = fp8e4m3_to_f32(q[r * C + c]) * scale;
      ASSERT_EQ(got[c], want) << "r=" << r << " c=" << c;
    }
  };
  // Rows 100..299 cross both block-row boundaries (128, 256) and end in the partial block.
  std::vector<float> out(static_cast<size_t>((R - 100) * C));
  w.dequantize_rows(100, R, out.data());
  for (int64_t r = 100; r < R; ++r) expect_row(r, out.data() + (r - 100) * C);
  // A single row in the last, partial block, and the full copy.
  std::vector<float> one(static_cast<size_t>(C));
  w.dequantize_rows(299, 300, one.data());
  expect_row(299, one.data());
  Tensor full = w.to_f32();
  for (int64_t r = 0; r < R; ++r) expect_row(r, full.data<float>() + r * C);
}

TEST(Weight, NonFp8WeightIsConvertedOnly) {
  Weight w;
  w.weight = Tensor::empty({2, 3}, DType::kBF16);
  auto* p = w.weight.data<uint16_t>();
  for (int i = 0; i < 6; ++i) p[i] = f32_to_bf16(static_cast<float>(i) - 2.0f);
  EXPECT_FALSE(w.is_block_fp8());
  Tensor f = w.to_f32();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f.data<float>()[i], static_cast<float>(i) - 2.0f);
}

}  // namespace
}  // namespace pdserve
