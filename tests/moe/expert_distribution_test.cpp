#include "moe/expert_distribution.h"

#include <unistd.h>

#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include "base/json.h"
#include "model/safetensors.h"

namespace pdserve::moe {
namespace {

namespace fs = std::filesystem;

// 3 layers (layer 0 dense), 4 logical experts, 2 redundant, 2 ranks: slots [0 1 2 | 3 0 1].
RecorderOptions options(RecorderMode mode, int64_t buffer) {
  RecorderOptions o;
  o.mode = mode;
  o.buffer_size = buffer;
  o.layout = {3, 4, 6, 2};
  o.model = "tiny";
  return o;
}

ExpertLocation trivial() { return *ExpertLocation::trivial({3, 4, 6, 2}); }

PassRouting pass(int64_t id, int rank, std::vector<int32_t> layer1, std::vector<int32_t> layer2) {
  PassRouting p;
  p.forward_pass_id = id;
  p.rank = rank;
  p.top_k = 2;
  p.physical_ids[1] = std::move(layer1);
  p.physical_ids[2] = std::move(layer2);
  return p;
}

TEST(ExpertDistribution, StatSumsRanksPerPassAndConvertsToLogical) {
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kStat, 10));
  ASSERT_TRUE(rec->record(pass(0, 0, {0, 1}, {2, 3})).has_value());  // not recording: ignored
  rec->start();
  ASSERT_TRUE(rec->record(pass(1, 0, {0, 4}, {1, 2})).has_value());  // slot 4 holds logical 0
  ASSERT_TRUE(rec->record(pass(1, 1, {3, 5}, {5, 5})).has_value());  // slot 5 holds logical 1
  ASSERT_TRUE(rec->record(pass(2, 0, {2, 3}, {0, 1})).has_value());
  rec->stop();
  ASSERT_TRUE(rec->record(pass(3, 0, {2, 3}, {0, 1})).has_value());  // stopped: ignored
  EXPECT_EQ(rec->num_passes(), 2);
  nlohmann::json d = rec->dump(trivial());
  EXPECT_EQ(d["rank"], 0);
  EXPECT_TRUE(d["average_utilization_rate_over_window"].is_null());
  EXPECT_EQ(d["metadata"]["num_passes"], 2);
  EXPECT_EQ(d["metadata"]["model"], "tiny");
  EXPECT_EQ(d["metadata"]["num_layers"], 3);
  EXPECT_FALSE(d.contains("records"));
  // pass 1: layer 1 logical {0,0,3,1} -> [2,1,0,1]; layer 2 {1,2,1,1} -> [0,3,1,0]. Dense layer 0 zero.
  EXPECT_EQ(d["logical_count"][0], nlohmann::json::parse("[[0,0,0,0],[2,1,0,1],[0,3,1,0]]"));
  EXPECT_EQ(d["logical_count"][1], nlohmann::json::parse("[[0,0,0,0],[0,0,1,1],[1,1,0,0]]"));
  EXPECT_EQ(rec->num_passes(), 0);  // dump clears
}

TEST(ExpertDistribution, RingBufferKeepsTheLastPasses) {
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kStat, 2));
  rec->start();
  for (int id = 0; id < 5; ++id) ASSERT_TRUE(rec->record(pass(id, 0, {id % 4, 0}, {0, 0})).has_value());
  EXPECT_EQ(rec->num_passes(), 2);
  nlohmann::json d = rec->dump(trivial());
  EXPECT_EQ(d["metadata"]["first_forward_pass_id"], 3);
  EXPECT_EQ(d["metadata"]["last_forward_pass_id"], 4);
  Matrix w = rec->window_logical_counts(trivial());
  EXPECT_EQ(w.at(1, 0), 0);  // cleared by the dump
}

