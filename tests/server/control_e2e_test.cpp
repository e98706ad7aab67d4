// Control paths of `pdserve serve` with real processes: retraction under a small KV budget,
// slow_down, flush_cache, abort, client disconnect and SIGTERM, with page accounting checked.
#include <atomic>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;

json generate_body(const std::vector<int>& ids, int max_new, bool stream = false, const std::string& rid = "") {
  json b = {{"input_ids", ids}, {"sampling_params", {{"max_new_tokens", max_new}, {"temperature", 0}, {"ignore_eos", true}}}};
  if (stream) b["stream"] = true;
  if (!rid.empty()) b["rid"] = rid;
  return b;
}

std::vector<int> prompt_of(int len, int seed) {
  std::vector<int> p(static_cast<size_t>(len));
  for (int i = 0; i < len; ++i) p[static_cast<size_t>(i)] = 3 + (seed * 7919 + i * 104729) % 128000;
  return p;
}

json server_state(ServerProcess& s) {
  http::Client c;
  auto r = c.get(s.url("/server_info"));
  EXPECT_TRUE(r && r->status == 200);
  return json::parse(r->body)["internal_states"][0];
}

// Polls until the server has nothing running or queued.
bool wait_idle(ServerProcess& s, std::chrono::seconds limit = std::chrono::seconds(60)) {
  http::Client c;
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    auto r = c.get(s.url("/get_load"));
    if (r && r->status == 200 && json::parse(r->body)[0]["num_reqs"] == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(RetractionE2E, SmallKvBudgetLosesNothing) {
  ServerProcess s({"--max-total-tokens", "2048", "--page-size", "16", "--decode-log-interval", "5",
                   "--schedule-conservativeness", "0.05", "--max-running-requests", "64"},
                  "retract");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  const int n = 32;
  std::vector<json> outs(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i)
    threads.emplace_back([&, i] {
      http::Client c;
      auto r = c.request("POST", s.url("/generate"), generate_body(prompt_of(40, i), 48).dump(), json_headers(),
                         std::chrono::seconds(600));
      if (r && r->status == 200) outs[static_cast<size_t>(i)] = json::parse(r->body);
    });
  for (auto& t : threads) t.join();
  // Reference: the same prompts through offline generate.
  std::vector<std::vector<int>> prompts;
  for (int i = 0; i < n; ++i) prompts.push_back(prompt_of(40, i));
  const auto dir = std::filesystem::temp_directory_path() / ("pdserve_retract_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "p.json") << json(prompts).dump();
  const std::string cmd = std::string(PDSERVE_BINARY) + " generate --model-path " + PDSERVE_SOURCE_DIR +
                          "/models/tiny-deepseek-v3 --load-format dummy --max-new-tokens 48 --ignore-eos --input-ids-file " +
                          (dir / "p.json").string() + " --output-json " + (dir / "o.json").string() + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const auto ref = json::parse(read_file(dir / "o.json"))["outputs"];
  std::filesystem::remove_all(dir);
  int retracted = 0;
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(outs[static_cast<size_t>(i)].is_object()) << "request " << i << " failed";
    EXPECT_EQ(outs[static_cast<size_t>(i)]["output_ids"], ref[static_cast<size_t>(i)]["output_ids"]) << "request " << i;
    retracted += outs[static_cast<size_t>(i)]["meta_info"]["total_retractions"].get<int>() > 0;
  }
  EXPECT_GT(retracted, 0);
  EXPECT_NE(s.log().find("retract"), std::string::npos);
  const auto st = server_state(s);
  EXPECT_TRUE(st["kv_accounting_consistent"].get<bool>());
  EXPECT_EQ(st["memory_usage"]["kvcache_pages_in_requests"], 0);
  EXPECT_EQ(s.terminate(), 0);
}

class ControlE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--decode-log-interval", "1"}, "control");
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
  }
  static void TearDownTestSuite() { delete server_; }
  http::Response post(const std::string& path, const json& body) {
    http::Client c;
    auto r = c.request("POST", server_->url(path), body.dump(), json_headers(), std::chrono::seconds(120));
    EXPECT_TRUE(r.has_value());
    return r ? *r : http::Response{};
  }
  static ServerProcess* server_;
};
ServerProcess* ControlE2E::server_ = nullptr;

TEST_F(ControlE2E, SlowDownSleepsEachBatchUntilReleased) {
  ASSERT_EQ(post("/slow_down", {{"forward_sleep_time", 0.3}}).status, 200);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = post("/generate", generate_body(prompt_of(8, 1), 3));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.status, 200);
  EXPECT_GE(took, 0.85);  // prefill + 2 decode steps, each after a 0.3 s sleep
  EXPECT_NE(server_->log().find("Scheduler.run_batch sleep 0.3s"), std::string::npos);
  ASSERT_EQ(post("/slow_down", {{"forward_sleep_time", nullptr}}).status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const auto t1 = std::chrono::steady_clock::now();
  ASSERT_EQ(post("/generate", generate_body(prompt_of(8, 2), 3)).status, 200);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), 0.8);
}

