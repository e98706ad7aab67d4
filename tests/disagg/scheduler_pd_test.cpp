// The scheduler's PD queues driven by scripted endpoints (no network): what the scheduler hands a
// sender per chunk, the decode's reserved-token admission, and that aborts free the KV.
#include <gtest/gtest.h>

#include <map>

#include "base/logging.h"
#include "scheduler/scheduler.h"

namespace pdserve::scheduler {
namespace {

struct Script {
  KvPoll status = KvPoll::kBootstrapping;
  std::vector<std::tuple<std::vector<int32_t>, int64_t, bool>> sends;  // pages, first page, last
  std::optional<TransferMetadata> meta;
  std::vector<int32_t> init_pages;
  bool inited = false, aborted = false;
};

class ScriptedSender final : public KvSender {
 public:
  explicit ScriptedSender(std::shared_ptr<Script> s) : s_(std::move(s)) {}
  KvPoll poll() override { return s_->status; }
  std::string failure() const override { return "scripted failure"; }
  void send(std::span<const int32_t> pages, int64_t first, bool last, const TransferMetadata* meta) override {
    s_->sends.emplace_back(std::vector<int32_t>(pages.begin(), pages.end()), first, last);
    if (meta) s_->meta = *meta;
  }
  void abort(const std::string&) override { s_->aborted = true; }

 private:
  std::shared_ptr<Script> s_;
};

class ScriptedReceiver final : public KvReceiver {
 public:
  explicit ScriptedReceiver(std::shared_ptr<Script> s) : s_(std::move(s)) {}
  KvPoll poll() override { return s_->status; }
  std::string failure() const override { return "scripted failure"; }
  void init(std::vector<int32_t> pages) override {
    s_->inited = true;
    s_->init_pages = std::move(pages);
    s_->status = KvPoll::kTransferring;
  }
  TransferMetadata metadata() const override { return s_->meta.value_or(TransferMetadata{}); }
  void abort(const std::string&) override { s_->aborted = true; }

