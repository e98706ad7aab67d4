#include "moe/expert_location.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>

#include "moe/ep_placement.h"
#include "moe/expert_location_dispatch.h"
#include "moe/expert_location_torch.h"

namespace pdserve::moe {
namespace {

namespace fs = std::filesystem;

const std::string kGolden = std::string(PDSERVE_SOURCE_DIR) + "/tests/moe/golden/";

ExpertLayout layout(int layers, int logical, int physical, int ep) { return {layers, logical, physical, ep}; }

TEST(ExpertLocation, TrivialWrapsRedundantSlotsAroundAsSGLang) {
  auto loc = ExpertLocation::trivial(layout(2, 4, 6, 3));
  ASSERT_TRUE(loc.has_value());
  EXPECT_EQ(loc->physical_to_logical()[1], (std::vector<int>{0, 1, 2, 3, 0, 1}));
  EXPECT_EQ(loc->replicas(0, 0), (std::vector<int>{0, 4}));
  EXPECT_EQ(loc->replicas(0, 3), (std::vector<int>{3}));
  EXPECT_EQ(loc->rank_of_physical(5), 2);  // 2 slots per rank
  EXPECT_EQ(loc->local_physical(1), (std::vector<int>{2, 3}));
}

TEST(ExpertLocation, RejectsBadLayoutsAndMappings) {
  auto bad = ExpertLocation::trivial(layout(2, 4, 6, 4));  // 6 % 4
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message().find("--ep-num-redundant-experts"), std::string::npos);
  EXPECT_FALSE(ExpertLocation::from_mapping(layout(1, 4, 4, 2), {{0, 1, 2, 2}}).has_value());  // 3 missing
  EXPECT_FALSE(ExpertLocation::from_mapping(layout(1, 4, 4, 2), {{0, 1, 2, 4}}).has_value());  // out of range
  EXPECT_FALSE(ExpertLocation::from_mapping(layout(2, 4, 4, 2), {{0, 1, 2, 3}}).has_value());  // 1 layer of 2
  auto missing = ExpertLocation::from_mapping(layout(1, 4, 4, 2), {{0, 1, 2, 2}});
  EXPECT_NE(missing.error().message().find("no copy of expert 3"), std::string::npos) << missing.error().message();
}

TEST(ExpertLocation, StaticDispatchPrefersLocalCopyAndSpreadsTheRest) {
  // Expert 0 has copies on ranks 0 and 2 (slots 0 and 5), expert 1 only on rank 0.
  // 4 ranks x 2 slots: [0 1 | 2 3 | 4 0 | 5 6], 7 experts.
  auto loc = ExpertLocation::from_mapping(layout(1, 7, 8, 4), {{0, 1, 2, 3, 4, 0, 5, 6}});
  ASSERT_TRUE(loc.has_value()) << loc.error().message();
  std::map<int, int> uses;  // copy of expert 0 -> ranks using it
  for (int r = 0; r < 4; ++r) {
    auto m = loc->static_dispatch_map(r);
    for (int e = 0; e < 7; ++e) EXPECT_EQ(loc->logical_of(0, m[0][e]), e);
    if (r == 0) { EXPECT_EQ(m[0][0], 0); }
    if (r == 2) { EXPECT_EQ(m[0][0], 5); }
    EXPECT_EQ(m[0][1], 1);
    ++uses[m[0][0]];
  }
  EXPECT_EQ(uses[0], 2);  // ranks 1 and 3 split fairly: one each
  EXPECT_EQ(uses[5], 2);
  EXPECT_EQ(loc->static_dispatch_map(3), loc->static_dispatch_map(3));  // deterministic
}

TEST(ExpertDispatcher, DynamicSpreadsOverCopiesStaticIsFixed) {
  auto loc = std::make_shared<ExpertLocation>(*ExpertLocation::from_mapping(layout(1, 3, 4, 2), {{0, 1, 2, 0}}));
  ExpertDispatcher dyn(loc, DispatchAlgorithm::kDynamic, 0);
  std::vector<int32_t> ids(2000, 0);
  dyn.to_physical(0, ids);
  int on_3 = static_cast<int>(std::count(ids.begin(), ids.end(), 3));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 0) + on_3, 2000);
  EXPECT_GT(on_3, 850);
  EXPECT_LT(on_3, 1150);
  ExpertDispatcher st(loc, DispatchAlgorithm::kStatic, 1);  // rank 1 holds slot 3
  std::vector<int32_t> s = {0, 1, 2, 0};
  st.to_physical(0, s);
  EXPECT_EQ(s, (std::vector<int32_t>{3, 1, 2, 3}));
  EXPECT_FALSE(parse_dispatch_algorithm("nearest").has_value());
  EXPECT_EQ(*parse_dispatch_algorithm("random"), DispatchAlgorithm::kDynamic);
}

