// The bootstrap server's API key: /route needs "Authorization: Bearer KEY" when the prefill has
// --api-key, /health stays open, and the prefill (PUT /route) and decode (GET /route) managers send
// the key from DisaggOptions::api_key, so a key-less or wrong-key peer is refused with a clear reason.
#include <gtest/gtest.h>

#include <thread>

#include "disagg/bootstrap_server.h"
#include "disagg/decode_manager.h"
#include "disagg/prefill_manager.h"
#include "http/client.h"

namespace pdserve::disagg {
namespace {

using scheduler::KvPoll;
using namespace std::chrono_literals;

const std::string kKey = "sk-bootstrap";

nlohmann::json registration(int dp_rank) {
  return {{"role", "Prefill"},    {"attn_tp_size", 1},   {"attn_tp_rank", 0},        {"attn_dp_size", 1},
          {"attn_dp_rank", 0},    {"pp_size", 1},        {"pp_rank", 0},             {"system_dp_size", 1},
          {"system_dp_rank", dp_rank}, {"rank_ip", "127.0.0.1"}, {"rank_port", 5000}};
}

TEST(BootstrapAuthTest, RouteNeedsTheKeyAndHealthStaysOpen) {
  auto bs = BootstrapServer::start("127.0.0.1", 0, kKey);
  ASSERT_TRUE(bs.has_value()) << bs.error().message();
  http::Client c;
  const std::string base = "http://127.0.0.1:" + std::to_string((*bs)->port());
  const std::string topo = base + "/route?engine_rank=-1&target_dp_group=-1&target_pp_rank=-1";
  EXPECT_EQ(c.get(base + "/health")->status, 200);  // the decode's heartbeat carries no key

  // Without the key, or with a wrong one (a prefix, a longer string, another scheme): 401, and
  // the registration must not have reached the table.
  for (const http::Headers& h : {http::Headers{}, bootstrap_headers("sk-boot"), bootstrap_headers(kKey + "x"),
                                 http::Headers{{"Authorization", "Basic " + kKey}}}) {
    auto put = c.request("PUT", base + "/route", registration(0).dump(), h);
    ASSERT_TRUE(put.has_value());
    EXPECT_EQ(put->status, 401) << put->body;
    EXPECT_NE(put->body.find("API key"), std::string::npos) << put->body;
    EXPECT_EQ(c.request("GET", topo, "", h)->status, 401);
  }
  EXPECT_TRUE((*bs)->table().empty()) << (*bs)->table().dump();

  EXPECT_EQ(c.request("PUT", base + "/route", registration(0).dump(), bootstrap_headers(kKey))->status, 200);
  auto got = c.request("GET", topo, "", bootstrap_headers(kKey));
  ASSERT_EQ(got->status, 200) << got->body;
  EXPECT_EQ(nlohmann::json::parse(got->body)["prefill_dp_size"], 1);
}

TEST(BootstrapAuthTest, WithoutAKeyRouteIsOpenAsInSglang) {
  auto bs = BootstrapServer::start("127.0.0.1", 0);
  ASSERT_TRUE(bs.has_value());
  http::Client c;
  const std::string base = "http://127.0.0.1:" + std::to_string((*bs)->port());
  EXPECT_EQ(c.request("PUT", base + "/route", registration(0).dump())->status, 200);
}

struct HostKv {
  std::vector<float> data = std::vector<float>(64 * 2 * 4, 1.0f);
  scheduler::KvBufferView view() {
    scheduler::KvBufferView v;
    v.layer_ptrs = {data.data()};
    v.bytes_per_token = 16;
    v.page_size = 2;
    v.num_pages = 64;
    v.dtype = "f32";
    return v;
  }
};

KvPoll wait_for_end(const std::function<KvPoll()>& poll) {
  const auto end = std::chrono::steady_clock::now() + 5s;
  KvPoll p = poll();
  while (std::chrono::steady_clock::now() < end && p != KvPoll::kWaitingForInput && p != KvPoll::kFailed) {
    std::this_thread::sleep_for(1ms);
    p = poll();
  }
  return p;
}

TEST(BootstrapAuthTest, ManagersSendTheKeyAndAWrongKeyIsRefusedClearly) {
  auto bs = BootstrapServer::start("127.0.0.1", 0, kKey);
  ASSERT_TRUE(bs.has_value());
  const int port = (*bs)->port();
  HostKv pkv, dkv;

  DisaggOptions keyless;
  auto intruder = std::make_shared<PrefillKvManager>(keyless, pkv.view(), 0, 1, *make_transfer_backend(Backend::kTcp, pkv.view()));
  auto refused = intruder->start("127.0.0.1", "127.0.0.1", port);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("API key"), std::string::npos) << refused.error().message();
  intruder->stop();

  DisaggOptions keyed;
  keyed.api_key = kKey;
  auto prefill = std::make_shared<PrefillKvManager>(keyed, pkv.view(), 0, 1, *make_transfer_backend(Backend::kTcp, pkv.view()));
  ASSERT_TRUE(prefill->start("127.0.0.1", "127.0.0.1", port).has_value());

  // A decode with the key gets the prefill's address (its receiver reaches WaitingForInput) ...
  auto decode = std::make_shared<DecodeKvManager>(keyed, dkv.view(), 0, *make_transfer_backend(Backend::kTcp, dkv.view()));
  ASSERT_TRUE(decode->start("127.0.0.1").has_value());
  auto recv = decode->make_receiver("ok", {"127.0.0.1", port, 7});
  EXPECT_EQ(wait_for_end([&] { return recv->poll(); }), KvPoll::kWaitingForInput) << recv->failure();

  // ... one with a wrong key fails the request, naming the bootstrap server's 401.
  DisaggOptions wrong;
  wrong.api_key = "sk-wrong";
  auto other = std::make_shared<DecodeKvManager>(wrong, dkv.view(), 0, *make_transfer_backend(Backend::kTcp, dkv.view()));
  ASSERT_TRUE(other->start("127.0.0.1").has_value());
  auto denied = other->make_receiver("denied", {"127.0.0.1", port, 8});
  ASSERT_EQ(wait_for_end([&] { return denied->poll(); }), KvPoll::kFailed);
  EXPECT_NE(denied->failure().find("answered 401"), std::string::npos) << denied->failure();
  recv->abort("test over");
  other->stop();
  decode->stop();
  prefill->stop();
}

}  // namespace
}  // namespace pdserve::disagg
