// A prefill and a decode KV manager in one process over loopback (real bootstrap server, ZeroMQ
// control channel, tcp backend) on plain host buffers: the protocol, its states, deadlines and
// failure paths without a model.
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

constexpr int kLayers = 2, kPageSize = 2, kPages = 64;
constexpr int kFloatsPerToken = 4;

struct HostKv {
  std::vector<std::vector<float>> layers;
  explicit HostKv(float seed) {
    for (int l = 0; l < kLayers; ++l) {
      layers.emplace_back(kPages * kPageSize * kFloatsPerToken);
      for (size_t i = 0; i < layers.back().size(); ++i) layers.back()[i] = seed + static_cast<float>(l * 100000 + static_cast<int>(i));
    }
  }
  scheduler::KvBufferView view(int64_t bytes_per_token = kFloatsPerToken * 4) {
    scheduler::KvBufferView v;
    for (auto& l : layers) v.layer_ptrs.push_back(l.data());
    v.bytes_per_token = bytes_per_token;
    v.page_size = kPageSize;
    v.num_pages = kPages;
    v.dtype = "f32";
    return v;
  }
  std::vector<float> page(int layer, int p) const {
    const auto& l = layers[static_cast<size_t>(layer)];
    const size_t n = kPageSize * kFloatsPerToken;
    return {l.begin() + static_cast<std::ptrdiff_t>(p * n), l.begin() + static_cast<std::ptrdiff_t>((p + 1) * n)};
  }
};

KvPoll wait_for(const std::function<KvPoll()>& poll, std::initializer_list<KvPoll> until, std::chrono::milliseconds limit = 5000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  KvPoll p = poll();
  while (std::chrono::steady_clock::now() < end) {
    p = poll();
    for (KvPoll u : until)
      if (p == u) return p;
    std::this_thread::sleep_for(1ms);
  }
  return p;
}

class TransferTest : public ::testing::Test {
 protected:
  void SetUp() override { opts_.max_chunk_bytes = 64; }  // several chunks even for small requests

  void start(float fail_prob = 0, int64_t decode_bytes_per_token = kFloatsPerToken * 4) {
    auto bs = BootstrapServer::start("127.0.0.1", 0);
    ASSERT_TRUE(bs.has_value()) << bs.error().message();
    bootstrap_ = std::move(*bs);
    DisaggOptions po = opts_;
    po.test_failure_prob = fail_prob;
    prefill_ = std::make_shared<PrefillKvManager>(po, pkv_.view(), 0, 1, *make_transfer_backend(Backend::kTcp, pkv_.view()));
    ASSERT_TRUE(prefill_->start("127.0.0.1", "127.0.0.1", bootstrap_->port()).has_value());
    auto dview = dkv_.view(decode_bytes_per_token);
    decode_ = std::make_shared<DecodeKvManager>(opts_, dview, 0, *make_transfer_backend(Backend::kTcp, dview));
    ASSERT_TRUE(decode_->start("127.0.0.1").has_value());
  }
  scheduler::BootstrapInfo info(uint64_t room) const { return {"127.0.0.1", bootstrap_->port(), room}; }

