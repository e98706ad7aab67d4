// Expert parallelism end to end on CPU ranks (issue 9): `pdserve serve --tp-size 4 --dp-size 4
// --enable-dp-attention --moe-a2a-backend deepep` splits the routed experts over 4 ranks that
// exchange tokens in every MoE layer, in lockstep. Its greedy output must equal one rank's, in
// every --deepep-mode, with uneven request counts per rank and idle ranks; a stalled rank must turn
// into a clear error within the collective timeout, not a hang.
#include <cstdlib>
#include <future>

#include "model/deepseek_v3_gpu.h"
#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;

std::vector<int> prompt(int i) {
  std::vector<int> p;
  for (int k = 0; k < 10 + 3 * i; ++k) p.push_back(3 + (i * 7919 + k * 104729) % 128000);
  return p;
}

json sampling() { return {{"max_new_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}}; }

// Six prompts in one batch request (round robin over 4 DP ranks: 2, 2, 1, 1 each), then one prompt
// alone (three idle ranks), then two concurrent single requests. Returns every output in order.
std::vector<std::vector<int>> run_workload(ServerProcess& s) {
  http::Client c;
  std::vector<std::vector<int>> outs;
  json batch = json::array();
  for (int i = 0; i < 6; ++i) batch.push_back(prompt(i));
  auto r = c.request("POST", s.url("/generate"), json{{"input_ids", batch}, {"sampling_params", sampling()}}.dump(),
                     json_headers(), std::chrono::seconds(300));
  EXPECT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message());
  if (r && r->status == 200)
    for (const auto& item : json::parse(r->body)) outs.push_back(item["output_ids"].get<std::vector<int>>());
  auto one = [&](int i) {
    http::Client cc;
    auto rr = cc.request("POST", s.url("/generate"), json{{"input_ids", prompt(i)}, {"sampling_params", sampling()}}.dump(),
                         json_headers(), std::chrono::seconds(300));
    EXPECT_TRUE(rr && rr->status == 200) << (rr ? rr->body : rr.error().message());
    return rr && rr->status == 200 ? json::parse(rr->body)["output_ids"].get<std::vector<int>>() : std::vector<int>{};
  };
  outs.push_back(one(6));
  auto a = std::async(std::launch::async, one, 7);
  auto b = std::async(std::launch::async, one, 8);
  outs.push_back(a.get());
  outs.push_back(b.get());
  return outs;
}

std::vector<std::string> ep_flags(const std::string& mode) {
  return {"--tp-size", "4", "--dp-size", "4", "--enable-dp-attention", "--moe-a2a-backend", "deepep", "--deepep-mode", mode};
}

class EpServeE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerProcess ref({"--device", "cpu"}, "ep_ref");
    ASSERT_TRUE(ref.wait_ready()) << ref.log();
    reference_ = new std::vector<std::vector<int>>(run_workload(ref));
    ASSERT_EQ(reference_->size(), 9u);
    EXPECT_EQ(ref.terminate(), 0);
  }
  static void TearDownTestSuite() { delete reference_; }

  // Serves the workload with EP in `mode` (plus `extra` flags) and compares with the single rank.
  static void expect_same_as_one_rank(const std::string& mode, const std::string& log_needle = "",
                                      const std::vector<std::string>& extra = {},
                                      const std::string& experts_each = "4 routed experts each (16 physical in all)") {
    ASSERT_NE(reference_, nullptr);
    auto flags = ep_flags(mode);
    flags.insert(flags.end(), {"--device", "cpu"});
    flags.insert(flags.end(), extra.begin(), extra.end());
    ServerProcess s(flags, "ep_" + mode);
    ASSERT_TRUE(s.wait_ready()) << s.log();  // the warmup ran on one rank with three idle ones
    const auto outs = run_workload(s);
    EXPECT_EQ(outs, *reference_) << s.log();
    const std::string log = s.log();
    EXPECT_NE(log.find("DeepEP MoE: 4 EP ranks, " + experts_each + ", --deepep-mode " + mode), std::string::npos) << log;
    EXPECT_NE(log.find("DP3 TP3 EP3"), std::string::npos) << "rank prefixes name DP/TP/EP\n" << log;
    if (!log_needle.empty()) {
      EXPECT_NE(log.find(log_needle), std::string::npos) << log;
    }
    EXPECT_EQ(s.terminate(), 0) << s.log();
  }

  static std::vector<std::vector<int>>* reference_;
};
std::vector<std::vector<int>>* EpServeE2E::reference_ = nullptr;