// counts_to_physical is what the recorder uses when the runner reports counts (CUDA graphs): it
// must give what to_physical over the same slots gives (static: exactly; dynamic: the same totals
// per expert, spread over that expert's copies only, as evenly as counts allow).
TEST(ExpertDispatcher, CountsToPhysicalMatchesPerSlotDispatch) {
  // Expert 0 on slots 0 and 3 and 5, expert 1 on 1, expert 2 on 2 and 4; 3 ranks x 2 slots.
  auto loc = std::make_shared<ExpertLocation>(*ExpertLocation::from_mapping(layout(1, 3, 6, 3), {{0, 1, 2, 0, 2, 0}}));
  const std::vector<int64_t> logical = {7, 4, 0};
  for (int rank = 0; rank < 3; ++rank) {
    ExpertDispatcher st(loc, DispatchAlgorithm::kStatic, rank);
    std::vector<int32_t> ids;
    for (int e = 0; e < 3; ++e) ids.insert(ids.end(), static_cast<size_t>(logical[e]), e);
    st.to_physical(0, ids);
    std::vector<int64_t> want(6, 0), got(6, 0);
    for (int32_t p : ids) ++want[static_cast<size_t>(p)];
    st.counts_to_physical(0, logical, got);
    EXPECT_EQ(got, want) << "rank " << rank;
  }
  ExpertDispatcher dyn(loc, DispatchAlgorithm::kDynamic, 0);
  std::vector<int64_t> total(6, 0);
  for (int draw = 0; draw < 300; ++draw) {
    std::vector<int64_t> got(6, 1000);  // adds into what is there
    dyn.counts_to_physical(0, logical, got);
    EXPECT_EQ(got[0] + got[3] + got[5], 3000 + 7);
    EXPECT_EQ(got[1], 1000 + 4);
    EXPECT_EQ(got[2] + got[4], 2000);
    for (int p : {0, 3, 5}) {  // 7 over 3 copies: 2 each, the remainder one more to distinct copies
      EXPECT_GE(got[static_cast<size_t>(p)], 1002);
      EXPECT_LE(got[static_cast<size_t>(p)], 1003);
    }
    for (size_t p = 0; p < 6; ++p) total[p] += got[p] - 1000;
  }
  for (int p : {0, 3, 5}) {  // the remainder lands on each copy about equally: 700 of 2100 each
    EXPECT_GT(total[static_cast<size_t>(p)], 630) << p;
    EXPECT_LT(total[static_cast<size_t>(p)], 770) << p;
  }
}

TEST(ExpertLocation, ReplicaTablesListEveryCopyPaddedWithTheFirst) {
  // Layer 1: expert 0 on slots 0, 5 and 6; expert 2 on 2 and 7; the rest once.
  auto loc = ExpertLocation::from_mapping(layout(2, 5, 8, 4), {{0, 1, 2, 3, 4, 0, 1, 2}, {0, 1, 2, 3, 4, 0, 0, 2}});
  ASSERT_TRUE(loc.has_value()) << loc.error().message();
  const ReplicaTables t = replica_tables(*loc, 1);
  ASSERT_EQ(t.replicas.shape(), (Shape{5, 3}));
  EXPECT_EQ(std::vector<int32_t>(t.copies.data<int32_t>(), t.copies.data<int32_t>() + 5),
            (std::vector<int32_t>{3, 1, 2, 1, 1}));
  EXPECT_EQ(std::vector<int32_t>(t.replicas.data<int32_t>(), t.replicas.data<int32_t>() + 15),
            (std::vector<int32_t>{0, 5, 6, 1, 1, 1, 2, 7, 2, 3, 3, 3, 4, 4, 4}));
  EXPECT_EQ(replica_tables(*loc, 0).replicas.size(1), 2);  // layer 0 has at most two copies
}

TEST(ExpertDispatcher, FakeRoutingIsUniformAndDistinct) {
  std::mt19937_64 rng(1);
  std::vector<int32_t> ids(4 * 10000);
  fake_routing(ids, 4, 16, rng);
  std::vector<int> hist(16, 0);
  for (size_t t = 0; t < ids.size(); t += 4) {
    for (int k = 0; k < 4; ++k) ++hist[ids[t + k]];
    for (int k = 1; k < 4; ++k) ASSERT_LT(ids[t + k - 1], ids[t + k]);  // distinct, sorted
  }
  for (int h : hist) EXPECT_NEAR(h, 2500, 250);
}

TEST(ExpertLocationSource, ReadsMappingCountsAndRejectsOthers) {
  auto m = read_expert_location_source(R"({"physical_to_logical_map": [[1, 0, 1]]})");
  ASSERT_TRUE(m.has_value()) << m.error().message();
  EXPECT_EQ(m->kind, ExpertLocationSource::Kind::kMapping);
  auto c2 = read_expert_location_source(R"({"logical_count": [[1, 2], [3, 4]]})");
  ASSERT_TRUE(c2.has_value());
  EXPECT_EQ(c2->passes.size(), 1u);
  auto c3 = read_expert_location_source(R"({"logical_count": [[[1, 2]], [[3, 4]]]})");
  ASSERT_TRUE(c3.has_value());
  EXPECT_EQ(c3->summed_counts().values, (std::vector<double>{4, 6}));
  EXPECT_EQ(read_expert_location_source("trivial")->kind, ExpertLocationSource::Kind::kTrivial);
  auto unknown = read_expert_location_source(R"({"weights": 1})");
  ASSERT_FALSE(unknown.has_value());
  EXPECT_NE(unknown.error().message().find("weights"), std::string::npos);
  EXPECT_FALSE(read_expert_location_source("{not json").has_value());
  EXPECT_FALSE(read_expert_location_source(R"({"logical_count": [[1, -2]]})").has_value());
  EXPECT_FALSE(read_expert_location_source(R"({"logical_count": [[1, 2], [3]]})").has_value());
  EXPECT_EQ(read_expert_location_source("/nonexistent/dump.json").error().code(), ErrorCode::kNotFound);
}

