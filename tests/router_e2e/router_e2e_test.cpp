// The router as a real process in front of real `pdserve serve` workers (tiny model) on loopback:
// answers equal to a direct server's (native and OpenAI, streamed and not, the npm client),
// policies, and faults (a worker killed mid-run and restarted).
#include <atomic>
#include <map>
#include <thread>

#include "process.h"
#include "test_time.h"

namespace pdserve::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::vector<std::string> router_args(int port, std::vector<std::string> extra) {
  std::vector<std::string> a = {"router", "--host", "127.0.0.1", "--port", std::to_string(port), "--prometheus-port", "-1",
                                "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
                                "--health-success-threshold", "1", "--health-check-timeout-secs", "2",
                                "--worker-startup-check-interval", "1", "--retry-initial-backoff-ms", "20"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

json workers_of(http::Client& c, int router_port) {
  auto r = c.get(local(router_port, "/workers"));
  return r ? json::parse(r->body)["workers"] : json::array();
}

class RouterE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (int i = 0; i < 2; ++i) {
      ports_[i] = free_port();
      workers_[i] = new Process(serve_args(ports_[i], {"--served-model-name", "pdserve-tiny", "--api-key", "sk-e2e"}),
                                "worker" + std::to_string(i));
    }
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(workers_[i]->wait_http_ok(local(ports_[i], "/health"))) << workers_[i]->log();
  }
  static void TearDownTestSuite() {
    for (auto*& w : workers_) {
      delete w;
      w = nullptr;
    }
  }
  static std::unique_ptr<Process> start_router(int& port, std::vector<std::string> extra, const std::string& name) {
    port = free_port();
    extra.insert(extra.end(), {"--worker-urls", local(ports_[0]), local(ports_[1])});
    auto r = std::make_unique<Process>(router_args(port, extra), name);
    EXPECT_TRUE(r->wait_http_ok(local(port, "/readiness"), 60s)) << r->log();
    return r;
  }
  static inline int ports_[2] = {0, 0};
  static inline Process* workers_[2] = {nullptr, nullptr};
};

TEST_F(RouterE2E, AnswersEqualADirectServer) {
  int port = 0;
  auto router = start_router(port, {"--policy", "round_robin", "--api-key", "sk-e2e"}, "router_equal");
  http::Client c;
  http::Headers h{{"Content-Type", "application/json"}, {"Authorization", "Bearer sk-e2e"}};
  const std::string gen = R"({"text":"The capital of France is","sampling_params":{"max_new_tokens":12,"temperature":0}})";
  auto direct = c.request("POST", local(ports_[0], "/generate"), gen, h);
  ASSERT_TRUE(direct);
  ASSERT_EQ(direct->status, 200) << direct->body;
  const json want = json::parse(direct->body);
  for (int i = 0; i < 4; ++i) {  // both workers, through the router
    auto via = c.request("POST", local(port, "/generate"), gen, h);
    ASSERT_TRUE(via);
    ASSERT_EQ(via->status, 200) << via->body;
    json got = json::parse(via->body);
    EXPECT_EQ(got["text"], want["text"]);
    EXPECT_EQ(got["output_ids"], want["output_ids"]);
    EXPECT_EQ(got["meta_info"]["finish_reason"], want["meta_info"]["finish_reason"]);
  }
  const std::string streamed = R"({"text":"The capital of France is","stream":true,"sampling_params":{"max_new_tokens":12,"temperature":0}})";
  http::Client sc;
  // This router was started with an API key: a request without it is refused.
  auto unauth = c.request("POST", local(port, "/generate"), gen, {{"Content-Type", "application/json"}});
  ASSERT_TRUE(unauth);
  EXPECT_EQ(unauth->status, 401);
  std::string last;
  auto r = sc.stream(http::ClientRequest("POST", local(port, "/generate"), streamed, h, 120s),
                     http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent& e) {
                       if (e.data != "[DONE]") last = json::parse(e.data).value("text", "");
                       return true;
                     }));
  ASSERT_TRUE(r);
  EXPECT_EQ(last, want["text"]);

  // The official OpenAI npm client through the router.
  const std::string node_dir = std::string(PDSERVE_SOURCE_DIR) + "/tests/server/node";
  ASSERT_TRUE(std::filesystem::exists(node_dir + "/node_modules/openai")) << "run scripts/setup.sh (npm ci) first";
  const auto out_file = std::filesystem::temp_directory_path() / ("router_openai_" + std::to_string(::getpid()) + ".json");
  const std::string cmd = "node " + node_dir + "/openai_client.mjs " + local(port, "/v1") + " sk-e2e > " + out_file.string() + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string text = read_file(out_file);
  std::filesystem::remove(out_file);
  ASSERT_EQ(rc, 0) << text;
  const json j = json::parse(text);
  EXPECT_EQ(j["model"], "pdserve-tiny");
  EXPECT_EQ(j["completion"]["usage"]["completion_tokens"], 8);
  EXPECT_EQ(j["completion_stream"]["text"], j["completion"]["text"]);
  EXPECT_EQ(j["chat_stream"]["content"], j["chat"]["content"]);
  EXPECT_EQ(j["bad_request"]["status"], 400);  // the worker's 400 reached the client
  for (const auto& w : workers_of(c, port)) EXPECT_EQ(w["healthy"], true);
  // The same chat request straight to a worker gives the same content.
  auto direct_chat = c.request("POST", local(ports_[1], "/v1/chat/completions"),
                               json{{"model", "pdserve-tiny"},
                                    {"messages", {{{"role", "system"}, {"content", "You are terse."}},
                                                  {{"role", "user"}, {"content", "Name a color."}}}},
                                    {"max_tokens", 8},
                                    {"temperature", 0}}
                                   .dump(),
                               h);
  ASSERT_TRUE(direct_chat);
  EXPECT_EQ(json::parse(direct_chat->body)["choices"][0]["message"]["content"], j["chat"]["content"]);
  EXPECT_EQ(router->kill(SIGTERM), 0) << router->log();
}

