// The decode rank's side of PD disaggregation (SGLang's KVManager in decode mode + KVReceiver): it
// finds the prefill rank of each request through the prefill's bootstrap server (DP group =
// bootstrap_room % prefill dp size; within the group, the attention-TP ranks of attn_tp_targets),
// registers once per prefill rank (layout + backend descriptor),
// sends each request's destination pages, applies arriving KV, and watches every prefill it talks
// to with heartbeats.
//
// Receiver states and their deadlines:
//   Bootstrapping    handshake (topology, rank address, registration); bootstrap timeout
//   WaitingForInput  ready for pages; the scheduler decides when memory allows (no peer wait)
//   Transferring     pages sent to the prefill; KV + DONE must arrive within the waiting timeout
//   Success | Failed terminal. Losing the prefill's heartbeat fails every unfinished room of it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "disagg/control_channel.h"
#include "disagg/options.h"
#include "disagg/protocol.h"
#include "disagg/transfer_backend.h"
#include "disagg/transfer_stats.h"
#include "scheduler/disagg_hooks.h"

namespace pdserve::disagg {

class DecodeKvManager final : public scheduler::DisaggEndpoints, public std::enable_shared_from_this<DecodeKvManager> {
 public:
  using Clock = std::chrono::steady_clock;

  DecodeKvManager(DisaggOptions opts, scheduler::KvBufferView kv, int dp_rank, std::unique_ptr<TransferBackend> backend,
                  AttnTp attn_tp = {});
  ~DecodeKvManager() override;

  Status start(const std::string& host);
  void stop();

  std::unique_ptr<scheduler::KvSender> make_sender(const std::string&, const scheduler::BootstrapInfo&, int64_t) override;
  std::unique_ptr<scheduler::KvReceiver> make_receiver(const std::string& rid, const scheduler::BootstrapInfo& b) override;

  TransferStats& stats() { return stats_; }
  const std::string& endpoint() const { return channel_.endpoint(); }

 private:
  class Receiver;
  static constexpr std::chrono::milliseconds kRegisterResend{3000};
  enum class ConnState { kPending, kReady, kFailed };
  struct Conn {  // one prefill rank, reached through one bootstrap address
    ConnState state = ConnState::kPending;
    std::string endpoint;  // the prefill rank's control socket
    std::string failure;
    Clock::time_point registered_at;  // when REG was last sent (re-sent while no REGR comes)
  };
  struct Prefill {  // one bootstrap address
    int dp_size = 0, attn_tp_size = 0;
    std::map<std::pair<int, int>, Conn> conns;  // (DP group, attention-TP rank)
    int heartbeat_failures = 0;
  };
  struct Target {  // a prefill attention-TP rank this room pairs with
    int tp_rank = 0;
    std::string endpoint;
    bool dummy = false;  // gets an XFER without pages: another rank sends the KV
  };
  struct Room {
    uint64_t room = 0;
    std::string addr;  // bootstrap host:port
    int group = -1;
    scheduler::KvPoll status = scheduler::KvPoll::kBootstrapping;
    std::string failure;
    std::vector<Target> targets;  // targets[0] sends the KV; known after the topology query
    int dests_per_real_rank = 1;  // decode ranks the sending prefill rank hears from
    std::string endpoint;         // the sending prefill rank, once known
    std::vector<int32_t> pages;
    std::vector<int32_t> sorted_pages;  // for checking that DATA writes only this room's pages
    scheduler::TransferMetadata meta;
    int64_t bytes = 0;
    bool xfer_sent = false;
    // The destination pages could not be sent (the prefill rank's endpoint did not answer): the
    // cached lookup was dropped and the room went back to the handshake once, keeping its pages.
    bool relooked_up = false;
    Clock::time_point created, init_time;
  };

  void on_message(Frames&& f);
  // Tells the prefill rank the room's KV arrived (again, if it repeats DONE: see PrefillKvManager).
  void acknowledge(const std::string& room, const std::string& prefill_endpoint);
  void handshake_loop();
  void heartbeat_loop();
  void handshake(const std::shared_ptr<Room>& room);
  // A REG or its REGR can be lost (a connection dropped under the message); without a resend
  // every room of that prefill rank would wait for its bootstrap deadline, and the next ones too.
  // Registration is idempotent on the prefill, so a pending one is simply sent again.
  void resend_pending_registrations();
  void post_registration(const std::string& addr, const std::string& endpoint);
  void update_rooms_locked(const std::string& addr);
  // Posts the room's destination pages (XFER) to its prefill ranks and moves it to Transferring.
  void send_xfer_locked(const std::shared_ptr<Room>& room);
  // The XFER could not be sent: a prefill restarted on the same bootstrap address leaves this
  // decode holding its old ranks' endpoints (the heartbeat sees a healthy server again), so the
  // first such failure drops the cached lookup and hands the room back to the handshake.
  void on_xfer_unreachable_locked(const std::shared_ptr<Room>& room, const std::string& err);
  void fail_locked(Room& r, const std::string& why, bool tell_prefill);
  void lose_prefill(const std::string& addr, const std::string& why);
  scheduler::KvPoll poll(Room& r);

  DisaggOptions opts_;
  int dropped_acks_ = 0;  // by the test hook; touched by the control thread only
  scheduler::KvBufferView kv_;
  KvLayout layout_;
  int dp_rank_;
  AttnTp attn_tp_;
  std::unique_ptr<TransferBackend> backend_;
  std::string descriptor_;
  ControlChannel channel_;
  TransferStats stats_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::deque<std::shared_ptr<Room>> handshakes_;
  std::unordered_map<std::string, Prefill> prefills_;
  std::unordered_map<uint64_t, std::shared_ptr<Room>> rooms_;
  std::thread handshake_thread_, heartbeat_thread_;
};

}  // namespace pdserve::disagg