TEST(ExpertLocationSource, BuildsByEplbFromCounts) {
  // One hot expert gets the redundant slot and its copies land on different ranks.
  auto src = read_expert_location_source(R"({"logical_count": [[[100, 1, 1, 1, 1, 1]]]})");
  ASSERT_TRUE(src.has_value());
  EplbOptions o;
  o.algorithm = EplbAlgorithm::kDeepseek;
  auto loc = build_expert_location(*src, layout(1, 6, 8, 2), o);
  ASSERT_TRUE(loc.has_value()) << loc.error().message();
  const auto& copies = loc->replicas(0, 0);
  ASSERT_EQ(copies.size(), 3u);
  EXPECT_NE(loc->rank_of_physical(copies.front()), loc->rank_of_physical(copies.back()));
  auto wrong = build_expert_location(*src, layout(2, 6, 8, 2), o);  // recorded on another model
  ASSERT_FALSE(wrong.has_value());
  EXPECT_NE(wrong.error().message().find("another model"), std::string::npos);
}

// A file PyTorch wrote (tests/moe/golden/make_pt_fixtures.py), shaped like SGLang's stat dump,
// with storages tagged cuda:0.
TEST(TorchReader, ReadsSGLangExpertDistributionDump) {
  auto j = read_torch_file_as_json(kGolden + "sglang_expert_distribution.pt");
  ASSERT_TRUE(j.has_value()) << j.error().message();
  EXPECT_EQ((*j)["rank"], 0);
  EXPECT_TRUE((*j)["average_utilization_rate_over_window"].is_null());
  const auto& lc = (*j)["logical_count"];
  ASSERT_EQ(lc.size(), 2u);
  ASSERT_EQ(lc[0].size(), 4u);
  ASSERT_EQ(lc[0][0].size(), 8u);
  for (int b = 0; b < 2; ++b)
    for (int l = 0; l < 4; ++l)
      for (int e = 0; e < 8; ++e) EXPECT_EQ(lc[b][l][e].get<int64_t>(), 1000 * b + 10 * l + e + (l == 2) * 5000);
  auto src = read_expert_location_source(kGolden + "sglang_expert_distribution.pt");
  ASSERT_TRUE(src.has_value()) << src.error().message();
  EXPECT_EQ(src->kind, ExpertLocationSource::Kind::kCounts);
  EXPECT_EQ(src->passes.size(), 2u);
  EXPECT_EQ(src->summed_counts().at(1, 3), 1000 + 2 * (10 + 3));
}

TEST(TorchReader, ReadsOtherTypesStridesAndNesting) {
  auto j = read_torch_file_as_json(kGolden + "torch_types.pt");
  ASSERT_TRUE(j.has_value()) << j.error().message();
  EXPECT_EQ((*j)["i32"], nlohmann::json::parse("[[1, -2], [3, 4]]"));
  EXPECT_EQ((*j)["f64_t"], nlohmann::json::parse("[[0, 0.75], [0.25, 1.0], [0.5, 1.25]]"));
  EXPECT_EQ((*j)["flags"], nlohmann::json::parse("[true, false]"));
  EXPECT_EQ((*j)["scalar"], 7);
  EXPECT_EQ((*j)["nested"]["list"], nlohmann::json::parse("[1, 2, [3]]"));
  EXPECT_EQ((*j)["nested"]["tuple"], nlohmann::json::parse(R"([4.5, "x"])"));
  EXPECT_TRUE((*j)["nested"]["none"].is_null());
  EXPECT_EQ((*j)["nested"]["big"].get<int64_t>(), int64_t{1} << 40);
  EXPECT_EQ((*j)["nested"]["neg"], -300);
}

TEST(TorchReader, DamagedFilesAreErrorsNotCrashes) {
  std::ifstream in(kGolden + "sglang_expert_distribution.pt", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 100u);
  EXPECT_EQ(parse_torch_bytes_as_json("not a zip at all, not at all", "x").error().code(), ErrorCode::kCorrupt);
  // Every truncation and many single-byte corruptions: an error or a value, never a crash.
  for (size_t n = 0; n < bytes.size(); n += 7) (void)parse_torch_bytes_as_json(std::string_view(bytes).substr(0, n), "t");
  for (size_t i = 0; i < bytes.size(); i += 3) {
    std::string b = bytes;
    b[i] = static_cast<char>(b[i] ^ 0x5a);
    (void)parse_torch_bytes_as_json(b, "c");
  }
}

}  // namespace
}  // namespace pdserve::moe
