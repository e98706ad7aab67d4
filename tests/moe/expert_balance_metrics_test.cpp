#include "moe/expert_balance_metrics.h"

#include <barrier>
#include <cstdlib>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include "base/logging.h"

namespace pdserve::moe {
namespace {

// 2 layers (layer 0 dense), 4 logical experts, 2 redundant, 2 ranks: slots [0 1 2 | 3 0 1].
const ExpertLayout kLayout{2, 4, 6, 2};

PassRouting pass(int64_t id, int rank, std::vector<int64_t> layer1, std::string mode = "decode") {
  PassRouting p;
  p.forward_pass_id = id;
  p.rank = rank;
  p.physical_counts[1] = std::move(layer1);
  p.forward_mode = std::move(mode);
  return p;
}

// What the recording runner does: the pass's counts flattened once, then handed over.
Status add(ExpertBalanceMetrics& m, const PassRouting& p) {
  auto counts = physical_counts_of(p, kLayout);
  if (!counts.has_value()) return counts.error();
  return m.add(p, *counts);
}

TEST(ExpertBalanceMetrics, BalancednessIsSGLangsUtilizationRate) {
  // Layer 1: rank 0 serves 3 + 1 + 0 = 4, rank 1 serves 0 + 2 + 2 = 4: balanced. Layer 0 unused: 1.
  std::vector<int64_t> even = {0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 2, 2};
  EXPECT_NEAR(pass_balancedness(even, kLayout), 1.0, 1e-9);
  // Layer 1 all on rank 1 (6 slots): mean 3, max 6 -> 0.5; with the unused layer 0: 0.75.
  std::vector<int64_t> skew = {0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0};
  EXPECT_NEAR(pass_balancedness(skew, kLayout), (1.0 + (3 + 1e-5) / (6 + 1e-5)) / 2, 1e-12);
}

TEST(ExpertBalanceMetrics, APassCompletesWhenEveryRankReportedIt) {
  std::vector<ExpertBalanceMetrics::PassReport> got;
  ExpertBalanceMetrics m(kLayout, false, [&](const auto& r) { got.push_back(r); });
  m.add_rank();
  m.add_rank();
  ASSERT_TRUE(add(m, pass(0, 1, {0, 0, 0, 6, 0, 0}, "extend")).has_value());
  EXPECT_TRUE(got.empty());  // rank 0 has not reported pass 0
  ASSERT_TRUE(add(m, pass(0, 0, {6, 0, 0, 0, 0, 0}, "decode")).has_value());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].forward_pass_id, 0);
  EXPECT_EQ(got[0].count_sum, 12);
  EXPECT_NEAR(got[0].balancedness, 1.0, 1e-9);  // 6 on each rank: the two ranks' counts were summed
  EXPECT_EQ(got[0].forward_mode, "decode");     // rank 0's, though rank 1 came first
}

TEST(ExpertBalanceMetrics, ALaggingOrIdleRankDoesNotHoldPassesBack) {
  std::vector<ExpertBalanceMetrics::PassReport> got;
  ExpertBalanceMetrics m(kLayout, false, [&](const auto& r) { got.push_back(r); });
  m.add_rank();
  m.add_rank();
  for (int64_t id = 0; id < 10; ++id) ASSERT_TRUE(add(m, pass(id, 0, {0, 0, 0, 4, 0, 0})).has_value());
  ASSERT_EQ(got.size(), 2u);  // passes 0 and 1 are 8 behind pass 9: complete with rank 0 alone
  EXPECT_EQ(got[0].forward_pass_id, 0);
  EXPECT_EQ(got[1].forward_pass_id, 1);
  EXPECT_EQ(got[1].count_sum, 4);
  ASSERT_TRUE(add(m, pass(0, 1, {4, 0, 0, 0, 0, 0})).has_value());  // too late: not a new pass 0
  EXPECT_EQ(got.size(), 2u);
  ASSERT_TRUE(add(m, pass(2, 1, {4, 0, 0, 0, 0, 0})).has_value());  // completes pass 2 with both ranks
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].forward_pass_id, 2);
  EXPECT_EQ(got[2].count_sum, 8);
  EXPECT_FALSE(m.add(pass(3, 1, {}), std::vector<int64_t>(5, 1)).has_value());  // 5 counts for 2 x 6
  ASSERT_TRUE(m.add(pass(3, 1, {}), {}).has_value());  // an idle rank's empty share completes pass 3
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[3].forward_pass_id, 3);
  EXPECT_EQ(got[3].count_sum, 4);  // rank 0's alone
}

