// Prefill and decode of different attention-TP sizes (issue 6 point 7). The servers of this build
// run attention TP 1 (server_args refuses more), so these tests build the other side's attention-TP
// group from several KV managers in one process: real bootstrap server, ZeroMQ, tcp backend.
// MLA's latent cache is whole on every attention-TP rank, so one prefill rank of a group sends the
// KV and the others finish without sending; a cache split by heads is refused at registration.
#include <gtest/gtest.h>

#include <functional>
#include <thread>

#include "disagg/bootstrap_server.h"
#include "disagg/decode_manager.h"
#include "disagg/prefill_manager.h"

namespace pdserve::disagg {
namespace {

using scheduler::KvPoll;
using namespace std::chrono_literals;

constexpr int kLayers = 2, kPageSize = 2, kPages = 32, kFloatsPerToken = 4;

// One rank's KV buffers, filled with values that say which rank they belong to.
struct RankKv {
  std::vector<std::vector<float>> layers;
  explicit RankKv(float seed) {
    for (int l = 0; l < kLayers; ++l) {
      layers.emplace_back(kPages * kPageSize * kFloatsPerToken);
      for (size_t i = 0; i < layers.back().size(); ++i) layers.back()[i] = seed + static_cast<float>(l * 10000 + static_cast<int>(i));
    }
  }
  scheduler::KvBufferView view() {
    scheduler::KvBufferView v;
    for (auto& l : layers) v.layer_ptrs.push_back(l.data());
    v.bytes_per_token = kFloatsPerToken * 4;
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

TEST(AttnTpTargets, FollowSglangsPairing) {
  auto same = attn_tp_targets(2, 1, 2);
  ASSERT_TRUE(same.has_value());
  EXPECT_EQ(same->ranks, std::vector<int>({1}));
  EXPECT_EQ(same->dests_per_real_rank, 1);
  // Decode larger: decode ranks 2 and 3 of 4 both read prefill rank 1 of 2, which serves two.
  auto larger = attn_tp_targets(4, 3, 2);
  ASSERT_TRUE(larger.has_value());
  EXPECT_EQ(larger->ranks, std::vector<int>({1}));
  EXPECT_EQ(larger->dests_per_real_rank, 2);
  // Decode smaller: decode rank 1 of 2 pairs with prefill ranks 2 and 3 of 4; rank 2 sends.
  auto smaller = attn_tp_targets(2, 1, 4);
  ASSERT_TRUE(smaller.has_value());
  EXPECT_EQ(smaller->ranks, std::vector<int>({2, 3}));
  EXPECT_EQ(smaller->dests_per_real_rank, 1);
  auto odd = attn_tp_targets(2, 0, 3);
  ASSERT_FALSE(odd.has_value());
  EXPECT_NE(odd.error().message().find("one must divide the other"), std::string::npos) << odd.error().message();
  EXPECT_FALSE(attn_tp_targets(2, 2, 1).has_value());  // rank outside its group
}

TEST(CheckLayout, DifferentAttentionTpIsAcceptedForMlaOnly) {
  KvLayout p{61, 1152, 64, "bf16"}, d{61, 1152, 64, "bf16"};
  p.attn_tp_size = 2;
  EXPECT_TRUE(check_layout(p, d).has_value());
  p.attn_tp_size = 3;
  d.attn_tp_size = 2;
  auto odd = check_layout(p, d);
  ASSERT_FALSE(odd.has_value());
  EXPECT_NE(odd.error().message().find("one must divide the other"), std::string::npos) << odd.error().message();
  p.mla = d.mla = false;
  p.attn_tp_size = 2;
  d.attn_tp_size = 1;
  auto heads = check_layout(p, d);
  ASSERT_FALSE(heads.has_value());
  EXPECT_NE(heads.error().message().find("prefill attention TP size 2 and decode attention TP size 1"), std::string::npos)
      << heads.error().message();
  EXPECT_NE(heads.error().message().find("split by heads"), std::string::npos) << heads.error().message();
  d.attn_tp_size = 2;
  EXPECT_TRUE(check_layout(p, d).has_value());  // split by heads, equal sizes: each rank its own heads
  d.mla = true;
  EXPECT_FALSE(check_layout(p, d).has_value());  // one MLA side, one split side
}

// `prefill_tp` prefill managers form one attention-TP group (DP group 0 of 1), `decode_tp` decode
// managers another.
class AttnTpPairing : public ::testing::Test {
 protected:
  void start(int prefill_tp, int decode_tp, bool mla = true) {
    auto bs = BootstrapServer::start("127.0.0.1", 0);
    ASSERT_TRUE(bs.has_value()) << bs.error().message();
    bootstrap_ = std::move(*bs);
    opts_.max_chunk_bytes = 64;
    for (int r = 0; r < prefill_tp; ++r) {
      pkv_.push_back(std::make_unique<RankKv>(1000.0f * static_cast<float>(r + 1)));
      auto v = pkv_.back()->view();
      prefill_.push_back(std::make_shared<PrefillKvManager>(opts_, v, 0, 1, *make_transfer_backend(Backend::kTcp, v),
                                                            AttnTp{prefill_tp, r, mla}));
      ASSERT_TRUE(prefill_.back()->start("127.0.0.1", "127.0.0.1", bootstrap_->port()).has_value());
    }
    for (int r = 0; r < decode_tp; ++r) {
      dkv_.push_back(std::make_unique<RankKv>(-1000.0f * static_cast<float>(r + 1)));
      auto v = dkv_.back()->view();
      decode_.push_back(std::make_shared<DecodeKvManager>(opts_, v, 0, *make_transfer_backend(Backend::kTcp, v),
                                                          AttnTp{decode_tp, r, mla}));
      ASSERT_TRUE(decode_.back()->start("127.0.0.1").has_value());
    }
  }
  void TearDown() override {
    for (auto& d : decode_) d->stop();
    for (auto& p : prefill_) p->stop();
  }
  scheduler::BootstrapInfo info(uint64_t room) const { return {"127.0.0.1", bootstrap_->port(), room}; }

  DisaggOptions opts_;
  std::unique_ptr<BootstrapServer> bootstrap_;
  std::vector<std::unique_ptr<RankKv>> pkv_, dkv_;
  std::vector<std::shared_ptr<PrefillKvManager>> prefill_;
  std::vector<std::shared_ptr<DecodeKvManager>> decode_;
};

// Prefill attention TP 2, decode 1: prefill rank 0 sends, rank 1 (a dummy pairing) sends nothing
// and still finishes; the decode's pages hold rank 0's KV.
TEST_F(AttnTpPairing, PrefillTp2DecodeTp1TakesTheKvFromOneRank) {
  start(2, 1);
  auto recv = decode_[0]->make_receiver("r", info(21));
  std::vector<std::unique_ptr<scheduler::KvSender>> senders;
  for (auto& p : prefill_) senders.push_back(p->make_sender("r", info(21), 2));
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput)
      << recv->failure();
  const std::vector<int32_t> dst = {4, 9}, src = {1, 2};
  recv->init(dst);
  for (auto& s : senders)
    ASSERT_EQ(wait_for([&] { return s->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput) << s->failure();
  scheduler::TransferMetadata meta;
  meta.first_token = 321;
  for (auto& s : senders) s->send(src, 0, true, &meta);  // every rank of the group runs the same prompt
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << recv->failure();
  for (auto& s : senders)
    EXPECT_EQ(wait_for([&] { return s->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << s->failure();
  EXPECT_EQ(recv->metadata().first_token, 321);
  for (int l = 0; l < kLayers; ++l)
    for (size_t i = 0; i < dst.size(); ++i) EXPECT_EQ(dkv_[0]->page(l, dst[i]), pkv_[0]->page(l, src[i])) << "layer " << l;
  EXPECT_EQ(prefill_[0]->stats().count(), 1);
  EXPECT_EQ(prefill_[1]->stats().bytes(), 0);  // the dummy pairing moved nothing
}

// Prefill attention TP 1, decode 2: both decode ranks need the whole latent cache; the prefill rank
// waits for both sets of destination pages and sends to each.
TEST_F(AttnTpPairing, PrefillTp1DecodeTp2SendsToEveryDecodeRank) {
  start(1, 2);
  std::vector<std::unique_ptr<scheduler::KvReceiver>> recvs;
  for (auto& d : decode_) recvs.push_back(d->make_receiver("r", info(22)));
  auto send = prefill_[0]->make_sender("r", info(22), 2);
  for (auto& r : recvs)
    ASSERT_EQ(wait_for([&] { return r->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput) << r->failure();
  const std::vector<std::vector<int32_t>> dst = {{3, 4}, {10, 7}};
  recvs[0]->init(dst[0]);
  // One decode rank's pages are not enough: the sender must wait for the other's.
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(send->poll(), KvPoll::kBootstrapping);
  recvs[1]->init(dst[1]);
  ASSERT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput) << send->failure();
  const std::vector<int32_t> src = {5, 6};
  scheduler::TransferMetadata meta;
  meta.first_token = 9;
  send->send(std::span<const int32_t>(src.data(), 1), 0, false, nullptr);
  send->send(std::span<const int32_t>(src.data() + 1, 1), 1, true, &meta);
  for (auto& r : recvs)
    ASSERT_EQ(wait_for([&] { return r->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << r->failure();
  EXPECT_EQ(wait_for([&] { return send->poll(); }, {KvPoll::kSuccess, KvPoll::kFailed}), KvPoll::kSuccess) << send->failure();
  for (size_t d = 0; d < 2; ++d)
    for (int l = 0; l < kLayers; ++l)
      for (size_t i = 0; i < src.size(); ++i)
        EXPECT_EQ(dkv_[d]->page(l, dst[d][i]), pkv_[0]->page(l, src[i])) << "decode rank " << d << " layer " << l;
}

// A decode abort reaches every prefill rank it paired with, the dummy pairing included, so none of
// them keeps the request's pages.
TEST_F(AttnTpPairing, DecodeAbortReachesEveryPairedPrefillRank) {
  start(2, 1);
  auto recv = decode_[0]->make_receiver("r", info(23));
  std::vector<std::unique_ptr<scheduler::KvSender>> senders;
  for (auto& p : prefill_) senders.push_back(p->make_sender("r", info(23), 1));
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kWaitingForInput);
  recv->init({2});
  for (auto& s : senders) ASSERT_EQ(wait_for([&] { return s->poll(); }, {KvPoll::kWaitingForInput}), KvPoll::kWaitingForInput);
  recv->abort("client went away");
  for (auto& s : senders) {
    ASSERT_EQ(wait_for([&] { return s->poll(); }, {KvPoll::kFailed}), KvPoll::kFailed);
    EXPECT_NE(s->failure().find("Aborted by the decode"), std::string::npos) << s->failure();
  }
}

// A KV cache split by heads cannot pair different attention-TP sizes: the prefill refuses the
// registration and the decode's request fails with both sides' values.
TEST_F(AttnTpPairing, SplitByHeadsCacheWithDifferentTpIsRefused) {
  start(2, 1, /*mla=*/false);
  auto recv = decode_[0]->make_receiver("r", info(24));
  ASSERT_EQ(wait_for([&] { return recv->poll(); }, {KvPoll::kWaitingForInput, KvPoll::kFailed}), KvPoll::kFailed);
  EXPECT_NE(recv->failure().find("refused the registration"), std::string::npos) << recv->failure();
  EXPECT_NE(recv->failure().find("prefill attention TP size 2 and decode attention TP size 1"), std::string::npos)
      << recv->failure();
}

}  // namespace
}  // namespace pdserve::disagg
