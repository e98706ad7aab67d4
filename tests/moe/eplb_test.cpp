#include "moe/eplb.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "base/json.h"

namespace pdserve::moe {
namespace {

Matrix from_rows(const std::vector<std::vector<double>>& rows) {
  Matrix m(static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size()));
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t c = 0; c < rows[r].size(); ++c) m.at(static_cast<int64_t>(r), static_cast<int64_t>(c)) = rows[r][c];
  return m;
}

// Every logical expert has at least one copy, counts agree with the map, the inverse map agrees,
// and each GPU holds exactly P / gpus slots (by construction of the slot numbering).
void expect_valid(const Placement& p, const Matrix& w) {
  ASSERT_EQ(p.num_layers, w.rows);
  for (int l = 0; l < p.num_layers; ++l) {
    ASSERT_EQ(static_cast<int>(p.physical_to_logical[l].size()), p.num_physical);
    std::vector<int> copies(p.num_logical, 0);
    for (int e : p.physical_to_logical[l]) {
      ASSERT_GE(e, 0);
      ASSERT_LT(e, p.num_logical);
      ++copies[e];
    }
    int sum = 0;
    for (int e = 0; e < p.num_logical; ++e) {
      EXPECT_GE(copies[e], 1) << "layer " << l << " expert " << e << " not placed";
      EXPECT_EQ(copies[e], p.logical_count[l][e]);
      sum += p.logical_count[l][e];
      std::set<int> phys;
      for (int q : p.logical_to_physical[l][e])
        if (q >= 0) {
          EXPECT_EQ(p.physical_to_logical[l][q], e);
          phys.insert(q);
        }
      EXPECT_EQ(static_cast<int>(phys.size()), copies[e]);
    }
    EXPECT_EQ(sum, p.num_physical);
  }
}

TEST(BalancedPacking, HeaviestFirstIntoLightestPackWithRoom) {
  // 3 items per pack. Sorted: 9(i0) 7(i3) 5(i1) 4(i5) 2(i2) 1(i4). 9->A, 7->B, 5->B (7 < 9),
  // 4->A (9 < 12), 2->B (12 < 13; B is now full), 1->A.
  std::vector<double> w = {9, 5, 2, 7, 1, 4};
  Packing p = balanced_packing(w, 2);
  EXPECT_EQ(p.pack_index, (std::vector<int>{0, 1, 1, 1, 0, 0}));
  EXPECT_EQ(p.rank_in_pack, (std::vector<int>{0, 1, 2, 0, 2, 1}));
}

TEST(BalancedPacking, OneItemPerPackKeepsOrder) {
  std::vector<double> w = {1, 5, 3};
  Packing p = balanced_packing(w, 3);
  EXPECT_EQ(p.pack_index, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(p.rank_in_pack, (std::vector<int>{0, 0, 0}));
}

TEST(ReplicateExperts, ExtraSlotsGoToHighestLoadPerCopy) {
  // Loads 10, 4, 6. Slot 3: 10 -> expert 0 (now 5 per copy). Slot 4: 6 beats 5 -> expert 2.
  // Slot 5: 5 (e0) > 4 (e1) > 3 (e2) -> expert 0 again.
  Replication r = replicate_experts(std::vector<double>{10, 4, 6}, 6);
  EXPECT_EQ(r.physical_to_logical, (std::vector<int>{0, 1, 2, 0, 2, 0}));
  EXPECT_EQ(r.replica_rank, (std::vector<int>{0, 0, 0, 1, 1, 2}));
  EXPECT_EQ(r.logical_count, (std::vector<int>{3, 1, 2}));
}

TEST(Rebalance, HandComputedGlobalPlacement) {
  // 4 experts, 2 redundant, 2 GPUs (3 slots each). Replication: 8 -> e0 (4 per copy), then e1 (6)
  // -> slots [0,1,2,3,0,1], per-copy loads [4,3,1,2,4,3]. Packing (stable, heaviest first):
  // 4(s0)->G0, 4(s4)->G1, 3(s1)->G0, 3(s5)->G1, 2(s3)->G0, 1(s2)->G1.
  Matrix w = from_rows({{8, 6, 1, 2}});
  EplbOptions o;
  o.num_physical_experts = 6;
  o.num_gpus = 2;
  o.algorithm = EplbAlgorithm::kDeepseek;
  auto p = rebalance_experts(w, o);
  ASSERT_TRUE(p.has_value()) << p.error().message();
  EXPECT_EQ(p->physical_to_logical[0], (std::vector<int>{0, 1, 3, 0, 1, 2}));
  EXPECT_EQ(p->logical_count[0], (std::vector<int>{2, 2, 1, 1}));
  expect_valid(*p, w);
  auto b = compute_balancedness(w, p->physical_to_logical, 2);
  ASSERT_TRUE(b.has_value());
  EXPECT_DOUBLE_EQ(b->per_layer[0], 8.5 / 9.0);  // GPU loads 9 and 8
}

TEST(Rebalance, RejectsBadShapesWithClearErrors) {
  Matrix w(2, 16);
  EplbOptions o;
  o.num_physical_experts = 18;
  o.num_gpus = 4;  // 18 % 4 != 0
  auto r = rebalance_experts(w, o);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("multiple of the ep size"), std::string::npos) << r.error().message();
  o.num_physical_experts = 12;  // fewer slots than experts
  r = rebalance_experts(w, o);
  ASSERT_FALSE(r.has_value());
  o.num_physical_experts = 16;
  o.num_groups = 3;  // 16 % 3
  o.algorithm = EplbAlgorithm::kDeepseekHierarchical;
  r = rebalance_experts(w, o);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("groups"), std::string::npos);
  o.num_groups = 4;
  o.num_nodes = 3;  // hierarchical needs groups % nodes == 0
  r = rebalance_experts(w, o);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("--eplb-algorithm deepseek"), std::string::npos);
  o.algorithm = EplbAlgorithm::kAuto;  // auto falls back to the global policy
  EXPECT_TRUE(rebalance_experts(w, o).has_value());
  w.at(0, 0) = -1;
  EXPECT_FALSE(rebalance_experts(w, o).has_value());
  EXPECT_FALSE(parse_eplb_algorithm("greedy").has_value());
}