TEST(ExpertDistribution, UnboundedStatFoldsIntoOneRow) {
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kStat, -1));
  rec->start();
  for (int id = 0; id < 20; ++id)
    for (int r = 0; r < 2; ++r) ASSERT_TRUE(rec->record(pass(id, r, {r * 3, 1}, {2, 2})).has_value());
  EXPECT_EQ(rec->num_passes(), 20);
  nlohmann::json d = rec->dump(trivial());
  ASSERT_EQ(d["logical_count"].size(), 1u);  // [1][layers][experts], like SGLang's -1 dumps
  EXPECT_EQ(d["logical_count"][0][1], nlohmann::json::parse("[20,40,0,20]"));
  EXPECT_EQ(d["logical_count"][0][2], nlohmann::json::parse("[0,0,80,0]"));
  EXPECT_EQ(d["metadata"]["num_passes"], 20);
  EXPECT_EQ(d["metadata"]["first_forward_pass_id"], 0);
  EXPECT_EQ(d["metadata"]["last_forward_pass_id"], 19);
}

TEST(ExpertDistribution, PerPassAndPerTokenKeepRecords) {
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kPerToken, 10));
  rec->start();
  PassRouting p = pass(7, 1, {0, 5, 1, 2}, {3, 4, 2, 2});
  p.input_ids = {11, 12};
  p.positions = {0, 1};
  p.forward_mode = "extend";
  ASSERT_TRUE(rec->record(p).has_value());
  nlohmann::json d = rec->dump(trivial());
  ASSERT_EQ(d["records"].size(), 1u);
  const auto& r = d["records"][0];
  EXPECT_EQ(r["forward_pass_id"], 7);
  EXPECT_EQ(r["rank"], 1);
  EXPECT_EQ(r["global_physical_count"][1], nlohmann::json::parse("[1,1,1,0,0,1]"));
  EXPECT_EQ(r["topk_ids_of_layer"][0], nlohmann::json::parse("[[-1,-1],[-1,-1]]"));  // dense layer
  EXPECT_EQ(r["topk_ids_of_layer"][2], nlohmann::json::parse("[[3,4],[2,2]]"));
  EXPECT_EQ(r["input_ids"], nlohmann::json::parse("[11,12]"));
  EXPECT_EQ(d["last_physical_to_logical_map"][0], nlohmann::json::parse("[0,1,2,3,0,1]"));
  EXPECT_EQ(d["logical_count"][0][1], nlohmann::json::parse("[1,2,1,0]"));

  auto pp = *ExpertDistributionRecorder::create(options(RecorderMode::kPerPass, 10));
  pp->start();
  ASSERT_TRUE(pp->record(pass(1, 0, {0, 1}, {0, 1})).has_value());
  ASSERT_TRUE(pp->record(pass(1, 1, {0, 1}, {0, 1})).has_value());
  nlohmann::json dp = pp->dump(trivial());
  EXPECT_EQ(dp["records"].size(), 2u);  // one per rank
  EXPECT_EQ(dp["logical_count"].size(), 1u);  // one pass, ranks summed
  EXPECT_FALSE(dp["records"][0].contains("topk_ids_of_layer"));
}

// Counts (what a runner reports from a CUDA graph) record exactly as the ids they stand for.
TEST(ExpertDistribution, CountsRecordAsTheIdsTheyCount) {
  for (RecorderMode mode : {RecorderMode::kStat, RecorderMode::kPerPass}) {
    auto by_ids = *ExpertDistributionRecorder::create(options(mode, 10));
    auto by_counts = *ExpertDistributionRecorder::create(options(mode, 10));
    by_ids->start();
    by_counts->start();
    const std::vector<std::pair<int, PassRouting>> passes = {{0, pass(1, 0, {0, 4, 4}, {1, 2, 5})},
                                                             {1, pass(1, 1, {3, 5, 0}, {5, 5, 2})},
                                                             {0, pass(2, 0, {2, 3, 2}, {0, 1, 1})}};
    for (const auto& [rank, p] : passes) {
      ASSERT_TRUE(by_ids->record(p).has_value());
      PassRouting c = p;
      c.physical_ids.clear();
      for (const auto& [layer, ids] : p.physical_ids) {
        auto& row = c.physical_counts[layer];
        row.assign(6, 0);
        for (int32_t id : ids) ++row[static_cast<size_t>(id)];
      }
      ASSERT_TRUE(by_counts->record(c).has_value());
    }
    EXPECT_EQ(by_counts->num_passes(), by_ids->num_passes());
    EXPECT_EQ(by_counts->dump(trivial())["logical_count"], by_ids->dump(trivial())["logical_count"])
        << recorder_mode_name(mode);
  }
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kStat, 4));
  rec->start();
  PassRouting bad;
  bad.physical_counts[1] = {1, 2, 3};  // 3 counts for 6 physical experts
  auto st = rec->record(bad);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("3 counts for 6"), std::string::npos) << st.error().message();
  bad.physical_counts[1] = {1, 2, 3, -1, 0, 0};
  EXPECT_FALSE(rec->record(bad).has_value());
  bad.physical_counts.clear();
  bad.physical_counts[3] = std::vector<int64_t>(6, 0);  // layer 3 of 3
  EXPECT_FALSE(rec->record(bad).has_value());
  EXPECT_FALSE(rec->record(PassRouting{}, std::vector<int64_t>(17, 1)).has_value());  // flattened: 3 x 6 wanted
  EXPECT_EQ(rec->num_passes(), 0);
}

