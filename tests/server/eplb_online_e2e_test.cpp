// Online expert rebalancing end to end on CPU ranks (docs/eplb.md "Online rebalancing"): a 4-rank
// server with --enable-eplb under a burst of concurrent requests with skewed prompts rebalances while
// it serves, every request completes, and greedy outputs equal a server's without --enable-eplb.
#include <atomic>
#include <regex>
#include <thread>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;

// Skewed traffic: every prompt is a few token ids repeated, so the router keeps picking the same
// experts; 24 requests at once, long enough for several rebalance periods of 20 passes.
std::vector<std::vector<int>> run_burst(ServerProcess& s, int* failures) {
  constexpr int kRequests = 24;
  std::vector<std::vector<int>> outs(kRequests);
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (int i = 0; i < kRequests; ++i)
    threads.emplace_back([&, i] {
      std::vector<int> p;
      for (int k = 0; k < 10 + i % 5; ++k) p.push_back(k % 3 == 0 ? 1000 + i % 3 : 2000);
      json body = {{"input_ids", p},
                   {"sampling_params", {{"max_new_tokens", 40}, {"temperature", 0}, {"ignore_eos", true}}}};
      http::Client c;
      auto r = c.request("POST", s.url("/generate"), body.dump(), json_headers(), std::chrono::seconds(300));
      if (r && r->status == 200) outs[i] = json::parse(r->body)["output_ids"].get<std::vector<int>>();
      else ++failed;
    });
  for (auto& t : threads) t.join();
  *failures = failed.load();
  return outs;
}

TEST(EplbOnlineE2E, RebalancesDuringABenchmarkWithUnchangedOutput) {
  std::vector<std::vector<int>> reference;
  {
    ServerProcess s({"--dp-size", "4", "--skip-server-warmup"}, "eplb_reference");
    ASSERT_TRUE(s.wait_ready()) << s.log();
    int failures = 0;
    reference = run_burst(s, &failures);
    ASSERT_EQ(failures, 0) << s.log();
    EXPECT_EQ(s.terminate(), 0);
  }
  ServerProcess s({"--dp-size", "4", "--enable-eplb", "--eplb-rebalance-num-iterations", "20",
                   "--ep-num-redundant-experts", "4", "--eplb-rebalance-layers-per-chunk", "2", "--enable-metrics",
                   "--skip-server-warmup"},
                  "eplb_online");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  EXPECT_NE(s.log().find("[EPLBManager] system started, will rebalance per 20 iterations."), std::string::npos)
      << s.log();
  int failures = 0;
  auto outs = run_burst(s, &failures);
  EXPECT_EQ(failures, 0) << s.log();
  EXPECT_EQ(outs, reference);  // the placement never changes what the model computes
  const std::string log = s.log();
  EXPECT_NE(log.find("[EPLBManager] rebalance start"), std::string::npos) << log;
  EXPECT_TRUE(std::regex_search(log, std::regex(R"(\[EPLBManager\] rebalance end time=[0-9]+\.[0-9]{3}s)"))) << log;
  // The placement changed, and the window it was computed from got more balanced under it.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(new placement changes ([0-9]+) of 80 physical expert slots)")))
      << log;
  EXPECT_GT(std::stoi(m[1]), 0);
  ASSERT_TRUE(std::regex_search(
      log, m, std::regex(R"(\[Expert Balancedness\] .*window_balancedness_before=([0-9.]+) window_balancedness_after=([0-9.]+))")))
      << log;
  const double before = std::stod(m[1]), after = std::stod(m[2]);
  std::printf("first online rebalance: window balancedness %.3f -> %.3f\n", before, after);
  EXPECT_GE(after, before);
  http::Client c;
  auto r = c.get(s.url("/metrics"), std::chrono::milliseconds(10000));
  ASSERT_TRUE(r && r->status == 200);
  ASSERT_TRUE(std::regex_search(r->body, m, std::regex(R"(sglang:eplb_rebalances_total\{[^}]*\} ([0-9]+))"))) << r->body;
  std::printf("rebalances during the burst: %s\n", m[1].str().c_str());
  EXPECT_GE(std::stoi(m[1]), 1);
  EXPECT_TRUE(std::regex_search(r->body, std::regex(R"(sglang:eplb_window_balancedness\{[^}]*\} [0-9.]+)"))) << r->body;
  std::string skip;
  if (!expect_promtool_clean(r->body, &skip)) std::printf("%s\n", skip.c_str());
  EXPECT_EQ(s.terminate(), 0);
}

TEST(EplbOnlineE2E, BadRebalanceFlagsStopTheServer) {
  ServerProcess s({"--enable-eplb", "--eplb-rebalance-num-iterations", "0", "--skip-server-warmup"}, "eplb_bad");
  EXPECT_FALSE(s.wait_ready(std::chrono::seconds(60)));
  EXPECT_NE(s.log().find("--eplb-rebalance-num-iterations must be at least 1"), std::string::npos) << s.log();
}

}  // namespace
}  // namespace pdserve::test
