// The prefill rank's side of PD disaggregation (SGLang's KVManager in prefill mode + KVSender): it
// registers the rank with the bootstrap server, answers decode registrations (layout check), keeps
// each room's destination pages, runs the transfers on the control channel's I/O thread and makes
// the per-request senders the scheduler polls.
//
// Sender states and their deadlines:
//   Bootstrapping    until the decode's XFER (destination pages) arrives; bootstrap timeout
//   WaitingForInput  the scheduler is computing the prompt (no peer wait)
//   Transferring     chunks sent; after the last one, the decode's ACK must come within the
//                    waiting timeout
//   Success | Failed terminal; a failure caused here is told to the decode (FAIL), one caused by
//                    the decode (ABORT) is not echoed.
//
// A room that failed before the decode's pages arrived stays as a tombstone for
// failed_room_retention(): a decode whose prealloc queue held the request past our bootstrap
// timeout sends its XFER late, and is answered FAIL at once instead of waiting for KV that never
// comes (its waiting timeout, 300 s by default).
#pragma once

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "disagg/control_channel.h"
#include "disagg/options.h"
#include "disagg/protocol.h"
#include "disagg/transfer_backend.h"
#include "disagg/transfer_stats.h"
#include "scheduler/disagg_hooks.h"

namespace pdserve::disagg {

class PrefillKvManager final : public scheduler::DisaggEndpoints, public std::enable_shared_from_this<PrefillKvManager> {
 public:
  using Clock = std::chrono::steady_clock;

  PrefillKvManager(DisaggOptions opts, scheduler::KvBufferView kv, int dp_rank, int dp_size,
                   std::unique_ptr<TransferBackend> backend, AttnTp attn_tp = {});
  ~PrefillKvManager() override;

  // Binds the control socket on `host` and registers this rank (PUT /route) with the bootstrap
  // server at bootstrap_host:bootstrap_port.
  Status start(const std::string& host, const std::string& bootstrap_host, int bootstrap_port);
  void stop();

  std::unique_ptr<scheduler::KvSender> make_sender(const std::string& rid, const scheduler::BootstrapInfo& b,
                                                   int64_t num_pages) override;
  std::unique_ptr<scheduler::KvReceiver> make_receiver(const std::string&, const scheduler::BootstrapInfo&) override;

  TransferStats& stats() { return stats_; }
  const std::string& endpoint() const { return channel_.endpoint(); }
  size_t tracked_rooms() const;         // rooms of live requests, or not yet collected (tombstones aside)
  size_t failed_room_tombstones() const;

 private:
  class Sender;
  // One decode rank that asked for this room's KV (XFER). A dummy one (the decode pairs with
  // several prefill attention-TP ranks and another of them sends) gets nothing but failures.
  struct Dest {
    std::string session;         // the decode rank's endpoint
    std::vector<int32_t> pages;  // empty for a dummy
    bool dummy = false, acked = false;
  };
  struct Room {
    uint64_t room = 0;
    scheduler::KvPoll status = scheduler::KvPoll::kBootstrapping;
    std::string failure;
    bool has_sender = false, owner_gone = false, info = false, last_sent = false;
    bool held = false;               // test hook: never send (DisaggOptions::test_hold_rid_prefix)
    bool done_sent = false;          // DONE went out: only then may it go again (a held room never sent one)
    int required = 0;                // decode ranks to hear from (XFER's `required`; > 1 when the
                                     // decode's attention TP is larger)
    std::vector<Dest> dests;         // after XFER
    int64_t num_pages = 0;
    int64_t bytes = 0;
    Clock::time_point created, first_send, last_send_done;
    Clock::time_point failed_at;     // when status became kFailed
    std::string done_metadata;        // the DONE frame's metadata, kept to send it again
    Clock::time_point last_done_sent;  // DONE goes again to unacknowledged ranks every kAckResend
  };
  struct Session {
    bool failed = false;
    std::string failure;
  };

  // An ACK (or the DONE it answers) can be lost; the room would then hold its pages until the
  // waiting timeout and fail a request whose KV arrived. So DONE goes again to every decode rank
  // that has not acknowledged after kAckResend; a decode answers a repeated DONE with an ACK.
  static constexpr std::chrono::milliseconds kAckResend{3000};
  // Tombstones (see the header comment) are kept this long, and at most kMaxTombstones of them:
  // a burst of failures must not grow the map without bound (~0.5 KB each).
  static constexpr size_t kMaxTombstones = 16384;
  double failed_room_retention_s() const { return std::max(2 * opts_.bootstrap_timeout_s, 120.0); }
  // A room that failed before the decode's pages came, whose request is gone (or never came).
  static bool is_tombstone(const Room& r) {
    return r.status == scheduler::KvPoll::kFailed && !r.info && (r.owner_gone || !r.has_sender);
  }
  size_t tombstones_locked() const;
  void on_message(Frames&& f);
  void on_tick();
  void resend_unacknowledged_done_locked(Clock::time_point now);
  void fail_locked(Room& r, const std::string& why, bool tell_decode);
  void check_ready_locked(Room& r);  // Bootstrapping -> WaitingForInput once every decode rank asked
  static std::string sessions_of(const Room& r);
  void transfer(std::shared_ptr<Room> room, std::vector<int32_t> src, int64_t first, bool last,
                std::optional<scheduler::TransferMetadata> meta);
  scheduler::KvPoll poll(Room& r);

  DisaggOptions opts_;
  int dropped_registrations_ = 0;  // by the test hook; touched by the control thread only
  scheduler::KvBufferView kv_;
  KvLayout layout_;
  int dp_rank_, dp_size_;
  AttnTp attn_tp_;
  std::unique_ptr<TransferBackend> backend_;
  ControlChannel channel_;
  TransferStats stats_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Room>> rooms_;
  std::unordered_map<std::string, Session> sessions_;
  std::mt19937_64 rng_{std::random_device{}()};
  Clock::time_point last_gc_;
};

}  // namespace pdserve::disagg