TEST_F(EpServeE2E, AutoModeEqualsOneRank) { expect_same_as_one_rank("auto"); }
TEST_F(EpServeE2E, NormalModeEqualsOneRank) { expect_same_as_one_rank("normal"); }

TEST_F(EpServeE2E, LowLatencyModeEqualsOneRankAndFallsBackForLargePasses) {
  // Buffers for 16 tokens per rank: the prompts' prefill passes do not fit and run in normal mode.
  ::setenv("SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "16", 1);
  expect_same_as_one_rank("low_latency", "exceeds the low-latency buffers");
  ::unsetenv("SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK");
}

// Recorded counts where experts 0 and 5 carry most of the load: EPLB gives them (and others) the 4
// redundant copies, so the ranks hold 5 physical experts each, some of them copies of one logical
// expert, and the tokens of a hot expert are split over its copies. Replicas compute the same
// function, so the output still equals one rank's.
std::string skewed_counts() {
  json layers = json::array();
  for (int l = 0; l < 4; ++l) {
    json row = json::array();
    for (int e = 0; e < 16; ++e) row.push_back(e == 0 || e == 5 ? 900 + 10 * l : 10 + e);
    layers.push_back(row);
  }
  return json{{"logical_count", layers}}.dump();
}

TEST_F(EpServeE2E, RedundantExpertsPlacedByEplbEqualOneRank) {
  expect_same_as_one_rank("auto", "init_expert_location from init_by_eplb",
                          {"--ep-num-redundant-experts", "4", "--init-expert-location", skewed_counts()},
                          "5 routed experts each (20 physical in all)");
}

TEST_F(EpServeE2E, RedundantExpertsWithDynamicDispatchEqualOneRank) {
  // dynamic: each entry goes to a random copy of its expert (every copy sees traffic).
  expect_same_as_one_rank("low_latency", "ep-dispatch-algorithm=dynamic",
                          {"--ep-num-redundant-experts", "4", "--init-expert-location", skewed_counts(),
                           "--ep-dispatch-algorithm", "dynamic"},
                          "5 routed experts each (20 physical in all)");
}

// --enable-eplb with EP ranks (the published workflow's second way to balance decode): the ranks
// rebalance every 3 group steps, one layer per step, while serving the workload. Each switch must
// happen at the same step on every rank (a token sent to a slot must find the slot's new expert),
// so the output still equals one rank's; the log and /metrics show that rebalances happened and
// moved slots.
TEST_F(EpServeE2E, OnlineRebalancingWhileServingEqualsOneRank) {
  ASSERT_NE(reference_, nullptr);
  auto flags = ep_flags("auto");
  flags.insert(flags.end(), {"--device", "cpu", "--ep-num-redundant-experts", "4", "--enable-eplb",
                             "--eplb-rebalance-num-iterations", "3", "--eplb-rebalance-layers-per-chunk", "1", "--enable-metrics"});
  ServerProcess s(flags, "ep_eplb");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  const auto outs = run_workload(s);
  EXPECT_EQ(outs, *reference_) << s.log();
  http::Client c;
  auto m = c.get(s.url("/metrics"));
  ASSERT_TRUE(m && m->status == 200);
  const std::string needle = "sglang:eplb_rebalances_total{";
  const auto at = m->body.find(needle);
  ASSERT_NE(at, std::string::npos) << m->body;
  const auto value = std::stod(m->body.substr(m->body.find("} ", at) + 2));
  EXPECT_GE(value, 2) << m->body;
  const std::string log = s.log();
  EXPECT_NE(log.find("[EPLBManager] rebalance end"), std::string::npos) << log;
  // At least one rebalance moved experts between slots (else the test would not test switching).
  bool moved = false;
  for (auto pos = log.find("new placement changes "); pos != std::string::npos && !moved;
       pos = log.find("new placement changes ", pos + 1))
    moved = std::stoi(log.substr(pos + 22)) > 0;
  EXPECT_TRUE(moved) << log;
  EXPECT_EQ(s.terminate(), 0) << s.log();
}

TEST(EpServeE2EFlags, RefusesWhatThisBuildCannotRun) {
  auto expect_refused = [](std::vector<std::string> flags, const std::string& needle, const std::string& name) {
    flags.insert(flags.end(), {"--device", "cpu", "--skip-server-warmup"});
    ServerProcess s(flags, name);
    EXPECT_FALSE(s.wait_ready(std::chrono::seconds(60)));
    EXPECT_NE(s.log().find(needle), std::string::npos) << s.log();
  };
  // The tiny model has 16 routed experts: 3 ranks cannot split them.
  expect_refused({"--tp-size", "3", "--dp-size", "3", "--enable-dp-attention", "--moe-a2a-backend", "deepep"},
                 "split evenly over --ep-size 3", "ep_uneven");
  expect_refused({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--ep-size", "2"},
                 "--ep-size 2 needs --moe-a2a-backend deepep", "ep_no_backend");
  expect_refused({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--moe-a2a-backend", "deepep",
                  "--deepep-mode", "fast"},
                 "--deepep-mode must be normal, low_latency or auto", "ep_bad_mode");
  expect_refused({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--moe-a2a-backend", "deepep",
                  "--ep-num-redundant-experts", "2", "--ep-dispatch-algorithm", "fake"},
                 "--ep-dispatch-algorithm fake replaces the routing", "ep_fake");
  // 16 + 3 physical experts do not split over 2 ranks.
  expect_refused({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--moe-a2a-backend", "deepep",
                  "--ep-num-redundant-experts", "3"},
                 "--init-expert-location", "ep_odd_redundant");
  // GPU ranks on a machine without a GPU (CI's): refused with a message that says so. (On GPU
  // machines, scripts/gpu/ep_smoke.sh runs this layout.)
  if (!model::cuda_device_available()) {
    ServerProcess gpu({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--moe-a2a-backend", "deepep",
                       "--device", "cuda", "--skip-server-warmup"},
                      "ep_gpu_none");
    EXPECT_FALSE(gpu.wait_ready(std::chrono::seconds(60)));
    // A CUDA build says no GPU is visible; a build without CUDA says so instead.
    EXPECT_TRUE(gpu.log().find("no CUDA device is visible") != std::string::npos ||
                gpu.log().find("this build has no CUDA") != std::string::npos)
        << gpu.log();
  }
}

TEST(EpServeE2EFaults, StalledRankBecomesAnErrorNotAHang) {
  // Rank 0 stalls before its first pass with tokens; its peers give up after half the watchdog
  // timeout (2 s) and answer with an error naming it; then the watchdog ends the process.
  ::setenv("PDSERVE_EP_TEST_STALL_RANK", "0", 1);
  auto flags = ep_flags("auto");
  flags.insert(flags.end(), {"--device", "cpu", "--skip-server-warmup", "--watchdog-timeout", "4"});
  ServerProcess s(flags, "ep_stall");
  ::unsetenv("PDSERVE_EP_TEST_STALL_RANK");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  // Two concurrent requests: the first goes to rank 0 (stalls), the second to rank 1.
  auto send = [&](int i) {
    http::Client c;
    return c.request("POST", s.url("/generate"), json{{"input_ids", prompt(i)}, {"sampling_params", sampling()}}.dump(),
                     json_headers(), std::chrono::seconds(60));
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto first = std::async(std::launch::async, send, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto second = send(1);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(second.has_value()) << second.error().message() << s.log();
  EXPECT_GE(second->status, 500) << second->body;
  EXPECT_NE(second->body.find("did not arrive"), std::string::npos) << second->body;
  EXPECT_LT(waited, 15.0) << "the error must come within the collective timeout";
  // The stalled rank's batch outlives --watchdog-timeout: the process ends (a supervisor restarts
  // it) instead of serving nothing forever.
  EXPECT_NE(s.wait_exit(std::chrono::seconds(30)), -1) << s.log();
  first.wait();
  EXPECT_NE(s.log().find("rank 0 did not arrive"), std::string::npos) << s.log();
}

}  // namespace
}  // namespace pdserve::test
