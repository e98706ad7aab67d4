#include "ops/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "test_util.h"

namespace pdserve::ops {
namespace {

using testing::rand_f32;

RopeParams v3_params() {
  RopeParams p;
  p.rotary_dim = 64;
  p.theta = 10000.0;
  p.type = "yarn";
  p.factor = 40.0;
  p.original_max_position_embeddings = 4096;
  p.beta_fast = 32.0;
  p.beta_slow = 1.0;
  p.mscale = 1.0;
  p.mscale_all_dim = 1.0;
  return p;
}

TEST(RopeTable, DeepSeekV3YarnMatchesTransformers) {
  // transformers 5.17 on device (model-spec §2.4).
  const std::vector<double> expected = {
      1.0, 0.7498942017555237, 0.5623413324356079, 0.4216965138912201, 0.3162277638912201, 0.23713736236095428,
      0.17782793939113617, 0.1333521455526352, 0.10000000149011612, 0.07498941570520401, 0.05623412877321243,
      0.039006926119327545, 0.026879360899329185, 0.01837814413011074, 0.012447956018149853, 0.0083345090970397,
      0.005500000435858965, 0.0035619973205029964, 0.002249365206807852, 0.0013705134624615312,
      0.0007905694073997438, 0.0004149904125370085, 0.00017782794020604342, 3.333803397254087e-05,
      2.499999936844688e-05, 1.8747354260995053e-05, 1.4058532542549074e-05, 1.0542412383074407e-05,
      7.905694474175107e-06, 5.928434347879374e-06, 4.445698323252145e-06, 3.3338035336782923e-06};
  const RopeTable t = make_rope_table(v3_params());
  ASSERT_EQ(t.inv_freq.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(t.inv_freq[i], expected[i], 1e-6 * expected[i]) << "i=" << i;
  EXPECT_EQ(t.attention_factor, 1.0f);
}

TEST(RopeTable, TinyYarnMatchesTransformers) {
  // model-spec §10: rope 8, factor 40, original 64; theta 10000 gives f = 1, 0.1, 0.01, 0.001 and the
  // ramp (low 0, high 2) blends index 1 half-and-half: 0.1 * (0.5 + 0.5 / 40) = 0.05125.
  RopeParams p = v3_params();
  p.rotary_dim = 8;
  p.original_max_position_embeddings = 64;
  const RopeTable t = make_rope_table(p);
  const std::vector<double> expected = {1.0, 0.05125, 2.5e-4, 2.5e-5};
  ASSERT_EQ(t.inv_freq.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(t.inv_freq[i], expected[i], 1e-6 * expected[i]) << "i=" << i;
  EXPECT_EQ(t.attention_factor, 1.0f);
}

TEST(RopeTable, DefaultFrequencies) {
  RopeParams p;
  p.rotary_dim = 16;
  p.theta = 500000.0;
  const RopeTable t = make_rope_table(p);
  ASSERT_EQ(t.inv_freq.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    const double want = std::pow(500000.0, -2.0 * i / 16.0);
    EXPECT_NEAR(t.inv_freq[i], want, 1e-6 * want) << "i=" << i;
  }
  EXPECT_EQ(t.attention_factor, 1.0f);
}

TEST(RopeTable, AttentionFactorRules) {
  EXPECT_DOUBLE_EQ(yarn_get_mscale(1.0, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(yarn_get_mscale(0.5, 1.0), 1.0);
  EXPECT_NEAR(yarn_get_mscale(40.0, 1.0), 1.3688879454, 1e-9);
  EXPECT_NEAR(yarn_get_mscale(40.0, 0.707), 0.1 * 0.707 * std::log(40.0) + 1.0, 1e-12);

  RopeParams p = v3_params();
  p.mscale = 0.0;  // unset: falls back to get_mscale(factor)
  EXPECT_NEAR(make_rope_table(p).attention_factor, 1.3688879454, 1e-6);
  p.mscale = 0.707;
  p.mscale_all_dim = 1.0;
  EXPECT_NEAR(make_rope_table(p).attention_factor, yarn_get_mscale(40, 0.707) / yarn_get_mscale(40, 1.0), 1e-6);
  p.attention_factor = 0.25;
  EXPECT_EQ(make_rope_table(p).attention_factor, 0.25f);
}

TEST(RopeTable, RejectsBadParams) {
  RopeParams p;
  p.rotary_dim = 7;
  EXPECT_THROW(make_rope_table(p), std::invalid_argument);
  p.rotary_dim = 8;
  p.type = "dynamic";
  EXPECT_THROW(make_rope_table(p), std::invalid_argument);
}

Tensor positions_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::kI32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

TEST(ApplyRope, MatchesDirectFormulaOnlyInsideTheRotarySpan) {
  std::mt19937_64 rng(21);
  RopeParams p = v3_params();
  p.mscale = 0.0;  // attention_factor 1.369, so the scaling is exercised too
  const RopeTable table = make_rope_table(p);
  const std::vector<int32_t> pos = {0, 1, 17, 4095, 4096, 100000};
  const int64_t t = 6, h = 3, width = 192 + 5, offset = 128;
  // x is [T, H, 192] inside a wider buffer, the q layout (nope | rope) with rope at offset 128.
  Tensor x = rand_f32({t, h, width}, rng).slice(2, 0, 192);
  Tensor orig = x.clone();
  apply_rope_interleaved(x, offset, positions_tensor(pos), table);
  std::vector<double> ref(static_cast<size_t>(t * h * 192)), got(ref.size());
  for (int64_t i = 0; i < t; ++i)
    for (int64_t hh = 0; hh < h; ++hh) {
      const float* o = orig.data<float>() + (i * h + hh) * 192;
      const float* xv = x.data<float>() + i * x.strides()[0] + hh * x.strides()[1];
      for (int64_t c = 0; c < 192; ++c) {
        ref[(i * h + hh) * 192 + c] = o[c];
        got[(i * h + hh) * 192 + c] = xv[c];
      }
      for (int64_t k = 0; k < 32; ++k) {
        // The angle is defined as an f32 product (HF); everything after it is exact here.
        const double ang = static_cast<float>(pos[i]) * table.inv_freq[k];
        const double c = std::cos(ang) * table.attention_factor, s = std::sin(ang) * table.attention_factor;
        const double a = o[offset + 2 * k], b = o[offset + 2 * k + 1];
        ref[(i * h + hh) * 192 + offset + 2 * k] = a * c - b * s;
        ref[(i * h + hh) * 192 + offset + 2 * k + 1] = b * c + a * s;
      }
    }
  std::vector<float> gotf(got.begin(), got.end());
  EXPECT_LT(testing::rel_err(gotf.data(), ref), 1e-6);
  for (size_t i = 0; i < ref.size(); ++i) {
    if (i % 192 < static_cast<size_t>(offset)) {
      ASSERT_EQ(got[i], ref[i]) << "nope part must be untouched";
    }
  }
}

TEST(ApplyRope, PreservesNormsAndDotProductsDependOnlyOnDistance) {
  std::mt19937_64 rng(22);
  RopeParams p;
  p.rotary_dim = 64;
  const RopeTable table = make_rope_table(p);
  Tensor q0 = rand_f32({1, 1, 64}, rng), k0 = rand_f32({1, 1, 64}, rng);
  auto rotated = [&](const Tensor& v, int32_t pos) {
    Tensor c = v.clone();
    apply_rope_interleaved(c, 0, positions_tensor({pos}), table);
    return c;
  };
  auto dot = [](const Tensor& a, const Tensor& b) {
    double s = 0.0;
    for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.data<float>()[i]) * b.data<float>()[i];
    return s;
  };
  const double n0 = dot(q0, q0);
  for (int32_t pos : {0, 3, 250, 1000}) {
    Tensor r = rotated(q0, pos);
    EXPECT_NEAR(dot(r, r), n0, 1e-5 * n0) << "pos " << pos;
    // Pairwise norms too: each 2-vector is rotated on its own.
    for (int i = 0; i < 32; ++i) {
      const float* a = q0.data<float>() + 2 * i;
      const float* b = r.data<float>() + 2 * i;
      EXPECT_NEAR(std::hypot(b[0], b[1]), std::hypot(a[0], a[1]), 1e-6);
    }
  }
  // Small positions: the f32 angle pos * inv_freq is exact to ~1e-6 there; at position 1000 its
  // rounding alone moves q.k by ~1e-5 (the same in HF, which also forms the angle in f32).
  for (int32_t delta : {0, 1, 7, 13}) {
    const double base = dot(rotated(q0, 5 + delta), rotated(k0, 5));
    for (int32_t start : {0, 20, 50})
      EXPECT_NEAR(dot(rotated(q0, start + delta), rotated(k0, start)), base, 1e-5) << "delta " << delta;
  }
}

TEST(ApplyRope, RejectsBadShapes) {
  std::mt19937_64 rng(23);
  RopeParams p;
  p.rotary_dim = 8;
  const RopeTable table = make_rope_table(p);
  Tensor x = rand_f32({2, 1, 10}, rng);
  EXPECT_THROW(apply_rope_interleaved(x, 3, positions_tensor({0, 1}), table), std::invalid_argument);
  EXPECT_THROW(apply_rope_interleaved(x, 0, positions_tensor({0}), table), std::invalid_argument);
  EXPECT_NO_THROW(apply_rope_interleaved(x, 2, positions_tensor({0, 1}), table));
}

}  // namespace
}  // namespace pdserve::ops
