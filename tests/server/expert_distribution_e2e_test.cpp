// Expert load balancing end to end on CPU ranks: record the expert distribution of real traffic on
// 4 ranks, dump it, restart from it with redundant experts, and check that the placement is more
// balanced while greedy output stays the same (the record -> dump -> place -> restart workflow of
// docs/eplb.md).
#include <cstdlib>
#include <regex>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

json generate_body(const std::vector<int>& ids) {
  return {{"input_ids", ids}, {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}}}};
}

std::vector<std::vector<int>> run_prompts(ServerProcess& s) {
  http::Client c;
  std::vector<std::vector<int>> outs;
  for (int i = 0; i < 8; ++i) {
    std::vector<int> p;
    for (int k = 0; k < 12 + i; ++k) p.push_back(3 + (i * 7919 + k * 104729) % 128000);
    auto r = c.request("POST", s.url("/generate"), generate_body(p).dump(), json_headers(), std::chrono::seconds(300));
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    outs.push_back(r && r->status == 200 ? json::parse(r->body)["output_ids"].get<std::vector<int>>() : std::vector<int>{});
  }
  return outs;
}

int post_status(ServerProcess& s, const std::string& path, std::string* body = nullptr) {
  http::Client c;
  auto r = c.request("POST", s.url(path), "{}", json_headers(), std::chrono::seconds(60));
  if (body && r) *body = r->body;
  return r ? r->status : -1;
}

TEST(ExpertDistributionE2E, RecordDumpPlaceRestart) {
  const fs::path dir = fs::temp_directory_path() / ("pdserve_expert_e2e_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  ::setenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", dir.c_str(), 1);  // inherited by the servers

  fs::path dump;
  std::vector<std::vector<int>> before;
  {
    ServerProcess s({"--dp-size", "4", "--expert-distribution-recorder-mode", "stat",
                     "--expert-distribution-recorder-buffer-size", "-1", "--skip-server-warmup"},
                    "expert_record");
    ASSERT_TRUE(s.wait_ready()) << s.log();
    std::string text;
    ASSERT_EQ(post_status(s, "/start_expert_distribution_record", &text), 200);
    EXPECT_EQ(text, "Start recording the expert distribution.\n");
    before = run_prompts(s);
    ASSERT_EQ(post_status(s, "/stop_expert_distribution_record", &text), 200);
    EXPECT_EQ(text, "Stop recording the expert distribution.\n");
    ASSERT_EQ(post_status(s, "/dump_expert_distribution_record", &text), 200);
    EXPECT_EQ(text, "Dump expert distribution record.\n");
    EXPECT_NE(s.log().find("Write expert distribution to " + dir.string()), std::string::npos) << s.log();
    EXPECT_EQ(s.terminate(), 0);
  }
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".json" && (dump.empty() || fs::file_size(e.path()) > fs::file_size(dump)))
      dump = e.path();
  ASSERT_FALSE(dump.empty());
  json d = json::parse(read_file(dump));
  ASSERT_EQ(d["logical_count"].size(), 1u);
  const auto& lc = d["logical_count"][0];
  ASSERT_EQ(lc.size(), 4u);      // num_hidden_layers
  ASSERT_EQ(lc[0].size(), 16u);  // n_routed_experts
  int64_t moe_total = 0;
  for (int l = 0; l < 4; ++l)
    for (const auto& v : lc[l]) {
      if (l < 2) EXPECT_EQ(v.get<int64_t>(), 0) << "dense layer " << l;  // first_k_dense_replace = 2
      else moe_total += v.get<int64_t>();
    }
  EXPECT_GT(moe_total, 0);
  EXPECT_EQ(moe_total % (2 * 4), 0);  // 2 MoE layers x top-4 per token
  EXPECT_EQ(d["metadata"]["num_groups"], 4);

  // Restart from the recording with redundant experts: EPLB runs at startup.
  ServerProcess s2({"--dp-size", "4", "--ep-num-redundant-experts", "4", "--init-expert-location", dump.string(),
                    "--skip-server-warmup"},
                   "expert_place");
  ASSERT_TRUE(s2.wait_ready()) << s2.log();
  const std::string log = s2.log();
  EXPECT_NE(log.find("init_expert_location from init_by_eplb using ServerArgs.init_expert_location"), std::string::npos);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(trivial ([0-9.]+) -> placed ([0-9.]+))"))) << log;
  const double trivial = std::stod(m[1]), placed = std::stod(m[2]);
  std::printf("balancedness of the recorded load over 4 ranks: trivial %.3f -> placed %.3f\n", trivial, placed);
  EXPECT_GE(placed, trivial);
  EXPECT_EQ(run_prompts(s2), before);  // placement never changes what the model computes
  std::string text;
  EXPECT_EQ(post_status(s2, "/start_expert_distribution_record", &text), 400);  // recorder off
  EXPECT_NE(text.find("--expert-distribution-recorder-mode"), std::string::npos) << text;
  EXPECT_EQ(s2.terminate(), 0);
  fs::remove_all(dir);
}

