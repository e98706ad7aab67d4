// CPU reference of the MoE dispatch/combine ops on hand-checked cases: entry order, both layouts,
// ids out of range and rows past the buffer.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "ops/moe_dispatch.h"

namespace pdserve::ops {
namespace {

Tensor i32(const Shape& shape, std::vector<int32_t> v) {
  Tensor t = Tensor::empty(shape, DType::kI32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

std::vector<int32_t> vec(const Tensor& t) { return {t.data<int32_t>(), t.data<int32_t>() + t.numel()}; }

TEST(MoeDispatch, CountsIgnoreIdsOutOfRange) {
  Tensor ids = i32({3, 2}, {1, 0, 1, 2, 7, -1});
  Tensor counts = Tensor::empty({3}, DType::kI32);
  moe_count(ids, counts);
  EXPECT_EQ(vec(counts), (std::vector<int32_t>{1, 2, 1}));
}

TEST(MoeDispatch, ScatterContiguousAndMaskedFollowEntryOrder) {
  // 3 tokens, rows [t, t]; entries (0,0)->1 (0,1)->0 (1,0)->1 (1,1)->2 (2,0)->1 (2,1)->0.
  Tensor x = Tensor::empty({3, 2}, DType::kF32);
  for (int t = 0; t < 3; ++t) x.data<float>()[2 * t] = x.data<float>()[2 * t + 1] = static_cast<float>(t + 1);
  Tensor ids = i32({3, 2}, {1, 0, 1, 2, 1, 0});
  Tensor slots = Tensor::empty({3, 2}, DType::kI32), counts = Tensor::empty({3}, DType::kI32);
  // Contiguous: counts {2, 3, 1} -> bases {0, 2, 5}.
  Tensor out = Tensor::empty({6, 2}, DType::kF32);
  moe_scatter(x, ids, i32({3}, {0, 2, 5}), out, slots, counts);
  EXPECT_EQ(vec(slots), (std::vector<int32_t>{2, 0, 3, 5, 4, 1}));
  EXPECT_EQ(vec(counts), (std::vector<int32_t>{2, 3, 1}));
  const std::vector<float> want_rows = {1, 3, 1, 2, 3, 2};  // token+1 of each output row
  for (int r = 0; r < 6; ++r) EXPECT_EQ(out.data<float>()[2 * r], want_rows[r]) << r;
  // Masked, max_m = 3 over a 6-row buffer: expert 2's block would start at row 6, past the end, so
  // its entry gets slot -1 and nothing is written for it.
  Tensor masked = Tensor::empty({6, 2}, DType::kF32);
  moe_scatter(x, ids, i32({3}, {0, 3, 6}), masked, slots, counts);
  EXPECT_EQ(vec(slots), (std::vector<int32_t>{3, 0, 4, -1, 5, 1}));
  EXPECT_EQ(vec(counts), (std::vector<int32_t>{2, 3, 1}));
  EXPECT_EQ(masked.data<float>()[2 * 2], 0.0f);  // row 2: expert 0 has only two entries
  EXPECT_EQ(masked.data<float>()[2 * 5], 3.0f);  // token 2, expert 1's third entry
}

TEST(MoeDispatch, CombineAddsWeightedRowsAndSkipsDropped) {
  Tensor y = Tensor::empty({3, 2}, DType::kF32);
  for (int i = 0; i < 6; ++i) y.data<float>()[i] = static_cast<float>(i);
  Tensor slots = i32({2, 2}, {2, 0, -1, 1});
  Tensor w = Tensor::empty({2, 2}, DType::kF32);
  const float wv[] = {0.5f, 2.0f, 9.0f, 1.0f};
  std::copy(wv, wv + 4, w.data<float>());
  Tensor out = Tensor::empty({2, 2}, DType::kF32);
  out.data<float>()[0] = 1.0f;
  moe_combine(y, slots, w, out);
  EXPECT_FLOAT_EQ(out.data<float>()[0], 1.0f + 0.5f * 4 + 2.0f * 0);
  EXPECT_FLOAT_EQ(out.data<float>()[1], 0.5f * 5 + 2.0f * 1);
  EXPECT_FLOAT_EQ(out.data<float>()[2], 2.0f);
  EXPECT_FLOAT_EQ(out.data<float>()[3], 3.0f);
}

TEST(MoeDispatch, RejectsMismatchedShapes) {
  Tensor x = Tensor::empty({3, 4}, DType::kF32), out = Tensor::empty({6, 5}, DType::kF32);
  Tensor ids = i32({3, 2}, {0, 1, 0, 1, 0, 1});
  Tensor slots = Tensor::empty({3, 2}, DType::kI32), counts = Tensor::empty({2}, DType::kI32);
  EXPECT_THROW(moe_scatter(x, ids, i32({2}, {0, 3}), out, slots, counts), std::invalid_argument);
}

// Padding rows of a graph batch (length 0) lose every expert; real rows keep theirs, and the
// dropped entries then reach no expert in scatter.
TEST(MoeDispatch, DropPaddingRowsClearsOnlyZeroLengthRows) {
  Tensor ids = i32({4, 2}, {1, 0, 2, 1, 0, 2, 1, 1});
  moe_drop_padding_rows(i32({4}, {5, 0, 7, 0}), ids);
  EXPECT_EQ(vec(ids), (std::vector<int32_t>{1, 0, -1, -1, 0, 2, -1, -1}));
  Tensor counts = Tensor::empty({3}, DType::kI32);
  moe_count(ids, counts);
  EXPECT_EQ(vec(counts), (std::vector<int32_t>{2, 1, 1}));
  Tensor wrong = i32({3}, {1, 1, 1});
  EXPECT_THROW(moe_drop_padding_rows(wrong, ids), std::invalid_argument);
}

TEST(MoeDispatch, MapExpertIdsUsesTheTableAndKeepsNoneAsNone) {
  // Logical 0..3 on physical copies {5, 1, 4, 1} (logical 1 and 3 share no copy: made up, the op
  // only looks the ids up); -1 and ids past the table map to -1.
  const Tensor table = i32({4}, {5, 1, 4, 2});
  const Tensor ids = i32({3, 2}, {0, 3, -1, 2, 1, 4});
  Tensor out = Tensor::empty({3, 2}, DType::kI32);
  moe_map_expert_ids(ids, table, out);
  EXPECT_EQ(vec(out), (std::vector<int32_t>{5, 2, -1, 4, 1, -1}));
  Tensor in_place = ids.clone();
  moe_map_expert_ids(in_place, table, in_place);
  EXPECT_EQ(vec(in_place), vec(out));
  Tensor wrong = Tensor::empty({2, 3}, DType::kI32);
  EXPECT_THROW(moe_map_expert_ids(ids, table, wrong), std::invalid_argument);
  EXPECT_THROW(moe_map_expert_ids(ids, Tensor::empty({4}, DType::kI64), out), std::invalid_argument);
}

// Logical e has copies {10e, 10e + 1, ...} (copies[e] of them) in a table of 3 columns.
struct ReplicaTable {
  Tensor replicas = i32({4, 3}, {0, -9, -9, 10, 11, -9, 20, 21, 22, 30, 31, 32});
  Tensor copies = i32({4}, {1, 2, 3, 3});
};

std::set<int32_t> as_set(const Tensor& t) { return {t.data<int32_t>(), t.data<int32_t>() + t.numel()}; }

Tensor draw_at(int64_t d) {
  Tensor t = Tensor::empty({1}, DType::kI64);
  t.data<int64_t>()[0] = d;
  return t;
}

TEST(MoeDispatch, PickExpertReplicasChoosesACopyOfTheSameExpert) {
  const ReplicaTable tab;
  const Tensor ids = i32({4, 3}, {0, 1, 2, 3, -1, 4, 2, 2, 2, 1, 0, 3});
  Tensor out = Tensor::empty(ids.shape(), DType::kI32), draw = draw_at(0);
  moe_pick_expert_replicas(ids, tab.replicas, tab.copies, 7, draw, out);
  EXPECT_EQ(draw.data<int64_t>()[0], 1);  // the next call draws afresh
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int32_t e = ids.data<int32_t>()[i], p = out.data<int32_t>()[i];
    if (e < 0 || e >= 4) {
      EXPECT_EQ(p, -1) << i;
    } else {
      EXPECT_EQ(p / 10, e) << i;                            // a copy of e ...
      EXPECT_LT(p % 10, tab.copies.data<int32_t>()[e]) << i;  // ... among its copies[e] (never the -9 padding)
    }
  }
  // The same (seed, draw) picks the same copies, also in place.
  Tensor again = ids.clone(), draw0 = draw_at(0);
  moe_pick_expert_replicas(again, tab.replicas, tab.copies, 7, draw0, again);
  EXPECT_EQ(vec(again), vec(out));
}

TEST(MoeDispatch, PickExpertReplicasSpreadsEvenlyOverCopiesEntriesAndDraws) {
  const ReplicaTable tab;
  // 6,000 entries of expert 2 (three copies) over 3 draws: each copy near a third, and neighbouring
  // entries, and the same entry in consecutive draws, agree about a third of the time (independent).
  const int64_t n = 2000;
  const Tensor ids = i32({n, 1}, std::vector<int32_t>(n, 2));
  Tensor draw = draw_at(41);
  std::map<int32_t, int> per_copy;
  std::vector<std::vector<int32_t>> draws;
  for (int d = 0; d < 3; ++d) {
    Tensor out = Tensor::empty(ids.shape(), DType::kI32);
    moe_pick_expert_replicas(ids, tab.replicas, tab.copies, 5, draw, out);
    draws.push_back(vec(out));
    for (int32_t p : draws.back()) ++per_copy[p];
  }
  EXPECT_EQ(draw.data<int64_t>()[0], 44);
  ASSERT_EQ(per_copy.size(), 3u);
  for (const auto& [p, c] : per_copy) EXPECT_NEAR(c, 2000, 150) << "copy " << p;
  int same_neighbour = 0, same_next_draw = 0;
  for (int64_t i = 0; i + 1 < n; ++i) same_neighbour += draws[0][i] == draws[0][i + 1];
  for (int64_t i = 0; i < n; ++i) same_next_draw += draws[0][i] == draws[1][i];
  EXPECT_NEAR(same_neighbour, n / 3, 120);
  EXPECT_NEAR(same_next_draw, n / 3, 120);
  // Another seed (another rank) picks differently.
  Tensor other = Tensor::empty(ids.shape(), DType::kI32), d41 = draw_at(41);
  moe_pick_expert_replicas(ids, tab.replicas, tab.copies, 6, d41, other);
  EXPECT_NE(vec(other), draws[0]);
}

TEST(MoeDispatch, PickExpertReplicasClampsCopiesAndChecksShapes) {
  const Tensor replicas = i32({2, 2}, {0, 1, 10, 11});
  const Tensor copies = i32({2}, {0, 9});  // clamped to 1 and 2
  const Tensor ids = i32({200, 1}, std::vector<int32_t>(200, 0));
  Tensor out = Tensor::empty(ids.shape(), DType::kI32), draw = draw_at(0);
  moe_pick_expert_replicas(ids, replicas, copies, 1, draw, out);
  EXPECT_EQ(as_set(out), (std::set<int32_t>{0}));
  const Tensor ones = i32({200, 1}, std::vector<int32_t>(200, 1));
  moe_pick_expert_replicas(ones, replicas, copies, 1, draw, out);
  EXPECT_EQ(as_set(out), (std::set<int32_t>{10, 11}));
  EXPECT_THROW(moe_pick_expert_replicas(ids, replicas, i32({3}, {1, 1, 1}), 1, draw, out), std::invalid_argument);
  Tensor draw32 = Tensor::empty({1}, DType::kI32);
  EXPECT_THROW(moe_pick_expert_replicas(ids, replicas, copies, 1, draw32, out), std::invalid_argument);
  Tensor short_out = Tensor::empty({100, 1}, DType::kI32);
  EXPECT_THROW(moe_pick_expert_replicas(ids, replicas, copies, 1, draw, short_out), std::invalid_argument);
  EXPECT_THROW(moe_pick_expert_replicas(ids, Tensor::empty({2, 0}, DType::kI32), copies, 1, draw, out),
               std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::ops
