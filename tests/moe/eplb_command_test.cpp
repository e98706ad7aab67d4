#include "moe/eplb_command.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "base/json.h"
#include "moe/expert_location.h"

namespace pdserve::moe {
namespace {

namespace fs = std::filesystem;

class EplbCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pdserve_eplb_cmd_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  int run(EplbCli cli) {
    out_.str("");
    err_.str("");
    return run_eplb_cli(cli, out_, err_);
  }
  fs::path dir_;
  std::ostringstream out_, err_;
};

// A skewed recording: layer 0 dense (zero), layers 1-2 with three hot experts in different groups.
nlohmann::json skewed_counts() {
  nlohmann::json counts = nlohmann::json::array();
  for (int l = 0; l < 3; ++l) {
    std::vector<int> row(32, l == 0 ? 0 : 10);
    if (l > 0) row[0] = 400, row[9] = 300, row[17] = 200;
    counts.push_back(row);
  }
  return counts;
}

TEST_F(EplbCommand, WritesAPlacementAndReportsImprovedBalancedness) {
  fs::path in = dir_ / "dump.json", out = dir_ / "placement.json";
  ASSERT_TRUE(write_json_file(in, {{"logical_count", {skewed_counts()}}}).has_value());
  EplbCli cli{in.string(), out.string(), 4, 8, 1, 0, "deepseek"};
  ASSERT_EQ(run(cli), 0) << err_.str();
  const std::string report = out_.str();
  auto pos = report.find("before ");
  ASSERT_NE(pos, std::string::npos);
  double before = std::stod(report.substr(pos + 7));
  double after = std::stod(report.substr(report.find("after ", pos) + 6));
  EXPECT_GT(after, before + 0.2) << report;
  EXPECT_GT(after, 0.9) << report;

  auto j = read_json_file(out);
  ASSERT_TRUE(j.has_value());
  EXPECT_EQ(j->size(), 1u);  // only what SGLang's init_by_mapping accepts
  auto src = read_expert_location_source(out.string());
  ASSERT_TRUE(src.has_value());
  ASSERT_EQ(src->kind, ExpertLocationSource::Kind::kMapping);
  auto loc = ExpertLocation::from_mapping({3, 32, 40, 4}, src->physical_to_logical);
  ASSERT_TRUE(loc.has_value()) << loc.error().message();
  EXPECT_GE(loc->replicas(1, 0).size(), 2u);  // the hot expert got copies
}

TEST_F(EplbCommand, AutoTakesGroupsFromTheDumpMetadata) {
  fs::path in = dir_ / "dump.json", out = dir_ / "placement.json";
  ASSERT_TRUE(write_json_file(in, {{"logical_count", {skewed_counts()}}, {"metadata", {{"num_groups", 4}}}}).has_value());
  ASSERT_EQ(run({in.string(), out.string(), 4, 8, 2, 0, "auto"}), 0) << err_.str();
  EXPECT_NE(out_.str().find("deepseek_hierarchical (--eplb-algorithm auto; 4 groups, 2 nodes)"), std::string::npos)
      << out_.str();
  ASSERT_EQ(run({in.string(), out.string(), 4, 8, 2, 3, "auto"}), 0) << err_.str();  // 3 % 2: global
  EXPECT_NE(out_.str().find("deepseek (--eplb-algorithm auto; 3 groups"), std::string::npos) << out_.str();
}

TEST_F(EplbCommand, ReadsSGLangPtDump) {
  fs::path out = dir_ / "p.json";
  EplbCli cli{std::string(PDSERVE_SOURCE_DIR) + "/tests/moe/golden/sglang_expert_distribution.pt", out.string(), 2,
              0, 1, 1, "deepseek"};
  ASSERT_EQ(run(cli), 0) << err_.str();
  EXPECT_NE(out_.str().find("2 passes, 4 layers"), std::string::npos) << out_.str();
}

TEST_F(EplbCommand, BadInputGivesClearErrors) {
  fs::path in = dir_ / "dump.json";
  ASSERT_TRUE(write_json_file(in, {{"logical_count", {{1, 2, 3, 4}}}}).has_value());
  EXPECT_EQ(run({in.string(), (dir_ / "o.json").string(), 3, 0, 1, 0, "auto"}), 1);
  EXPECT_NE(err_.str().find("not divisible by the ep size 3"), std::string::npos) << err_.str();
  EXPECT_EQ(run({in.string(), (dir_ / "o.json").string(), 2, 0, 1, 0, "greedy"}), 1);
  EXPECT_NE(err_.str().find("--eplb-algorithm"), std::string::npos);
  EXPECT_EQ(run({(dir_ / "none.json").string(), (dir_ / "o.json").string(), 2, 0, 1, 0, "auto"}), 1);
  EXPECT_NE(err_.str().find("none.json"), std::string::npos);
  EXPECT_EQ(run({in.string(), (dir_ / "o.json").string(), 2, 0, 3, 0, "auto"}), 1);  // 3 nodes, ep 2
  fs::path mapping = dir_ / "map.json";
  ASSERT_TRUE(write_json_file(mapping, {{"physical_to_logical_map", {{0, 1}}}}).has_value());
  EXPECT_EQ(run({mapping.string(), (dir_ / "o.json").string(), 2, 0, 1, 0, "auto"}), 1);
  EXPECT_NE(err_.str().find("placement"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "o.json"));
}

}  // namespace
}  // namespace pdserve::moe