TEST(ExpertDistribution, BadInputIsAnError) {
  EXPECT_FALSE(ExpertDistributionRecorder::create(options(RecorderMode::kStat, 0)).has_value());
  EXPECT_FALSE(ExpertDistributionRecorder::create(options(RecorderMode::kStat, -2)).has_value());
  EXPECT_FALSE(parse_recorder_mode("per_layer").has_value());
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kStat, 4));
  rec->start();
  EXPECT_FALSE(rec->record(pass(0, 0, {6, 0}, {0, 0})).has_value());  // slot 6 of 6
  PassRouting p = pass(0, 0, {0, 0}, {0, 0});
  p.physical_ids[3] = {0};  // layer 3 of 3
  EXPECT_FALSE(rec->record(p).has_value());
  EXPECT_EQ(rec->num_passes(), 0);
}

TEST(ExpertDistribution, ConcurrentRanksLoseNothing) {
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kStat, -1));
  rec->start();
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      for (int id = 0; id < 500; ++id) (void)rec->record(pass(id, r, {r * 3, r * 3}, {1, 1}));
    });
  for (auto& t : ranks) t.join();
  Matrix w = rec->window_logical_counts(trivial());
  EXPECT_EQ(w.at(1, 0), 1000);  // rank 0 -> slot 0
  EXPECT_EQ(w.at(1, 3), 1000);  // rank 1 -> slot 3
  EXPECT_EQ(w.at(2, 1), 2000);
  EXPECT_EQ(rec->num_passes(), 500);
}

TEST(ExpertDistribution, DumpWritesJsonAndSafetensorsTwinThatEplbReads) {
  fs::path dir = fs::temp_directory_path() / ("pdserve_expert_dist_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto rec = *ExpertDistributionRecorder::create(options(RecorderMode::kStat, -1));
  rec->start();
  ASSERT_TRUE(rec->record(pass(0, 0, {0, 0}, {1, 2})).has_value());
  ASSERT_TRUE(rec->record(pass(1, 0, {0, 3}, {1, 1})).has_value());
  auto path = rec->dump_to_dir(dir, trivial());
  ASSERT_TRUE(path.has_value()) << path.error().message();
  EXPECT_EQ(path->extension(), ".json");
  EXPECT_EQ(path->filename().string().rfind("expert_distribution_recorder_", 0), 0u);
  auto j = read_json_file(*path);
  ASSERT_TRUE(j.has_value());
  EXPECT_EQ((*j)["logical_count"].size(), 1u);  // unbounded stat: one summed row

  fs::path twin = *path;
  twin.replace_extension(".safetensors");
  auto st = model::SafetensorsFile::open(twin);
  ASSERT_TRUE(st.has_value()) << st.error().message();
  auto t = (*st)->tensor("logical_count");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->shape(), (Shape{1, 3, 4}));
  EXPECT_EQ(t->data<int64_t>()[4 + 0], 3);  // layer 1, expert 0: 2 + 1

  // Both files feed --init-expert-location with the same counts.
  auto a = read_expert_location_source(path->string());
  auto b = read_expert_location_source(twin.string());
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_EQ(a->summed_counts().values, b->summed_counts().values);
  EXPECT_EQ(a->summed_counts().at(1, 0), 3);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pdserve::moe