  // A receiver and a sender of one room, paired: the decode's handshake done, its destination
  // pages `dst` sent (XFER) and taken by the prefill, whose prompt needs `num_pages` (default
  // dst.size()). Call as ASSERT_NO_FATAL_FAILURE(pair(...)).
  struct Pair {
    std::unique_ptr<scheduler::KvReceiver> recv;
    std::unique_ptr<scheduler::KvSender> send;
  };
  void pair(const std::string& rid, uint64_t room, const std::vector<int32_t>& dst, Pair& out, int64_t num_pages = -1) {
    out.recv = decode_->make_receiver(rid, info(room));
    out.send = prefill_->make_sender(rid, info(room), num_pages < 0 ? static_cast<int64_t>(dst.size()) : num_pages);
    ASSERT_EQ(wait_for([&] { return out.recv->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput)
        << out.recv->failure();
    out.recv->init(dst);
    if (num_pages >= 0 && num_pages != static_cast<int64_t>(dst.size())) return;  // the caller checks the refusal
    ASSERT_EQ(wait_for([&] { return out.send->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput)
        << out.send->failure();
  }

  DisaggOptions opts_;
  HostKv pkv_{1.0f}, dkv_{-1.0f};
  std::unique_ptr<BootstrapServer> bootstrap_;
  std::shared_ptr<PrefillKvManager> prefill_;
  std::shared_ptr<DecodeKvManager> decode_;
};

TEST_F(TransferTest, PagesAndMetadataArriveAndBothSidesSucceed) {
  start();
  auto recv = decode_->make_receiver("r", info(77));
  auto send = prefill_->make_sender("r", info(77), 3);
  EXPECT_EQ(send->poll(), KvPoll::kBootstrapping);  // no destination pages yet
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput)
      << recv->failure();
  const std::vector<int32_t> dst = {10, 11, 30};
  recv->init(dst);
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kWaitingForInput}), KvPoll::kWaitingForInput);
  // Chunked prefill: the first full pages, then the rest with the metadata.
  const std::vector<int32_t> src = {5, 6, 7};
  send->send(std::span<const int32_t>(src.data(), 2), 0, false, nullptr);
  scheduler::TransferMetadata meta;
  meta.first_token = 1234;
  meta.cached_tokens = 2;
  send->send(std::span<const int32_t>(src.data() + 2, 1), 2, true, &meta);
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << recv->failure();
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << send->failure();
  EXPECT_EQ(recv->metadata().first_token, 1234);
  EXPECT_EQ(recv->metadata().cached_tokens, 2);
  for (int l = 0; l < kLayers; ++l)
    for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(dkv_.page(l, dst[i]), pkv_.page(l, src[i])) << "layer " << l << " page " << i;
  EXPECT_NE(dkv_.page(0, 12), pkv_.page(0, 7));  // nothing else written
  EXPECT_EQ(decode_->stats().count(), 1);
  EXPECT_EQ(prefill_->stats().bytes(), 3 * kLayers * kPageSize * kFloatsPerToken * 4);
}

TEST_F(TransferTest, LostRegistrationIsSentAgain) {
  // The prefill ignores the decode's first registration, as if the message were lost: the decode
  // must register again on its own instead of leaving the room (and every later one of this
  // prefill rank) waiting for the 300 s bootstrap deadline.
  opts_.test_drop_registrations = 1;
  start();
  auto recv = decode_->make_receiver("r", info(78));
  auto send = prefill_->make_sender("r", info(78), 1);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}, 15s), KvPoll::kWaitingForInput)
      << recv->failure();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  recv->init({3});
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kWaitingForInput}), KvPoll::kWaitingForInput);
  scheduler::TransferMetadata meta;
  meta.first_token = 7;
  const std::vector<int32_t> src = {9};
  send->send(std::span<const int32_t>(src.data(), 1), 0, true, &meta);
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << recv->failure();
  EXPECT_EQ(dkv_.page(1, 3), pkv_.page(1, 9));
}

TEST_F(TransferTest, LostRegistrationIsSentAgainWhileHandshakesKeepComing) {
  // As above, with a new request for the same prefill every 100 ms: the decode's handshake thread
  // is never idle for the resend period, and the resend must still happen.
  opts_.test_drop_registrations = 1;
  start();
  auto recv = decode_->make_receiver("r", info(80));
  std::vector<std::unique_ptr<scheduler::KvReceiver>> others;
  const auto t0 = std::chrono::steady_clock::now();
  KvPoll p = recv->poll();
  while (p != KvPoll::kWaitingForInput && p != KvPoll::kFailed && std::chrono::steady_clock::now() - t0 < 15s) {
    others.push_back(decode_->make_receiver("o" + std::to_string(others.size()), info(1000 + others.size())));
    std::this_thread::sleep_for(100ms);
    p = recv->poll();
  }
  ASSERT_EQ(p, KvPoll::kWaitingForInput) << recv->failure();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
}

TEST_F(TransferTest, LostAcknowledgementIsAskedForAgain) {
  // The decode drops its first ACK: the prefill sends DONE again after 3 s; the decode's
  // request has ended by then (receiver gone), and it must still answer, so the prefill's room
  // succeeds (freeing its pages) long before the 300 s waiting timeout.
  opts_.test_drop_acks = 1;
  start();
  Pair p;
  ASSERT_NO_FATAL_FAILURE(pair("r", 79, {4}, p));
  auto& [recv, send] = p;
  scheduler::TransferMetadata meta;
  meta.first_token = 11;
  const std::vector<int32_t> src = {8};
  const auto t0 = std::chrono::steady_clock::now();
  send->send(std::span<const int32_t>(src.data(), 1), 0, true, &meta);
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << recv->failure();
  EXPECT_EQ(recv->metadata().first_token, 11);
  recv.reset();  // the decode's request ends before the repeated DONE comes
  EXPECT_EQ(send->poll(), KvPoll::kTransferring);  // its ACK was lost
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}, 15s), KvPoll::kSuccess) << send->failure();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  EXPECT_EQ(dkv_.page(0, 4), pkv_.page(0, 8));
}

