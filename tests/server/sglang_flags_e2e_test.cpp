// The published deployments' SGLang flags against a real `pdserve serve` (server/sglang_compat_args.h):
// the H100 blog's decode flags, with SGLang's kernel choices, start a server that says in its log
// what each flag does here; --load-balance-method round_robin spreads requests that carry a
// bootstrap room over the DP ranks (the default sends them to room % dp); flags SGLang removed
// and flags that would change the results stop the server with the reason.
#include <fstream>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;

// Eight requests that all carry bootstrap room 0 (rank 0 under room % dp); returns how many
// prefill batches each of the two DP ranks logged.
std::pair<int, int> prefills_per_rank(ServerProcess& s) {
  http::Client c;
  for (int i = 0; i < 8; ++i) {
    const json body = {{"input_ids", {5 + i, 6, 7, 8}},
                       {"bootstrap_room", 0},
                       {"sampling_params", {{"max_new_tokens", 2}, {"temperature", 0}}}};
    auto r = c.request("POST", s.url("/generate"), body.dump(), json_headers(), std::chrono::seconds(60));
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message());
  }
  std::pair<int, int> n{0, 0};
  std::istringstream log(s.log());
  for (std::string line; std::getline(log, line);) {
    if (line.find("Prefill batch") == std::string::npos) continue;
    if (line.find(" DP0 ") != std::string::npos) ++n.first;
    if (line.find(" DP1 ") != std::string::npos) ++n.second;
  }
  return n;
}

std::vector<std::string> decode_flags() {
  // sglang-spec §1.1's decode command, less what needs a cluster (nodes, IB device, PD, EP).
  return {"--device", "cpu", "--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--decode-log-interval", "1",
          "--page-size", "1", "--trust-remote-code", "--moe-dense-tp-size", "1", "--enable-dp-lm-head",
          "--disable-radix-cache", "--watchdog-timeout", "1000000", "--skip-server-warmup"};
}

TEST(SglangFlagsE2E, PublishedKernelFlagsStartAServerThatSaysWhatTheyDo) {
  const std::string cfg = ::testing::TempDir() + "/deepep_e2e.json";
  std::ofstream(cfg) << R"({"normal_dispatch": {"num_sms": 24}})";
  auto flags = decode_flags();
  flags.insert(flags.end(), {"--deepep-config", cfg, "--disable-overlap-schedule", "--attention-backend", "flashmla",
                             "--moe-runner-backend", "deep_gemm", "--disable-shared-experts-fusion",
                             "--load-balance-method", "round_robin"});
  ServerProcess s(flags, "sglang_flags_rr");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  const auto [rank0, rank1] = prefills_per_rank(s);
  EXPECT_GT(rank0, 0) << s.log();
  EXPECT_GT(rank1, 0) << "round_robin: the room does not pin requests to DP0\n" << s.log();
  const std::string log = s.log();
  for (const char* note : {"--attention-backend flashmla: no effect", "--moe-runner-backend deep_gemm: no effect",
                           "--deepep-config: no effect without --moe-a2a-backend deepep",
                           "--disable-overlap-schedule: no change", "--load-balance-method round_robin: requests go"})
    EXPECT_NE(log.find(note), std::string::npos) << note << "\n" << log;
  http::Client c;
  auto info = c.get(s.url("/get_server_info"));
  ASSERT_TRUE(info && info->status == 200);
  const auto j = json::parse(info->body);
  EXPECT_EQ(j["attention_backend"], "flashmla");
  EXPECT_EQ(j["load_balance_method"], "round_robin");
  EXPECT_EQ(s.terminate(), 0);

  // The default: a request's bootstrap room picks its DP rank (room 0: DP0), as PD pairing needs.
  ServerProcess d(decode_flags(), "sglang_flags_room");
  ASSERT_TRUE(d.wait_ready()) << d.log();
  const auto [d0, d1] = prefills_per_rank(d);
  EXPECT_GT(d0, 0) << d.log();
  EXPECT_EQ(d1, 0) << d.log();
  EXPECT_EQ(d.terminate(), 0);
}

TEST(SglangFlagsE2E, RemovedAndResultChangingFlagsStopTheServerWithTheReason) {
  auto expect_refused = [](std::vector<std::string> extra, const std::string& needle, const std::string& name) {
    std::vector<std::string> flags = {"--device", "cpu", "--skip-server-warmup"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    ServerProcess s(flags, name);
    EXPECT_FALSE(s.wait_ready(std::chrono::seconds(60)));
    EXPECT_NE(s.log().find(needle), std::string::npos) << s.log();
  };
  expect_refused({"--enable-deepep-moe"}, "use --moe-a2a-backend deepep", "sglang_removed");
  expect_refused({"--kv-cache-dtype", "fp8_e4m3"}, "--kv-cache-dtype fp8_e4m3 is not in this build", "sglang_kv_fp8");
  expect_refused({"--quantization", "modelopt_fp4"}, "--quantization modelopt_fp4 is not in this build", "sglang_fp4");
  expect_refused({"--disaggregation-mode", "prefill", "--load-balance-method", "round_robin"}, "must follow the room",
                 "sglang_prefill_rr");
}

}  // namespace
}  // namespace pdserve::test