// --enable-expert-distribution-metrics: recording starts at startup without /start_..., and every
// forward pass's balancedness is logged in SGLang's words (the counts: 12 prompt tokens x top-4 x 2
// MoE layers = 96 for the prefill, 4 x 2 = 8 per decode step); with
// SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC=1 the passes go to the sglang:eplb_balancedness summary of
// /metrics instead, by forward mode.
TEST(ExpertDistributionE2E, BalancednessMetricsEveryPass) {
  json body = generate_body({5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
  body["sampling_params"]["max_new_tokens"] = 4;
  {
    ServerProcess s({"--enable-expert-distribution-metrics", "--skip-server-warmup"}, "expert_metrics_log");
    ASSERT_TRUE(s.wait_ready()) << s.log();
    http::Client c;
    auto r = c.request("POST", s.url("/generate"), body.dump(), json_headers(), std::chrono::seconds(120));
    ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    const std::string log = s.log();
    EXPECT_NE(log.find("ExpertDistributionRecorder auto start record since enable_expert_distribution_metrics"),
              std::string::npos) << log;
    const std::string num = R"([01]\.[0-9]{3})";
    EXPECT_TRUE(std::regex_search(log, std::regex(R"(\[Expert Balancedness\] forward_pass_id=0 current_pass_balancedness=)" + num +
                                                  " last_10_average_balancedness=" + num + " last_100_average_balancedness=" +
                                                  num + " last_1000_average_balancedness=" + num +
                                                  " gpu_physical_count_sum=96\n")))
        << log;
    EXPECT_TRUE(std::regex_search(log, std::regex(R"(forward_pass_id=3 current_pass_balancedness=.* gpu_physical_count_sum=8\n)")))
        << log;
    EXPECT_EQ(s.terminate(), 0);
  }
  {
    // Two EP ranks, one of them idle: passes are numbered by group step on both, the idle rank
    // reports its empty share, so each pass is complete at once and holds both ranks' counts.
    ServerProcess s({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--moe-a2a-backend", "deepep",
                     "--enable-expert-distribution-metrics", "--skip-server-warmup"},
                    "expert_metrics_ep");
    ASSERT_TRUE(s.wait_ready()) << s.log();
    http::Client c;
    auto r = c.request("POST", s.url("/generate"), body.dump(), json_headers(), std::chrono::seconds(120));
    ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    const std::string log = s.log();
    std::smatch m;
    ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(forward_pass_id=(\d+) current_pass_balancedness=([01]\.[0-9]{3}) .* gpu_physical_count_sum=96\n)")))
        << log;
    const int64_t prefill = std::stoll(m[1]);
    for (int64_t step = prefill + 1; step <= prefill + 3; ++step)
      EXPECT_TRUE(std::regex_search(log, std::regex("forward_pass_id=" + std::to_string(step) +
                                                    R"( current_pass_balancedness=.* gpu_physical_count_sum=8\n)")))
          << "step " << step << "\n" << log;
    EXPECT_EQ(s.terminate(), 0);
  }
  ::setenv("SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC", "1", 1);  // inherited by the server
  ServerProcess s({"--enable-expert-distribution-metrics", "--enable-metrics", "--skip-server-warmup"},
                  "expert_metrics_summary");
  ::unsetenv("SGLANG_ENABLE_EPLB_BALANCEDNESS_METRIC");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  http::Client c;
  auto r = c.request("POST", s.url("/generate"), body.dump(), json_headers(), std::chrono::seconds(120));
  ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
  auto m = c.request("GET", s.url("/metrics"), "", {}, std::chrono::seconds(30));
  ASSERT_TRUE(m && m->status == 200);
  EXPECT_NE(m->body.find("# TYPE sglang:eplb_balancedness summary"), std::string::npos) << m->body;
  EXPECT_TRUE(std::regex_search(m->body, std::regex(R"(sglang:eplb_balancedness_count\{[^}]*forward_mode="extend"\} 1\n)")))
      << m->body;
  EXPECT_TRUE(std::regex_search(m->body, std::regex(R"(sglang:eplb_balancedness_count\{[^}]*forward_mode="decode"\} 3\n)")))
      << m->body;
  EXPECT_EQ(s.log().find("[Expert Balancedness] forward_pass_id"), std::string::npos) << s.log();
  std::string skip;
  if (!expect_promtool_clean(m->body, &skip)) std::printf("%s\n", skip.c_str());
  EXPECT_EQ(s.terminate(), 0);
}

TEST(ExpertDistributionE2E, BadPlacementStopsTheServerWithAReason) {
  ServerProcess s({"--init-expert-location", R"({"physical_to_logical_map": [[0, 1]]})", "--skip-server-warmup"},
                  "expert_bad");
  EXPECT_FALSE(s.wait_ready(std::chrono::seconds(60)));
  EXPECT_NE(s.log().find("physical_to_logical_map has 1 layers"), std::string::npos) << s.log();
  ServerProcess s2({"--ep-num-redundant-experts", "3", "--dp-size", "2", "--skip-server-warmup"}, "expert_bad2");
  EXPECT_FALSE(s2.wait_ready(std::chrono::seconds(60)));
  EXPECT_NE(s2.log().find("not divisible by the ep size 2"), std::string::npos) << s2.log();
}

}  // namespace
}  // namespace pdserve::test