TEST_F(ControlE2E, FlushCacheRefusesWhileBusy) {
  ASSERT_TRUE(wait_idle(*server_));
  http::Client c;
  auto ok = c.request("POST", server_->url("/flush_cache"), "", {}, std::chrono::seconds(10));
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_NE(server_->log().find("Cache flushed successfully!"), std::string::npos);
  // A slowed-down long request keeps the scheduler busy while we ask.
  ASSERT_EQ(post("/slow_down", {{"forward_sleep_time", 0.2}}).status, 200);
  std::thread busy([&] { post("/generate", generate_body(prompt_of(8, 3), 4)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto refused = c.request("POST", server_->url("/flush_cache"), "", {}, std::chrono::seconds(10));
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status, 400);
  EXPECT_NE(server_->log().find("Cache not flushed because there are pending requests"), std::string::npos);
  post("/slow_down", {{"forward_sleep_time", nullptr}});
  busy.join();
}

TEST_F(ControlE2E, AbortRequestEndsItWithAnAbortReason) {
  ASSERT_EQ(post("/slow_down", {{"forward_sleep_time", 0.1}}).status, 200);
  json result;
  std::thread t([&] {
    auto r = post("/generate", generate_body(prompt_of(8, 4), 1000, false, "to-abort-1"));
    result = json::parse(r.body, nullptr, false);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  // Fields of the wrong type are a 400 naming the field (not a dropped connection).
  auto typed = post("/abort_request", {{"rid", "to-abort"}, {"abort_all", "yes"}});
  EXPECT_EQ(typed.status, 400);
  EXPECT_NE(typed.body.find("'abort_all' must be true or false"), std::string::npos) << typed.body;
  ASSERT_EQ(post("/abort_request", {{"rid", "to-abort"}}).status, 200);
  t.join();
  post("/slow_down", {{"forward_sleep_time", nullptr}});
  // As SGLang: an aborted request is answered normally, its finish reason says abort.
  ASSERT_TRUE(result.is_object()) << result.dump();
  EXPECT_EQ(result["meta_info"]["finish_reason"]["type"], "abort") << result.dump();
  EXPECT_NE(result["meta_info"]["finish_reason"]["message"].get<std::string>().find("abort"), std::string::npos);
  EXPECT_LT(result["meta_info"]["completion_tokens"].get<int>(), 1000);
  EXPECT_TRUE(wait_idle(*server_));
}

TEST_F(ControlE2E, ClientDisconnectAbortsTheRequest) {
  ASSERT_EQ(post("/slow_down", {{"forward_sleep_time", 0.05}}).status, 200);
  {
    http::Client c;
    http::ClientRequest req{"POST", server_->url("/generate"), generate_body(prompt_of(8, 5), 1000, true).dump(), json_headers(),
                            std::chrono::seconds(60)};
    int events = 0;
    http::StreamCallbacks cb;
    cb.on_event = [&](const http::SseEvent&) { return ++events < 3; };  // hang up after 3 events
    auto r = c.stream(req, cb);
    EXPECT_EQ(events, 3);
  }
  post("/slow_down", {{"forward_sleep_time", nullptr}});
  EXPECT_TRUE(wait_idle(*server_, std::chrono::seconds(20)));
  const auto st = server_state(*server_);
  EXPECT_TRUE(st["kv_accounting_consistent"].get<bool>());
  EXPECT_EQ(st["memory_usage"]["kvcache_pages_in_requests"], 0);
}

TEST(ShutdownE2E, SigtermAbortsInFlightRequestsAndExitsZero) {
  ServerProcess s({}, "sigterm");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  http::Client c;
  ASSERT_TRUE(c.request("POST", s.url("/slow_down"), json{{"forward_sleep_time", 0.1}}.dump(), json_headers()).has_value());
  std::atomic<int> status{0};
  std::string body;
  std::thread t([&] {
    http::Client c2;
    auto r = c2.request("POST", s.url("/generate"), generate_body(prompt_of(8, 6), 1000).dump(), json_headers(),
                        std::chrono::seconds(60));
    if (r) {
      status = r->status;
      body = r->body;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(s.terminate(), 0) << s.log();
  t.join();
  EXPECT_EQ(status.load(), 503) << body;
  EXPECT_NE(body.find("server shutting down"), std::string::npos) << body;
}

}  // namespace
}  // namespace pdserve::test

namespace pdserve::test {
namespace {

TEST(WatchdogE2E, HungBatchCrashesTheServerLoudly) {
  // A 0.3 s watchdog and a prefill of 12k tokens, which takes seconds on the CPU backend: the
  // server must notice, log SGLang's line and abort instead of hanging.
  // No warmup: on a loaded CI machine even the warmup batch could take 0.3 s.
  ServerProcess s({"--watchdog-timeout", "0.3", "--chunked-prefill-size", "-1", "--max-prefill-tokens", "16384",
                   "--skip-server-warmup"},
                  "watchdog");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  std::thread t([&] {
    http::Client c;
    (void)c.request("POST", s.url("/generate"), generate_body(prompt_of(12000, 9), 1).dump(), json_headers(),
                    std::chrono::seconds(60));
  });
  int code = -1;
  for (int i = 0; i < 600 && code == -1; ++i) {
    int status = 0;
    if (::waitpid(s.pid(), &status, WNOHANG) == s.pid()) code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  t.join();
  EXPECT_EQ(code, 128 + SIGABRT) << s.log();
  EXPECT_NE(s.log().find("Scheduler watchdog timeout"), std::string::npos) << s.log();
}

}  // namespace
}  // namespace pdserve::test
