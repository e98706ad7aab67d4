// The router in PD mode in front of real servers: 1 prefill + 2 decode (`pdserve serve
// --disaggregation-mode ...`, tiny model, KV over TCP on loopback). Answers must equal a single
// server's, token for token, streamed and not, native and through the OpenAI npm client.
#include <atomic>
#include <cstdlib>
#include <thread>

#include "process.h"
#include "test_time.h"

namespace pdserve::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

class RouterPdE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Short PD timeouts so that a broken transfer fails the test instead of hanging it.
    ::setenv("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "30", 1);
    ::setenv("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "30", 1);
    single_port = free_port();
    prefill_port = free_port();
    bootstrap_port = free_port();
    decode_ports[0] = free_port();
    decode_ports[1] = free_port();
    single = new Process(serve_args(single_port, {"--served-model-name", "pdserve-tiny"}), "pd_single");
    prefill = new Process(serve_args(prefill_port, {"--served-model-name", "pdserve-tiny", "--disaggregation-mode", "prefill",
                                                    "--disaggregation-bootstrap-port", std::to_string(bootstrap_port)}),
                          "pd_prefill");
    for (int i = 0; i < 2; ++i)
      decode[i] = new Process(serve_args(decode_ports[i], {"--served-model-name", "pdserve-tiny", "--disaggregation-mode", "decode"}),
                              "pd_decode" + std::to_string(i));
    ASSERT_TRUE(single->wait_http_ok(local(single_port, "/health"))) << single->log();
    ASSERT_TRUE(prefill->wait_http_ok(local(prefill_port, "/health"))) << prefill->log();
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(decode[i]->wait_http_ok(local(decode_ports[i], "/health"))) << decode[i]->log();
    router_port = free_port();
    router = new Process({"router", "--pd-disaggregation", "--host", "127.0.0.1", "--port", std::to_string(router_port),
                          "--prometheus-port", "-1", "--policy", "round_robin", "--prefill", local(prefill_port),
                          std::to_string(bootstrap_port), "--decode", local(decode_ports[0]), "--decode",
                          local(decode_ports[1]), "--worker-startup-check-interval", "1", "--health-check-interval-secs", "1",
                          "--health-failure-threshold", "1", "--health-success-threshold", "1",
                          "--health-check-timeout-secs", "2", "--retry-initial-backoff-ms", "20"},
                         "pd_router");
    ASSERT_TRUE(router->wait_http_ok(local(router_port, "/readiness"), 60s)) << router->log();
  }
  static void TearDownTestSuite() {
    for (Process** p : {&router, &single, &prefill, &decode[0], &decode[1]}) {
      delete *p;
      *p = nullptr;
    }
  }
  static inline int single_port = 0, prefill_port = 0, bootstrap_port = 0, router_port = 0;
  static inline int decode_ports[2] = {0, 0};
  static inline Process *single = nullptr, *prefill = nullptr, *router = nullptr;
  static inline Process* decode[2] = {nullptr, nullptr};
};

std::string streamed_text(const std::string& url, const std::string& body) {
  http::Client c;
  std::string last;
  bool done = false;
  auto r = c.stream(http::ClientRequest("POST", url, body, {{"Content-Type", "application/json"}}, 120s),
                    http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent& e) {
                      if (e.data == "[DONE]") {
                        done = true;
                      } else {
                        last = json::parse(e.data).value("text", "");
                      }
                      return true;
                    }));
  if (!r || r->status != 200 || !done) return "<failed>";
  return last;
}

TEST_F(RouterPdE2E, AnswersEqualASingleServer) {
  http::Client c;
  for (const char* prompt : {"The capital of France is", "Once upon a time, in a land far away,"}) {
    json body{{"text", prompt}, {"sampling_params", {{"max_new_tokens", 16}, {"temperature", 0}}}};
    auto want = c.post_json(local(single_port, "/generate"), body.dump(), 120s);
    ASSERT_TRUE(want);
    ASSERT_EQ(want->status, 200) << want->body;
    for (int rep = 0; rep < 2; ++rep) {  // round robin: both decode servers
      auto got = c.post_json(local(router_port, "/generate"), body.dump(), 120s);
      ASSERT_TRUE(got);
      ASSERT_EQ(got->status, 200) << got->body << "\n" << router->log();
      EXPECT_EQ(json::parse(got->body)["output_ids"], json::parse(want->body)["output_ids"]);
      EXPECT_EQ(json::parse(got->body)["text"], json::parse(want->body)["text"]);
    }
    body["stream"] = true;
    EXPECT_EQ(streamed_text(local(router_port, "/generate"), body.dump()), json::parse(want->body)["text"]);
  }
  // A batch: one room per item, every item equal.
  json batch{{"text", {"Hello", "The sky is"}}, {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}}}};
  auto want = c.post_json(local(single_port, "/generate"), batch.dump(), 120s);
  auto got = c.post_json(local(router_port, "/generate"), batch.dump(), 120s);
  ASSERT_TRUE(want && got);
  ASSERT_EQ(got->status, 200) << got->body;
  json w = json::parse(want->body), g = json::parse(got->body);
  ASSERT_EQ(g.size(), 2u);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(g[i]["output_ids"], w[i]["output_ids"]);

  auto workers = json::parse(c.get(local(router_port, "/workers"))->body)["workers"];
  for (const auto& x : workers) {
    if (x["worker_type"] == "decode") {
      EXPECT_GE(x["processed"].get<int>(), 2) << x.dump();
    }
  }
}