TEST(Rebalance, AllZeroLoadsStillPlaceEveryExpert) {
  Matrix w(3, 16);  // e.g. the dense layers of a recording
  EplbOptions o;
  o.num_physical_experts = 20;
  o.num_gpus = 4;
  o.num_groups = 4;
  o.num_nodes = 2;
  auto p = rebalance_experts(w, o);
  ASSERT_TRUE(p.has_value());
  expect_valid(*p, w);
}

// Property test: over random skewed loads, redundancy plus packing never makes the placement less
// balanced than the trivial one (expert p on slot p) and usually makes it much better.
TEST(Rebalance, ImprovesBalancednessOverTrivialOnSkewedLoads) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const int experts = 64, gpus = 8, redundant = (trial % 3) * 8;
    Matrix w(4, experts);
    std::uniform_real_distribution<double> u(0, 1);
    for (double& v : w.values) v = std::floor(1000 * std::pow(u(rng), 4));  // heavy skew
    EplbOptions o;
    o.num_physical_experts = experts + redundant;
    o.num_gpus = gpus;
    o.num_groups = 8;
    o.num_nodes = 2;
    auto p = rebalance_experts(w, o);
    ASSERT_TRUE(p.has_value());
    expect_valid(*p, w);
    std::vector<std::vector<int>> trivial(4, std::vector<int>(o.num_physical_experts));
    for (auto& row : trivial)
      for (int q = 0; q < o.num_physical_experts; ++q) row[q] = q % experts;
    auto before = compute_balancedness(w, trivial, gpus);
    auto after = compute_balancedness(w, p->physical_to_logical, gpus);
    ASSERT_TRUE(before.has_value() && after.has_value());
    EXPECT_GE(after->mean + 1e-12, before->mean) << "trial " << trial;
    EXPECT_GT(after->mean, 0.8) << "trial " << trial;
  }
}

class Golden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto j = read_json_file(std::string(PDSERVE_SOURCE_DIR) + "/tests/moe/golden/eplb_golden.json");
    ASSERT_TRUE(j.has_value()) << j.error().message();
    golden_ = new nlohmann::json(std::move(*j));
  }
  static void TearDownTestSuite() { delete golden_; }
  static Matrix weight_of(const nlohmann::json& c) {
    auto rows = c["weight"].get<std::vector<std::vector<double>>>();
    return from_rows(rows);
  }
  static EplbOptions options_of(const nlohmann::json& c) {
    EplbOptions o;
    o.num_physical_experts = c["num_physical_experts"].get<int>();
    o.num_groups = c["num_groups"].get<int>();
    o.num_nodes = c["num_nodes"].get<int>();
    o.num_gpus = c["num_gpus"].get<int>();
    o.algorithm = c.contains("algorithm") && c["algorithm"] == "deepseek" ? EplbAlgorithm::kDeepseek
                                                                           : EplbAlgorithm::kAuto;
    return o;
  }
  static nlohmann::json* golden_;
};
nlohmann::json* Golden::golden_ = nullptr;

TEST_F(Golden, IdenticalMapsToDeepSeekReferenceOnTieFreeCases) {
  const auto& cases = (*golden_)["exact"];
  ASSERT_GE(cases.size(), 16u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    Matrix w = weight_of(c);
    auto p = rebalance_experts(w, options_of(c));
    ASSERT_TRUE(p.has_value()) << p.error().message();
    EXPECT_EQ(p->physical_to_logical, c["physical_to_logical_map"].get<std::vector<std::vector<int>>>());
    EXPECT_EQ(p->logical_count, c["logical_count"].get<std::vector<std::vector<int>>>());
    // The copies of one expert carry equal loads, so which of them is "replica 0" is the order
    // torch.sort happens to give equal keys: compare each expert's set of slots.
    auto ref = c["logical_to_physical_map"].get<std::vector<std::vector<std::vector<int>>>>();
    auto ours = p->logical_to_physical;
    for (auto* m : {&ref, &ours})
      for (auto& layer : *m)
        for (auto& slots : layer) std::sort(slots.begin(), slots.end(), [](int a, int b) {
            return (a < 0 ? INT32_MAX : a) < (b < 0 ? INT32_MAX : b);
          });
    EXPECT_TRUE(ours == ref) << "logical_to_physical_map differs";
  }
}

TEST_F(Golden, NeverLessBalancedThanReferenceOnRandomAndZipfLoads) {
  const auto& cases = (*golden_)["random"];
  ASSERT_EQ(cases.size(), 50u);
  int equal = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    SCOPED_TRACE("random case " + std::to_string(i));
    Matrix w = weight_of(c);
    EplbOptions o = options_of(c);
    auto p = rebalance_experts(w, o);
    ASSERT_TRUE(p.has_value()) << p.error().message();
    expect_valid(*p, w);
    auto b = compute_balancedness(w, p->physical_to_logical, o.num_gpus);
    ASSERT_TRUE(b.has_value());
    double ref = c["reference_balancedness"].get<double>();
    EXPECT_GE(b->mean, ref - 1e-9);
    if (std::abs(b->mean - ref) < 1e-9) ++equal;
  }
  RecordProperty("equal_to_reference", equal);
}

}  // namespace
}  // namespace pdserve::moe