TEST_F(RouterE2E, PoliciesSpreadAndStick) {
  http::Client c;
  http::Headers h{{"Content-Type", "application/json"}, {"Authorization", "Bearer sk-e2e"}};
  auto processed = [&](int port) {
    std::map<std::string, int64_t> n;
    for (const auto& w : workers_of(c, port)) n[w["url"]] = w["processed"];
    return n;
  };
  const std::string gen = R"({"input_ids":[1,2,3],"sampling_params":{"max_new_tokens":1}})";
  {
    int port = 0;
    auto router = start_router(port, {"--policy", "round_robin"}, "router_rr");
    for (int i = 0; i < 10; ++i) ASSERT_EQ(c.request("POST", local(port, "/generate"), gen, h)->status, 200);
    for (auto& [url, n] : processed(port)) EXPECT_EQ(n, 5) << url;
  }
  {
    int port = 0;
    auto router = start_router(port, {"--policy", "cache_aware"}, "router_cache");
    const std::string prefix(200, 'a');
    for (int i = 0; i < 8; ++i) {
      json body{{"text", prefix + std::to_string(i)}, {"sampling_params", {{"max_new_tokens", 1}}}};
      ASSERT_EQ(c.request("POST", local(port, "/generate"), body.dump(), h)->status, 200);
    }
    auto n = processed(port);
    ASSERT_EQ(n.size(), 2u);
    EXPECT_TRUE((n.begin()->second == 8) != (std::next(n.begin())->second == 8)) << "one worker got every shared-prefix request";
    auto metrics = c.get(local(port, "/metrics"));
    ASSERT_TRUE(metrics);
    EXPECT_NE(metrics->body.find("sgl_router_cache_hits_total 7"), std::string::npos);
  }
}

TEST_F(RouterE2E, WorkerKilledMidRunAndRestarted) {
  int port = 0;
  auto router = start_router(port, {"--policy", "round_robin"}, "router_fault");
  http::Headers h{{"Content-Type", "application/json"}, {"Authorization", "Bearer sk-e2e"}};
  // Long streams in flight on both workers while worker 0 dies.
  std::atomic<int> ok{0}, failed_cleanly{0}, other{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&] {
      http::Client c;
      bool error_event = false, done = false;
      auto r = c.stream(http::ClientRequest("POST", local(port, "/generate"),
                                            R"({"input_ids":[1,2,3],"stream":true,"sampling_params":{"max_new_tokens":200,"ignore_eos":true}})",
                                            h, 120s),
                        http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent& e) {
                          if (e.data == "[DONE]") done = true;
                          if (e.data.find("\"error\"") != std::string::npos) error_event = true;
                          return true;
                        }));
      if (r && r->status == 200 && done) {
        ++ok;
      } else if (!r || r->status != 200 || error_event || !done) {
        ++failed_cleanly;  // an error event, an error status or a closed stream: never a hang
      } else {
        ++other;
      }
    });
  }
  std::this_thread::sleep_for(500ms);
  workers_[0]->kill(SIGKILL);
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok + failed_cleanly, 4);
  EXPECT_GE(ok.load(), 1);  // the streams on the healthy worker finished

  // New requests all succeed (retried onto the healthy worker), and the dead one is marked down.
  http::Client c;
  for (int i = 0; i < 6; ++i) {
    auto r = c.request("POST", local(port, "/generate"), R"({"input_ids":[1,2],"sampling_params":{"max_new_tokens":2}})", h);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }
  bool down = false;
  for (int i = 0; i < 50 * time_scale() && !down; ++i) {
    for (const auto& w : workers_of(c, port))
      if (w["url"] == local(ports_[0]) && w["healthy"] == false) down = true;
    if (!down) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(down);

  // Restarted on the same port, it is healthy again and gets traffic.
  delete workers_[0];
  workers_[0] = new Process(serve_args(ports_[0], {"--served-model-name", "pdserve-tiny", "--api-key", "sk-e2e"}), "worker0b");
  ASSERT_TRUE(workers_[0]->wait_http_ok(local(ports_[0], "/health"))) << workers_[0]->log();
  bool up = false;
  for (int i = 0; i < 50 * time_scale() && !up; ++i) {
    for (const auto& w : workers_of(c, port))
      if (w["url"] == local(ports_[0]) && w["healthy"] == true) up = true;
    if (!up) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(up);
  int64_t before = 0;
  for (const auto& w : workers_of(c, port))
    if (w["url"] == local(ports_[0])) before = w["processed"];
  for (int i = 0; i < 4; ++i)
    ASSERT_EQ(c.request("POST", local(port, "/generate"), R"({"input_ids":[1],"sampling_params":{"max_new_tokens":1}})", h)->status, 200);
  for (const auto& w : workers_of(c, port))
    if (w["url"] == local(ports_[0])) { EXPECT_GT(w["processed"].get<int64_t>(), before); }
}

TEST_F(RouterE2E, CliErrors) {
  Process unknown({"router", "--worker-urls", local(ports_[0]), "--no-such-flag"}, "router_badflag");
  EXPECT_EQ(unknown.kill(0, 10s), 2);
  Process bad({"router", "--prefill", local(ports_[0]), "--decode", local(ports_[1])}, "router_badmode");
  EXPECT_EQ(bad.kill(0, 10s), 2);
  EXPECT_NE(bad.log().find("--pd-disaggregation"), std::string::npos) << bad.log();
}

}  // namespace
}  // namespace pdserve::test