 private:
  std::shared_ptr<Script> s_;
};

struct Endpoints final : DisaggEndpoints {
  std::map<uint64_t, std::shared_ptr<Script>> rooms;
  std::unique_ptr<KvSender> make_sender(const std::string&, const BootstrapInfo& b, int64_t) override {
    return std::make_unique<ScriptedSender>(rooms[b.room] = std::make_shared<Script>());
  }
  std::unique_ptr<KvReceiver> make_receiver(const std::string&, const BootstrapInfo& b) override {
    auto s = rooms[b.room] = std::make_shared<Script>();
    s->status = KvPoll::kWaitingForInput;  // handshake done
    return std::make_unique<ScriptedReceiver>(s);
  }
};

struct Harness {
  std::shared_ptr<Endpoints> ep = std::make_shared<Endpoints>();
  std::vector<RequestOutput> outs;
  std::unique_ptr<Scheduler> s;
  Harness(DisaggMode mode, int64_t pages, int64_t page_size, int64_t chunk, int64_t reserved = 4) {
    log::init("error");
    SchedulerConfig c;
    c.disagg_mode = mode;
    c.chunked_prefill_size = chunk;
    c.num_reserved_decode_tokens = reserved;
    c.max_running_requests = 8;
    c.context_length = 256;
    c.log_stats = false;
    s = std::make_unique<Scheduler>(c, std::make_shared<NoopRunner>(64, pages, page_size), nullptr,
                                    [this](RequestOutput&& o) { outs.push_back(std::move(o)); });
    s->set_disagg_endpoints(ep);
  }
  void submit(uint64_t room, int len, int max_new = 4) {
    GenerateInput in;
    in.rid = "r" + std::to_string(room);
    for (int i = 0; i < len; ++i) in.input_ids.push_back(3 + i % 50);
    in.sampling.max_new_tokens = max_new;
    in.sampling.temperature = 0;
    in.bootstrap = BootstrapInfo{"127.0.0.1", 1, room};
    s->submit(std::move(in));
  }
  void steps(int n) {
    for (int i = 0; i < n; ++i) s->step();
  }
};

TEST(SchedulerPd, PrefillSendsFullPagesPerChunkAndTheRestWithTheMetadata) {
  Harness h(DisaggMode::kPrefill, 64, 2, 4);
  h.submit(1, 11);
  h.steps(2);
  auto& room = *h.ep->rooms.at(1);
  EXPECT_TRUE(room.sends.empty());  // still Bootstrapping: nothing is computed
  room.status = KvPoll::kWaitingForInput;
  h.steps(3);  // chunks of 4 tokens: 4, 8, 11
  ASSERT_EQ(room.sends.size(), 3u);
  EXPECT_EQ(std::get<0>(room.sends[0]).size(), 2u);  // 4 tokens = 2 full pages
  EXPECT_EQ(std::get<1>(room.sends[1]), 2);
  EXPECT_EQ(std::get<0>(room.sends[2]).size(), 2u);  // pages 4 and 5 (the half-full last one)
  EXPECT_TRUE(std::get<2>(room.sends[2]));
  ASSERT_TRUE(room.meta.has_value());
  EXPECT_EQ(room.meta->first_token, (3 + 10 % 50 + 1) % 64);  // NoopRunner: last token + 1
  EXPECT_EQ(h.s->stats().kv.in_requests, 6);  // held until the decode acknowledges
  EXPECT_TRUE(h.outs.empty());
  room.status = KvPoll::kSuccess;
  h.steps(1);
  ASSERT_EQ(h.outs.size(), 1u);
  EXPECT_TRUE(h.outs[0].finished);
  EXPECT_EQ(h.outs[0].new_ids.size(), 1u);
  EXPECT_EQ(h.s->stats().kv.in_requests, 0);
  EXPECT_TRUE(h.s->audit_kv().has_value());
}

TEST(SchedulerPd, DecodeAdmitsByKvWithReservedTokens) {
  Harness h(DisaggMode::kDecode, 16, 1, 64, /*reserved=*/4);
  for (uint64_t r = 1; r <= 3; ++r) h.submit(r, 5);
  h.steps(1);
  // 16 tokens: the first needs 5 + 4; the second would need 9 of 16 - 5 - 4 = 7: it waits.
  EXPECT_TRUE(h.ep->rooms.at(1)->inited);
  EXPECT_EQ(h.ep->rooms.at(1)->init_pages.size(), 5u);
  EXPECT_FALSE(h.ep->rooms.at(2)->inited);
  EXPECT_FALSE(h.ep->rooms.at(3)->inited);
  auto& first = *h.ep->rooms.at(1);
  first.meta = TransferMetadata{9, 0, false, 0, {}};
  first.status = KvPoll::kSuccess;
  h.steps(1);  // committed: first token 9 from the prefill, then decoding continues here
  h.steps(10);
  ASSERT_FALSE(h.outs.empty());
  EXPECT_EQ(h.outs.back().rid, "r1");
  EXPECT_TRUE(h.outs.back().finished);
  EXPECT_EQ(h.outs.back().new_ids.front(), 9);
  EXPECT_EQ(h.outs.back().new_ids.size(), 4u);
  EXPECT_TRUE(h.ep->rooms.at(2)->inited);  // memory came back: the next one is admitted
}

// A cache smaller than prompt + reserve: an empty rank admits the prompt anyway (waiting for the
// reserve would wait forever: the PD warm-up hung on such a server); while it holds one, the next
// waits for the reserve as usual. A prompt the whole cache cannot hold is refused with a 400.
TEST(SchedulerPd, EmptyDecodeRankAdmitsAPromptSmallerThanItsReserve) {
  Harness h(DisaggMode::kDecode, 16, 1, 64, /*reserved=*/512);
  h.submit(1, 5);
  h.submit(2, 5);
  h.steps(1);
  EXPECT_TRUE(h.ep->rooms.at(1)->inited);
  EXPECT_FALSE(h.ep->rooms.at(2)->inited);
  auto& first = *h.ep->rooms.at(1);
  first.meta = TransferMetadata{9, 0, false, 0, {}};
  first.status = KvPoll::kSuccess;
  h.steps(12);
  ASSERT_FALSE(h.outs.empty());
  EXPECT_EQ(h.outs.front().rid, "r1");
  EXPECT_TRUE(h.outs.back().finished);
  EXPECT_TRUE(h.ep->rooms.at(2)->inited);  // the rank emptied: the second is admitted
  h.submit(3, 10);                          // a 16-token cache admits prompts of at most 16 - 7 tokens
  h.steps(1);
  ASSERT_EQ(h.outs.back().rid, "r3");
  EXPECT_EQ(h.outs.back().finish_reason->status_code, 400);
  EXPECT_NE(h.outs.back().finish_reason->message.find("Input length (10 tokens) exceeds the maximum allowed length (10"),
            std::string::npos)
      << h.outs.back().finish_reason->message;
  EXPECT_TRUE(h.s->audit_kv().has_value());
}

TEST(SchedulerPd, AbortInTheTransferQueueFreesThePagesAndTellsThePeer) {
  Harness h(DisaggMode::kDecode, 64, 1, 64);
  h.submit(1, 10);
  h.steps(1);
  ASSERT_TRUE(h.ep->rooms.at(1)->inited);
  EXPECT_EQ(h.s->stats().kv.in_requests, 10);
  h.s->abort("r1", false, "test abort");
  h.steps(1);
  EXPECT_TRUE(h.ep->rooms.at(1)->aborted);
  ASSERT_EQ(h.outs.size(), 1u);
  EXPECT_EQ(h.outs[0].finish_reason->type, FinishReason::Type::kAbort);
  EXPECT_EQ(h.s->stats().kv.in_requests, 0);
  EXPECT_TRUE(h.s->audit_kv().has_value());
}

TEST(SchedulerPd, FailedTransferIsA500AndFreesThePages) {
  Harness h(DisaggMode::kDecode, 64, 1, 64);
  h.submit(1, 10);
  h.steps(1);
  h.ep->rooms.at(1)->status = KvPoll::kFailed;
  h.steps(1);
  ASSERT_EQ(h.outs.size(), 1u);
  EXPECT_EQ(h.outs[0].finish_reason->status_code, 500);
  EXPECT_NE(h.outs[0].finish_reason->message.find("Decode transfer failed"), std::string::npos);
  EXPECT_EQ(h.s->stats().num_transfer_failed_total, 1);
  EXPECT_EQ(h.s->stats().kv.in_requests, 0);
}

TEST(SchedulerPd, RequestWithoutBootstrapRoomIsRejected) {
  Harness h(DisaggMode::kDecode, 64, 1, 64);
  GenerateInput in;
  in.rid = "x";
  in.input_ids = {1, 2, 3};
  h.s->submit(std::move(in));
  h.steps(1);
  ASSERT_EQ(h.outs.size(), 1u);
  EXPECT_EQ(h.outs[0].finish_reason->status_code, 400);
}

}  // namespace
}  // namespace pdserve::scheduler