TEST_F(RouterPdE2E, OpenAiClientThroughThePdRouter) {
  const std::string node_dir = std::string(PDSERVE_SOURCE_DIR) + "/tests/server/node";
  ASSERT_TRUE(std::filesystem::exists(node_dir + "/node_modules/openai")) << "run scripts/setup.sh (npm ci) first";
  auto run = [&](int port) {
    const auto out = std::filesystem::temp_directory_path() / ("router_pd_openai_" + std::to_string(port) + ".json");
    const std::string cmd = "node " + node_dir + "/openai_client.mjs " + local(port, "/v1") + " none > " + out.string() + " 2>&1";
    const int rc = std::system(cmd.c_str());
    std::string text = read_file(out);
    std::filesystem::remove(out);
    EXPECT_EQ(rc, 0) << text;
    return json::parse(text, nullptr, false);
  };
  json via = run(router_port), direct = run(single_port);
  ASSERT_FALSE(via.is_discarded());
  EXPECT_EQ(via["model"], "pdserve-tiny");
  EXPECT_EQ(via["completion"]["text"], direct["completion"]["text"]);
  EXPECT_EQ(via["completion_stream"]["text"], direct["completion"]["text"]);
  EXPECT_EQ(via["chat"]["content"], direct["chat"]["content"]);
  EXPECT_EQ(via["chat_stream"]["content"], direct["chat"]["content"]);
  EXPECT_EQ(via["bad_request"]["status"], 400);
}

TEST_F(RouterPdE2E, ServerInfoHasMiniLbShape) {
  http::Client c;
  auto info = c.get(local(router_port, "/server_info"));
  ASSERT_TRUE(info);
  json j = json::parse(info->body);
  EXPECT_EQ(j["prefill"].size(), 1u);
  EXPECT_EQ(j["decode"].size(), 2u);
  EXPECT_TRUE(j["internal_states"].is_array());
  EXPECT_GE(j["internal_states"].size(), 2u);
}

// Runs last (it restarts a decode server).
TEST_F(RouterPdE2E, ZDecodeKilledMidRunAndRestarted) {
  std::atomic<int> finished{0}, failed_cleanly{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&] {
      http::Client c;
      bool done = false;
      auto r = c.stream(http::ClientRequest("POST", local(router_port, "/generate"),
                                            R"({"input_ids":[1,2,3],"stream":true,"sampling_params":{"max_new_tokens":200,"ignore_eos":true}})",
                                            {{"Content-Type", "application/json"}}, 120s),
                        http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent& e) {
                          if (e.data == "[DONE]") done = true;
                          return true;
                        }));
      (r && r->status == 200 && done ? finished : failed_cleanly)++;  // an error, never a hang
    });
  }
  std::this_thread::sleep_for(500ms);
  decode[1]->kill(SIGKILL);
  for (auto& t : clients) t.join();
  EXPECT_EQ(finished + failed_cleanly, 4);
  EXPECT_GE(finished.load(), 1);

  http::Client c;
  json body{{"text", "The capital of France is"}, {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}}}};
  auto want = c.post_json(local(single_port, "/generate"), body.dump(), 120s);
  ASSERT_TRUE(want);
  for (int i = 0; i < 4; ++i) {  // all served by the healthy decode (retried there if need be)
    auto got = c.post_json(local(router_port, "/generate"), body.dump(), 120s);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->status, 200) << got->body;
    EXPECT_EQ(json::parse(got->body)["output_ids"], json::parse(want->body)["output_ids"]);
  }
  auto decode1_state = [&](const char* key) {
    auto r = c.get(local(router_port, "/workers"));
    const json all = r ? json::parse(r->body) : json::object();
    for (const auto& w : all.value("workers", json::array()))
      if (w["url"] == local(decode_ports[1])) return w[key];
    return json();
  };
  bool down = false;
  for (int i = 0; i < 50 * time_scale() && !down; ++i) {
    down = decode1_state("healthy") == false;
    if (!down) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(down);

  delete decode[1];
  decode[1] = new Process(serve_args(decode_ports[1], {"--served-model-name", "pdserve-tiny", "--disaggregation-mode", "decode"}),
                          "pd_decode1b");
  ASSERT_TRUE(decode[1]->wait_http_ok(local(decode_ports[1], "/health"))) << decode[1]->log();
  bool up = false;
  for (int i = 0; i < 50 * time_scale() && !up; ++i) {
    up = decode1_state("healthy") == true;
    if (!up) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(up);
  const int64_t before = decode1_state("processed").get<int64_t>();
  for (int i = 0; i < 4; ++i) {
    auto got = c.post_json(local(router_port, "/generate"), body.dump(), 120s);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->status, 200) << got->body;
    EXPECT_EQ(json::parse(got->body)["output_ids"], json::parse(want->body)["output_ids"]);
  }
  EXPECT_GT(decode1_state("processed").get<int64_t>(), before);
}

}  // namespace
}  // namespace pdserve::test
