#include "ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "test_util.h"

namespace pdserve::ops {
namespace {

using testing::rand_f32;
using testing::rand_weight;
using testing::rel_err;

// A shuffled page table, so token order never coincides with pool order.
std::vector<int32_t> shuffled_pages(int64_t count, int64_t num_pages, std::mt19937_64& rng) {
  std::vector<int32_t> all(static_cast<size_t>(num_pages));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<size_t>(count));
  return all;
}

TEST(KvCache, WriteThenGatherRoundTripsAcrossPages) {
  std::mt19937_64 rng(41);
  const int64_t page = 4, ld = 24;
  Tensor pool = Tensor::empty({10, page, ld}, DType::kF32);
  const std::vector<int32_t> table = shuffled_pages(5, 10, rng);
  Tensor all = rand_f32({19, ld}, rng);
  // Two writes, the second starting mid-page (an extend after a 7-token prefix).
  kv_write(pool, table, 0, all.slice(0, 0, 7));
  kv_write(pool, table, 7, all.slice(0, 7, 19));
  Tensor out = Tensor::empty({19, ld}, DType::kF32);
  kv_gather(pool, table, 19, out);
  for (int64_t i = 0; i < all.numel(); ++i) ASSERT_EQ(out.data<float>()[i], all.data<float>()[i]);
  // Token 9 lives at page table[2], slot 1.
  EXPECT_EQ(pool.data<float>()[(table[2] * page + 1) * ld + 3], all.data<float>()[9 * ld + 3]);
}

TEST(KvCache, PageTableMustCoverTheTokens) {
  std::mt19937_64 rng(42);
  Tensor pool = Tensor::empty({4, 4, 8}, DType::kF32);
  Tensor rows = rand_f32({5, 8}, rng);
  EXPECT_THROW(kv_write(pool, {0}, 0, rows), std::out_of_range);      // 5 tokens need 2 pages
  EXPECT_THROW(kv_write(pool, {0, 4}, 0, rows), std::out_of_range);   // page 4 does not exist
  EXPECT_THROW(kv_write(pool, {0, -1}, 0, rows), std::out_of_range);
  EXPECT_NO_THROW(kv_write(pool, {0, 1}, 0, rows));
  EXPECT_THROW(kv_write(pool, {0, 1}, 4, rows), std::out_of_range);   // positions 4..8 need 3 pages
  Tensor out = Tensor::empty({9, 8}, DType::kF32);
  EXPECT_THROW(kv_gather(pool, {0, 1}, 9, out), std::out_of_range);
  EXPECT_THROW(kv_write(pool, {0, 1}, 0, rand_f32({5, 7}, rng)), std::invalid_argument);
}

// Expanded attention in double, straight from model-spec §2.3.
std::vector<double> ref_prefill(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d,
                                int64_t prefix, double scale) {
  const int64_t s_len = q.size(0), t_len = latent.size(0), h = d.num_heads;
  const int64_t dn = d.qk_nope_head_dim, dr = d.qk_rope_head_dim, dv = d.v_head_dim, r = d.kv_lora_rank;
  const int64_t ld = d.latent_dim(), qd = d.qk_head_dim();
  const std::vector<double> w = testing::weight_to_double(kv_b);
  auto lat = [&](int64_t t, int64_t c) { return static_cast<double>(latent.data<float>()[t * ld + c]); };
  // kv[t][h][j] = sum_c w[h*(dn+dv)+j][c] * c_t[c]
  std::vector<double> kv(static_cast<size_t>(t_len * h * (dn + dv)));
  for (int64_t t = 0; t < t_len; ++t)
    for (int64_t j = 0; j < h * (dn + dv); ++j) {
      double acc = 0.0;
      for (int64_t c = 0; c < r; ++c) acc += w[j * r + c] * lat(t, c);
      kv[t * h * (dn + dv) + j] = acc;
    }
  std::vector<double> out(static_cast<size_t>(s_len * h * dv), 0.0);
  for (int64_t i = 0; i < s_len; ++i)
    for (int64_t hh = 0; hh < h; ++hh) {
      const float* qv = q.data<float>() + (i * h + hh) * qd;
      const int64_t visible = prefix + i + 1;
      std::vector<double> sc(static_cast<size_t>(visible));
      for (int64_t t = 0; t < visible; ++t) {
        double acc = 0.0;
        for (int64_t j = 0; j < dn; ++j) acc += qv[j] * kv[(t * h + hh) * (dn + dv) + j];
        for (int64_t j = 0; j < dr; ++j) acc += qv[dn + j] * lat(t, r + j);
        sc[t] = acc * scale;
      }
      const double mx = *std::max_element(sc.begin(), sc.end());
      double z = 0.0;
      for (double& v : sc) z += (v = std::exp(v - mx));
      for (int64_t t = 0; t < visible; ++t)
        for (int64_t j = 0; j < dv; ++j)
          out[(i * h + hh) * dv + j] += sc[t] / z * kv[(t * h + hh) * (dn + dv) + dn + j];
    }
  return out;
}

struct Case {
  MlaDims d;
  int64_t prefix, s_len;
  DType kv_b_dtype;
};

TEST(MlaPrefill, MatchesExpandedAttentionInDouble) {
  std::mt19937_64 rng(43);
  const std::vector<Case> cases = {
      {{1, 2, 2, 2, 3}, 0, 1, DType::kF32},
      {{3, 16, 8, 12, 20}, 0, 9, DType::kBF16},
      {{3, 16, 8, 12, 20}, 5, 4, DType::kF8E4M3},     // one partial fp8 block
      {{4, 32, 16, 32, 160}, 11, 6, DType::kF8E4M3},  // [256, 160]: 2 x 2 blocks, partial columns
      {{2, 128, 64, 128, 512}, 3, 2, DType::kBF16},   // V3 per-head dims
  };
  for (const Case& c : cases) {
    const int64_t t_len = c.prefix + c.s_len;
    Weight kv_b = rand_weight(c.d.num_heads * (c.d.qk_nope_head_dim + c.d.v_head_dim), c.d.kv_lora_rank,
                              c.kv_b_dtype, rng, 0.3f);
    Tensor q = rand_f32({c.s_len, c.d.num_heads, c.d.qk_head_dim()}, rng);
    Tensor latent = rand_f32({t_len, c.d.latent_dim()}, rng);
    Tensor out = Tensor::empty({c.s_len, c.d.num_heads, c.d.v_head_dim}, DType::kF32);
    const float scale = 0.7f / std::sqrt(static_cast<float>(c.d.qk_head_dim()));
    mla_prefill(q, latent, kv_b, c.d, c.prefix, scale, out);
    EXPECT_LT(rel_err(out.data<float>(), ref_prefill(q, latent, kv_b, c.d, c.prefix, scale)), 1e-5)
        << "H=" << c.d.num_heads << " prefix=" << c.prefix << " S=" << c.s_len << " " << dtype_name(c.kv_b_dtype);
  }
}

TEST(MlaPrefill, RejectsMismatchedShapes) {
  std::mt19937_64 rng(44);
  const MlaDims d{2, 8, 4, 6, 10};
  Weight kv_b = rand_weight(2 * 14, 10, DType::kF32, rng);
  Tensor q = rand_f32({3, 2, 12}, rng);
  Tensor out = Tensor::empty({3, 2, 6}, DType::kF32);
  EXPECT_THROW(mla_prefill(q, rand_f32({4, 14}, rng), kv_b, d, 0, 1.0f, out), std::invalid_argument);  // T != 0 + 3
  EXPECT_THROW(mla_prefill(q, rand_f32({4, 13}, rng), kv_b, d, 1, 1.0f, out), std::invalid_argument);
  Weight wrong = rand_weight(2 * 14, 11, DType::kF32, rng);
  EXPECT_THROW(mla_prefill(q, rand_f32({4, 14}, rng), wrong, d, 1, 1.0f, out), std::invalid_argument);
  EXPECT_NO_THROW(mla_prefill(q, rand_f32({4, 14}, rng), kv_b, d, 1, 1.0f, out));
}

TEST(SplitKvB, SplitsHeadMajorRowsIntoUkAndUv) {
  std::mt19937_64 rng(45);
  const MlaDims d{3, 16, 8, 12, 140};
  Weight kv_b = rand_weight(3 * 28, 140, DType::kF8E4M3, rng);
  Tensor w_uk = Tensor::empty({3, 16, 140}, DType::kF32), w_uv = Tensor::empty({3, 12, 140}, DType::kF32);
  split_kv_b(kv_b, d, w_uk, w_uv);
  for (int64_t h = 0; h < 3; ++h)
    for (int64_t c = 0; c < 140; ++c) {
      for (int64_t j = 0; j < 16; ++j)
        ASSERT_EQ(w_uk.data<float>()[(h * 16 + j) * 140 + c], static_cast<float>(testing::weight_at(kv_b, h * 28 + j, c)));
      for (int64_t j = 0; j < 12; ++j)
        ASSERT_EQ(w_uv.data<float>()[(h * 12 + j) * 140 + c],
                  static_cast<float>(testing::weight_at(kv_b, h * 28 + 16 + j, c)));
    }
}

// The absorbed decode over the paged pool must equal the expanded prefill's last token.
TEST(MlaDecode, AbsorbedEqualsExpandedForTheLastToken) {
  std::mt19937_64 rng(46);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    for (const MlaDims& d : {MlaDims{4, 32, 16, 24, 160}, MlaDims{2, 128, 64, 128, 512}}) {
      const int64_t page = 5, num_pages = 40;
      const std::vector<int64_t> lens = {1, 13, 37};
      const int64_t b = static_cast<int64_t>(lens.size());
      Weight kv_b = rand_weight(d.num_heads * (d.qk_nope_head_dim + d.v_head_dim), d.kv_lora_rank, dt, rng, 0.3f);
      Tensor w_uk = Tensor::empty({d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank}, DType::kF32);
      Tensor w_uv = Tensor::empty({d.num_heads, d.v_head_dim, d.kv_lora_rank}, DType::kF32);
      split_kv_b(kv_b, d, w_uk, w_uv);
      const float scale = 0.1352337788608801f * std::sqrt(192.0f / static_cast<float>(d.qk_head_dim()));

      Tensor pool = Tensor::empty({num_pages, page, d.latent_dim()}, DType::kF32);
      std::vector<int32_t> order(num_pages);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<std::vector<int32_t>> tables;
      std::vector<Tensor> latents;
      size_t next = 0;
      for (int64_t len : lens) {
        const int64_t pages = (len + page - 1) / page;
        tables.emplace_back(order.begin() + next, order.begin() + next + pages);
        next += pages;
        latents.push_back(rand_f32({len, d.latent_dim()}, rng));
        kv_write(pool, tables.back(), 0, latents.back());
      }
      Tensor q = rand_f32({b, d.num_heads, d.qk_head_dim()}, rng);
      Tensor out = Tensor::empty({b, d.num_heads, d.v_head_dim}, DType::kF32);
      mla_decode(q, pool, tables, lens, w_uk, w_uv, d, scale, out);

      for (int64_t i = 0; i < b; ++i) {
        Tensor qi = q.slice(0, i, i + 1);
        Tensor expanded = Tensor::empty({1, d.num_heads, d.v_head_dim}, DType::kF32);
        mla_prefill(qi, latents[i], kv_b, d, lens[i] - 1, scale, expanded);
        std::vector<double> want(expanded.data<float>(), expanded.data<float>() + expanded.numel());
        EXPECT_LT(rel_err(out.data<float>() + i * d.num_heads * d.v_head_dim, want), 1e-5)
            << dtype_name(dt) << " H=" << d.num_heads << " len=" << lens[i];
        const std::vector<double> exact = ref_prefill(qi, latents[i], kv_b, d, lens[i] - 1, scale);
        EXPECT_LT(rel_err(out.data<float>() + i * d.num_heads * d.v_head_dim, exact), 1e-5);
      }
    }
  }
}