TEST_F(TransferTest, HeldRoomSendsNoDoneUntilItsKvIsSent) {
  // The hold test hook keeps a room Transferring as if its last bytes were still on their way: no
  // DONE has gone out, so none may go "again". A resend here once posted an empty metadata string,
  // which the decode refused ("bad transfer metadata") and failed the request.
  opts_.test_hold_rid_prefix = "held-";
  start();
  Pair p;
  ASSERT_NO_FATAL_FAILURE(pair("held-r", 81, {6}, p));
  auto& [recv, send] = p;
  scheduler::TransferMetadata meta;
  meta.first_token = 13;
  const std::vector<int32_t> src = {2};
  send->send(std::span<const int32_t>(src.data(), 1), 0, true, &meta);
  // Past the 3 s resend period: both sides still wait for the held bytes.
  EXPECT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}, 3500ms), KvPoll::kTransferring)
      << recv->failure();
  EXPECT_EQ(send->poll(), KvPoll::kTransferring) << send->failure();
}

TEST_F(TransferTest, LatePagesForARoomThePrefillGaveUpFailAtOnce) {
  // A decode whose KV is full keeps the request in its prealloc queue past the prefill's bootstrap
  // timeout; the prefill fails the room and its request ends. When the decode's pages finally
  // come, the prefill must answer FAIL at once: before the tombstone, the room had been
  // collected, the late XFER made a new one nobody would ever send, and the decode waited its
  // whole waiting timeout (240 s under ASan in CI) for KV that never came.
  opts_.bootstrap_timeout_s = 0.3;
  opts_.waiting_timeout_s = 60;
  start();
  auto recv = decode_->make_receiver("r", info(82));
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput)
      << recv->failure();
  auto send = prefill_->make_sender("r", info(82), 1);
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kFailed}, 2000ms), KvPoll::kFailed);
  send.reset();  // the request ended on the prefill
  std::this_thread::sleep_for(1000ms);  // several collection ticks, well past the bootstrap timeout
  EXPECT_EQ(prefill_->tracked_rooms(), 0u);  // no live room left: the tombstone is not one
  EXPECT_EQ(prefill_->failed_room_tombstones(), 1u);
  const auto t0 = std::chrono::steady_clock::now();
  recv->init({5});
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed, KvPoll::kSuccess}, 5000ms), KvPoll::kFailed);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_NE(recv->failure().find("the prefill reported"), std::string::npos) << recv->failure();
  EXPECT_NE(recv->failure().find("KVPoll.Bootstrapping"), std::string::npos) << recv->failure();
  // A new request with the same room starts afresh instead of inheriting the failure.
  auto again = prefill_->make_sender("r2", info(82), 1);
  EXPECT_EQ(again->poll(), KvPoll::kBootstrapping) << again->failure();
}

TEST_F(TransferTest, LayoutMismatchIsRefusedNamingBothSides) {
  start(0, 32);
  auto recv = decode_->make_receiver("r", info(5));
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed, KvPoll::kWaitingForInput}), KvPoll::kFailed);
  EXPECT_NE(recv->failure().find("prefill has layers=2 bytes_per_token=16"), std::string::npos) << recv->failure();
  EXPECT_NE(recv->failure().find("decode has layers=2 bytes_per_token=32"), std::string::npos) << recv->failure();
}

TEST_F(TransferTest, WrongBootstrapPortFailsAtOnceNamingTheAddress) {
  start();
  auto recv = decode_->make_receiver("r", {"127.0.0.1", 1, 5});
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed}, 2000ms), KvPoll::kFailed);
  EXPECT_NE(recv->failure().find("127.0.0.1:1"), std::string::npos) << recv->failure();
}

TEST_F(TransferTest, SenderTimesOutInBootstrapping) {
  opts_.bootstrap_timeout_s = 0.2;
  start();
  auto send = prefill_->make_sender("r", info(9), 1);
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kFailed}, 2000ms), KvPoll::kFailed);
  EXPECT_NE(send->failure().find("KVPoll.Bootstrapping"), std::string::npos) << send->failure();
}

TEST_F(TransferTest, ReceiverTimesOutWhenTheKvNeverComes) {
  opts_.waiting_timeout_s = 0.3;
  start();
  auto recv = decode_->make_receiver("r", info(10));
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput}), KvPoll::kWaitingForInput);
  recv->init({1});
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed}, 2000ms), KvPoll::kFailed);
  EXPECT_NE(recv->failure().find("KVPoll.Transferring"), std::string::npos) << recv->failure();
}

