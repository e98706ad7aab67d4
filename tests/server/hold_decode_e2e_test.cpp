// POST/GET /hold_decode on a real `pdserve serve` (server/decode_hold.h): decode runs no step
// while held, the hold releases itself when #running-req reaches the target or at the timeout,
// `{"until_running": null}` releases it, and bad bodies are 400s.
#include <future>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;

class HoldDecodeE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--decode-log-interval", "1"}, "hold_decode");
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->terminate(), 0);
    delete server_;
  }
  static http::Response post(const std::string& path, const std::string& body) {
    http::Client c;
    auto r = c.request("POST", server_->url(path), body, json_headers(), std::chrono::seconds(60));
    EXPECT_TRUE(r.has_value());
    return r ? *r : http::Response{};
  }
  static json state() {
    http::Client c;
    auto r = c.get(server_->url("/hold_decode"));
    EXPECT_TRUE(r && r->status == 200);
    return r ? json::parse(r->body) : json();
  }
  static std::future<json> generate(int seed, int max_new) {
    return std::async(std::launch::async, [seed, max_new] {
      std::vector<int> ids;
      for (int i = 0; i < 8; ++i) ids.push_back(3 + (seed * 7919 + i * 104729) % 128000);
      json b = {{"input_ids", ids}, {"sampling_params", {{"max_new_tokens", max_new}, {"ignore_eos", true}}}};
      auto r = post("/generate", b.dump());
      return json::parse(r.body, nullptr, false);
    });
  }
  static size_t decode_lines_after(const std::string& marker) {
    const std::string log = server_->log();
    size_t pos = log.rfind(marker), n = 0;
    while (pos != std::string::npos && (pos = log.find("Decode batch", pos + 1)) != std::string::npos) ++n;
    return n;
  }
  static ServerProcess* server_;
};
ServerProcess* HoldDecodeE2E::server_ = nullptr;

TEST_F(HoldDecodeE2E, HoldsUntilTheTargetThenReleases) {
  auto r = post("/hold_decode", R"({"until_running": 3, "timeout": 60})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["holding"], true);
  auto a = generate(1, 4), b = generate(2, 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  json s = state();
  EXPECT_EQ(s["holding"], true) << s.dump();
  EXPECT_EQ(s["running"], 2) << s.dump();
  EXPECT_EQ(a.wait_for(std::chrono::seconds(0)), std::future_status::timeout) << "a request finished while held";
  EXPECT_EQ(decode_lines_after("Decode hold: no decode batches"), 0u) << server_->log();
  auto c = generate(3, 4);
  for (auto* f : {&a, &b, &c}) {
    ASSERT_EQ(f->wait_for(std::chrono::seconds(30)), std::future_status::ready);
    EXPECT_EQ(f->get()["meta_info"]["completion_tokens"], 4);
  }
  s = state();
  EXPECT_EQ(s["holding"], false);
  EXPECT_EQ(s["released_by"], "target");
  EXPECT_EQ(s["running_at_release"], 3);
  EXPECT_NE(server_->log().find("Decode hold released (target)"), std::string::npos);
}

TEST_F(HoldDecodeE2E, TimeoutReleasesSoAHoldNeverHangs) {
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(post("/hold_decode", R"({"until_running": 100, "timeout": 1})").status, 200);
  auto a = generate(4, 3);
  ASSERT_EQ(a.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_GE(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.9);
  EXPECT_EQ(a.get()["meta_info"]["completion_tokens"], 3);
  const json s = state();
  EXPECT_EQ(s["released_by"], "timeout") << s.dump();
  EXPECT_EQ(s["running_at_release"], 1) << s.dump();
}

TEST_F(HoldDecodeE2E, NullReleasesAndBadBodiesAre400) {
  ASSERT_EQ(post("/hold_decode", R"({"until_running": 100, "timeout": 60})").status, 200);
  EXPECT_EQ(state()["holding"], true);
  auto r = post("/hold_decode", R"({"until_running": null})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["released_by"], "request");
  EXPECT_EQ(state()["holding"], false);
  for (const char* bad : {"{}", R"({"until_running": 0})", R"({"until_running": "8"})", R"({"until_running": 2.5})",
                          R"({"until_running": 2, "timeout": -1})", R"({"until_running": 2, "timeout": 1e9})",
                          R"({"until_running": 2, "forward_sleep_time": 1})", "[1]", "not json"}) {
    auto b = post("/hold_decode", bad);
    EXPECT_EQ(b.status, 400) << bad << " -> " << b.body;
  }
  EXPECT_EQ(state()["holding"], false);  // no bad body started a hold
  EXPECT_EQ(generate(5, 2).get()["meta_info"]["completion_tokens"], 2);
}

}  // namespace
}  // namespace pdserve::test