TEST(MlaDecode, RejectsUncoveredTokensAndBadShapes) {
  std::mt19937_64 rng(47);
  const MlaDims d{2, 8, 4, 6, 10};
  Tensor pool = Tensor::empty({3, 4, 14}, DType::kF32);
  Tensor w_uk = rand_f32({2, 8, 10}, rng), w_uv = rand_f32({2, 6, 10}, rng);
  Tensor q = rand_f32({1, 2, 12}, rng);
  Tensor out = Tensor::empty({1, 2, 6}, DType::kF32);
  EXPECT_NO_THROW(mla_decode(q, pool, {{2, 0}}, {8}, w_uk, w_uv, d, 1.0f, out));
  EXPECT_THROW(mla_decode(q, pool, {{2, 0}}, {9}, w_uk, w_uv, d, 1.0f, out), std::out_of_range);
  EXPECT_THROW(mla_decode(q, pool, {{2, 3}}, {8}, w_uk, w_uv, d, 1.0f, out), std::out_of_range);
  EXPECT_THROW(mla_decode(q, pool, {{2, 0}}, {0}, w_uk, w_uv, d, 1.0f, out), std::invalid_argument);
  EXPECT_THROW(mla_decode(q, pool, {{2, 0}, {1}}, {8, 1}, w_uk, w_uv, d, 1.0f, out), std::invalid_argument);
  EXPECT_THROW(mla_decode(q, pool, {{2, 0}}, {8}, w_uv, w_uv, d, 1.0f, out), std::invalid_argument);
  Tensor wide_pool = Tensor::empty({3, 4, 15}, DType::kF32);
  EXPECT_THROW(mla_decode(q, wide_pool, {{2, 0}}, {8}, w_uk, w_uv, d, 1.0f, out), std::invalid_argument);
}

TEST(Attention, DeviceTensorsHaveNoCudaPath) {
  Tensor pool = testing::fake_cuda({2, 4, 8}, DType::kF32);
  Tensor rows = testing::fake_cuda({3, 8}, DType::kF32);
  EXPECT_THROW(kv_write(pool, {0}, 0, rows), std::runtime_error);
  EXPECT_THROW(kv_gather(pool, {0}, 3, rows), std::runtime_error);
}

}  // namespace
}  // namespace pdserve::ops