TEST_F(TransferTest, DecodeAbortReachesThePrefill) {
  start();
  Pair p;
  ASSERT_NO_FATAL_FAILURE(pair("r", 11, {3}, p));
  auto& [recv, send] = p;
  recv->abort("client went away");
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kFailed}), KvPoll::kFailed);
  EXPECT_NE(send->failure().find("Aborted by the decode"), std::string::npos) << send->failure();
}

TEST_F(TransferTest, PrefillAbortReachesTheDecode) {
  start();
  Pair p;
  ASSERT_NO_FATAL_FAILURE(pair("r", 12, {3}, p));
  auto& [recv, send] = p;
  send.reset();  // the request ended on the prefill (e.g. aborted while waiting for its forward)
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed}), KvPoll::kFailed);
  EXPECT_NE(recv->failure().find("the prefill reported"), std::string::npos) << recv->failure();
}

TEST_F(TransferTest, InjectedFailuresFailBothSides) {
  start(1.0f);
  Pair p;
  ASSERT_NO_FATAL_FAILURE(pair("r", 13, {4}, p));
  auto& [recv, send] = p;
  scheduler::TransferMetadata meta;
  const std::vector<int32_t> src = {8};
  send->send(src, 0, true, &meta);
  EXPECT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kFailed}), KvPoll::kFailed);
  EXPECT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed}), KvPoll::kFailed);
  EXPECT_NE(recv->failure().find("injected"), std::string::npos) << recv->failure();
}

TEST_F(TransferTest, PageCountMismatchFailsInsteadOfWritingPastTheRequest) {
  start();
  Pair p;
  ASSERT_NO_FATAL_FAILURE(pair("r", 14, {1, 2}, p, 3));
  auto& [recv, send] = p;
  EXPECT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kFailed}), KvPoll::kFailed);
  EXPECT_NE(send->failure().find("allocated 2 pages, the prompt needs 3"), std::string::npos) << send->failure();
  EXPECT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed}), KvPoll::kFailed);
}

TEST_F(TransferTest, LosingThePrefillFailsItsRooms) {
  opts_.heartbeat_interval_s = 0.2;  // below SGLang's minimum on purpose: the test drives the struct directly
  opts_.heartbeat_max_failure = 1;
  start();
  auto recv = decode_->make_receiver("r", info(15));
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput}), KvPoll::kWaitingForInput);
  recv->init({1});
  bootstrap_->stop();
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kFailed}, 5000ms), KvPoll::kFailed);
  EXPECT_NE(recv->failure().find("Losing connection with prefill instance"), std::string::npos) << recv->failure();
}

TEST(BootstrapServerTest, RoutesFollowSglang) {
  auto bs = BootstrapServer::start("127.0.0.1", 0);
  ASSERT_TRUE(bs.has_value());
  http::Client c;
  const std::string base = "http://127.0.0.1:" + std::to_string((*bs)->port());
  EXPECT_EQ(c.get(base + "/health")->status, 200);
  EXPECT_EQ(c.get(base + "/route?engine_rank=-1&target_dp_group=-1&target_pp_rank=-1")->status, 503);  // nobody registered
  EXPECT_EQ(c.get(base + "/route")->status, 400);
  for (int r = 0; r < 2; ++r) {
    nlohmann::json reg = {{"role", "Prefill"}, {"attn_tp_size", 1}, {"attn_tp_rank", 0}, {"attn_dp_size", 1}, {"attn_dp_rank", 0},
                          {"pp_size", 1}, {"pp_rank", 0}, {"system_dp_size", 2}, {"system_dp_rank", r},
                          {"rank_ip", "127.0.0.1"}, {"rank_port", 5000 + r}};
    EXPECT_EQ(c.request("PUT", base + "/route", reg.dump())->status, 200);
  }
  auto topo = nlohmann::json::parse(c.get(base + "/route?engine_rank=-1&target_dp_group=-1&target_pp_rank=-1")->body);
  EXPECT_EQ(topo["prefill_dp_size"], 2);
  EXPECT_EQ(topo["prefill_attn_tp_size"], 1);
  auto rank1 = nlohmann::json::parse(c.get(base + "/route?engine_rank=0&target_dp_group=1&target_pp_rank=0")->body);
  EXPECT_EQ(rank1["rank_port"], 5001);
  EXPECT_EQ(c.get(base + "/route?engine_rank=0&target_dp_group=5&target_pp_rank=0")->status, 404);
  EXPECT_EQ(c.request("PUT", base + "/route", "{}")->status, 400);
}

}  // namespace
}  // namespace pdserve::disagg
