#include "base/logging.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

namespace pdserve::log {
namespace {

TEST(LogPrefix, NoRankHasNoPrefix) { EXPECT_EQ(format_prefix(RankPrefix{}), ""); }

TEST(LogPrefix, DpOnly) {
  RankPrefix r;
  r.dp_rank = 3;
  EXPECT_EQ(format_prefix(r), " DP3");
}

TEST(LogPrefix, DpTpEp) {
  RankPrefix r{.dp_rank = 0, .tp_rank = 0, .tp_size = 8, .ep_rank = 5, .ep_size = 16};
  EXPECT_EQ(format_prefix(r), " DP0 TP0 EP5");
}

TEST(LogPrefix, SizeOneHidesTheRank) {
  // DP attention with TP size 1 per DP group: SGLang prints "DP{d} EP{e}" without TP.
  RankPrefix r{.dp_rank = 2, .tp_rank = 0, .tp_size = 1, .ep_rank = 2, .ep_size = 4};
  EXPECT_EQ(format_prefix(r), " DP2 EP2");
  RankPrefix tp_only{.tp_rank = 3, .tp_size = 4};
  EXPECT_EQ(format_prefix(tp_only), " TP3");
}

TEST(LogPrefix, PipelineComesBetweenDpAndTp) {
  RankPrefix r{.dp_rank = 1, .pp_rank = 1, .pp_size = 2, .tp_rank = 1, .tp_size = 2, .ep_rank = 3, .ep_size = 4};
  EXPECT_EQ(format_prefix(r), " DP1 PP1 TP1 EP3");
}

TEST(LogLevel, ParseAndInit) {
  EXPECT_EQ(parse_level("warning"), Level::kWarning);
  EXPECT_EQ(parse_level("WARNING"), std::nullopt);
  EXPECT_EQ(parse_level("warn"), std::nullopt);
  EXPECT_THROW(init("verbose"), std::invalid_argument);
  init("error");
  EXPECT_EQ(level(), Level::kError);
  init("info");
  EXPECT_EQ(level(), Level::kInfo);
}

// Captures log lines in a string for one test; removes the stderr sink to keep output quiet.
class LogCapture : public ::testing::Test {
 protected:
  void SetUp() override {
    sink_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    add_sink(sink_);
    set_stderr_enabled(false);
    init("info");
  }
  void TearDown() override {
    remove_sink(sink_);
    set_stderr_enabled(true);
    clear_thread_rank();
    init("info");
  }
  std::vector<std::string> lines() {
    std::vector<std::string> v;
    std::istringstream in(out_.str());
    for (std::string l; std::getline(in, l);) v.push_back(l);
    return v;
  }
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

const std::regex kTs(R"(\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})");

TEST_F(LogCapture, FrontLineHasNoPrefix) {
  info("The server is fired up and ready to roll!");
  auto l = lines();
  ASSERT_EQ(l.size(), 1u);
  EXPECT_TRUE(std::regex_match(l[0], std::regex(R"(\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\] )"
                                                R"(The server is fired up and ready to roll!)")))
      << l[0];
}

TEST_F(LogCapture, SchedulerLineHasRankPrefix) {
  set_thread_rank({.dp_rank = 0, .tp_rank = 0, .tp_size = 8, .ep_rank = 0, .ep_size = 8});
  info("Decode batch, #running-req: {}, #token: {}, token usage: {:.2f}, ", 1024, 1922048, 0.62);
  auto l = lines();
  ASSERT_EQ(l.size(), 1u);
  EXPECT_TRUE(std::regex_match(l[0], std::regex(R"(\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} DP0 TP0 EP0\] )"
                                                R"(Decode batch, #running-req: 1024, #token: 1922048, )"
                                                R"(token usage: 0\.62, )")))
      << l[0];
}

TEST_F(LogCapture, PrefixIsPerThread) {
  set_thread_rank({.dp_rank = 7});
  std::thread other([] {
    set_thread_rank({.dp_rank = 1, .ep_rank = 1, .ep_size = 2});
    info("from other");
  });
  other.join();
  info("from main");
  clear_thread_rank();
  info("cleared");
  auto l = lines();
  ASSERT_EQ(l.size(), 3u);
  EXPECT_NE(l[0].find(" DP1 EP1] from other"), std::string::npos) << l[0];
  EXPECT_NE(l[1].find(" DP7] from main"), std::string::npos) << l[1];
  EXPECT_TRUE(std::regex_match(l[2], std::regex(R"(\[[-0-9]{10} [:0-9]{8}\] cleared)"))) << l[2];
}

TEST_F(LogCapture, ScopedRankRestores) {
  set_thread_rank({.dp_rank = 4});
  {
    ScopedThreadRank scoped({.tp_rank = 2, .tp_size = 4});
    EXPECT_EQ(thread_prefix(), " TP2");
  }
  EXPECT_EQ(thread_prefix(), " DP4");
}

TEST_F(LogCapture, LevelsTagsAndFiltering) {
  debug("hidden at info");
  warning("Disk {} low", "/tmp");
  error("boom");
  critical("dead");
  init("debug");
  debug("now visible");
  init("error");
  warning("filtered");
  auto l = lines();
  ASSERT_EQ(l.size(), 4u) << out_.str();
  std::smatch m;
  EXPECT_TRUE(std::regex_search(l[0], m, kTs));
  EXPECT_EQ(l[0].substr(20), "] WARNING: Disk /tmp low");
  EXPECT_EQ(l[1].substr(20), "] ERROR: boom");
  EXPECT_EQ(l[2].substr(20), "] CRITICAL: dead");
  EXPECT_EQ(l[3].substr(20), "] now visible");
}

TEST_F(LogCapture, BracesInArgumentsAreNotFormatted) {
  info("{}", "json {\"a\": 1}");
  auto l = lines();
  ASSERT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0].substr(20), "] json {\"a\": 1}");
}

TEST_F(LogCapture, ConcurrentLinesStayWhole) {
  constexpr int kThreads = 8, kLines = 200;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([t] {
      set_thread_rank({.dp_rank = t});
      for (int i = 0; i < kLines; ++i) info("line {} of thread {}", i, t);
    });
  for (auto& t : ts) t.join();
  auto l = lines();
  ASSERT_EQ(l.size(), static_cast<size_t>(kThreads * kLines));
  const std::regex re(R"(\[[-0-9]{10} [:0-9]{8} DP(\d)\] line \d+ of thread (\d))");
  for (const auto& line : l) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, re)) << line;
    EXPECT_EQ(m[1], m[2]) << line;
  }
}

TEST(LogFile, FileSinkGetsSameFormat) {
  auto path = std::filesystem::temp_directory_path() / ("pdserve_log_test_" + std::to_string(::getpid()) + ".log");
  std::filesystem::remove(path);
  ASSERT_TRUE(add_file_sink(path.string()).has_value());
  set_stderr_enabled(false);
  {
    ScopedThreadRank r({.dp_rank = 5, .tp_rank = 1, .tp_size = 2});
    info("Prefill batch, #new-seq: {}, ", 3);
  }
  set_stderr_enabled(true);
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_TRUE(std::regex_match(line, std::regex(R"(\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} DP5 TP1\] Prefill batch, #new-seq: 3, )")))
      << line;
  std::filesystem::remove(path);
}

TEST(LogFile, UnopenableFileIsAnError) {
  // spdlog creates missing folders, so make the parent a regular file.
  auto parent = std::filesystem::temp_directory_path() / ("pdserve_log_test_file_" + std::to_string(::getpid()));
  std::ofstream(parent) << "x";
  auto s = add_file_sink((parent / "y.log").string());
  std::filesystem::remove(parent);
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), ErrorCode::kIo);
}

}  // namespace
}  // namespace pdserve::log