TEST(ExpertBalanceMetrics, WindowsAverageTheLastPasses) {
  std::vector<ExpertBalanceMetrics::PassReport> got;
  ExpertBalanceMetrics m(kLayout, false, [&](const auto& r) { got.push_back(r); });
  m.add_rank();
  // 20 balanced passes (1.0), then 10 with layer 1 all on one rank (0.75).
  for (int64_t id = 0; id < 30; ++id)
    ASSERT_TRUE(add(m, pass(id, 0, id < 20 ? std::vector<int64_t>{3, 0, 0, 3, 0, 0} : std::vector<int64_t>{6, 0, 0, 0, 0, 0}))
                    .has_value());
  ASSERT_EQ(got.size(), 30u);
  const auto& last = got.back();
  ASSERT_EQ(last.window_averages.size(), 3u);
  EXPECT_EQ(last.window_averages[0].first, 10);
  EXPECT_NEAR(last.window_averages[0].second, 0.75, 1e-5);
  EXPECT_EQ(last.window_averages[1].first, 100);
  EXPECT_NEAR(last.window_averages[1].second, (20 * 1.0 + 10 * 0.75) / 30, 1e-5);  // what there is of 100
  EXPECT_NEAR(last.window_averages[2].second, (20 * 1.0 + 10 * 0.75) / 30, 1e-5);
}

TEST(ExpertBalanceMetrics, LogsSGLangsLineOrObservesTheSummary) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  log::add_sink(sink);
  {
    ExpertBalanceMetrics logged(kLayout, false);
    logged.add_rank();
    ASSERT_TRUE(add(logged, pass(7, 0, {0, 0, 0, 6, 0, 0})).has_value());
    EXPECT_EQ(logged.render_metrics("a=\"b\""), "");  // log lines, no summary
  }
  log::remove_sink(sink);
  EXPECT_TRUE(std::regex_search(
      out.str(), std::regex(R"(\[Expert Balancedness\] forward_pass_id=7 current_pass_balancedness=0\.750 )"
                            R"(last_10_average_balancedness=0\.750 last_100_average_balancedness=0\.750 )"
                            R"(last_1000_average_balancedness=0\.750 gpu_physical_count_sum=6)")))
      << out.str();

  ExpertBalanceMetrics summary(kLayout, true);
  summary.add_rank();
  ASSERT_TRUE(add(summary, pass(0, 0, {0, 0, 0, 6, 0, 0}, "decode")).has_value());
  ASSERT_TRUE(add(summary, pass(1, 0, {3, 0, 0, 3, 0, 0}, "decode")).has_value());
  ASSERT_TRUE(add(summary, pass(2, 0, {3, 0, 0, 3, 0, 0}, "extend")).has_value());
  const std::string m = summary.render_metrics("model_name=\"x\"");
  EXPECT_NE(m.find("# TYPE sglang:eplb_balancedness summary"), std::string::npos) << m;
  EXPECT_NE(m.find("sglang:eplb_balancedness_count{model_name=\"x\",forward_mode=\"decode\"} 2"), std::string::npos) << m;
  EXPECT_NE(m.find("sglang:eplb_balancedness_sum{model_name=\"x\",forward_mode=\"decode\"} 1.75"), std::string::npos) << m;
  EXPECT_NE(m.find("sglang:eplb_balancedness_count{model_name=\"x\",forward_mode=\"extend\"} 1"), std::string::npos) << m;
}

// Rank threads report concurrently, each at its own pace: every pass completes exactly once, with
// all four ranks' counts (no pass falls 8 behind here: the threads stay within a few passes of
// each other through the barrier every 4 passes).
TEST(ExpertBalanceMetrics, ConcurrentRanksCompleteEveryPassOnce) {
  std::mutex mu;
  std::map<int64_t, int64_t> sums;
  int completions = 0;
  ExpertBalanceMetrics m(kLayout, false, [&](const auto& r) {
    std::lock_guard lock(mu);
    ++completions;
    sums[r.forward_pass_id] += r.count_sum;
  });
  constexpr int kRanks = 4, kPasses = 200;
  for (int r = 0; r < kRanks; ++r) m.add_rank();
  std::barrier sync(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r)
    threads.emplace_back([&, r] {
      for (int64_t id = 0; id < kPasses; ++id) {
        std::vector<int64_t> row(6, 0);
        row[static_cast<size_t>((id + r) % 6)] = r + 1;
        EXPECT_TRUE(add(m, pass(id, r, row)).has_value());
        if (id % 4 == 3) sync.arrive_and_wait();
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(completions, kPasses);
  ASSERT_EQ(sums.size(), static_cast<size_t>(kPasses));
  for (const auto& [id, sum] : sums) EXPECT_EQ(sum, 1 + 2 + 3 + 4) << "pass " << id;
}

TEST(ExpertBalanceMetrics, EnvironmentPicksTheSummary) {
  unsetenv("SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC");
  EXPECT_FALSE(balancedness_metric_from_env());
  setenv("SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC", "True", 1);
  EXPECT_TRUE(balancedness_metric_from_env());
  setenv("SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC", "0", 1);
  EXPECT_FALSE(balancedness_metric_from_env());
  unsetenv("SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC");
}

}  // namespace
}  // namespace pdserve::moe
