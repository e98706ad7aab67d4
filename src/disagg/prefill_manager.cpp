#include "disagg/prefill_manager.h"

#include <algorithm>

#include <fmt/format.h>

#include "base/logging.h"
#include "disagg/bootstrap_server.h"
#include "disagg/fake_endpoints.h"
#include "http/client.h"

namespace pdserve::disagg {

using scheduler::KvPoll;

// The scheduler's handle on one room. All state lives in the manager's Room (shared with the I/O
// thread); this object only forwards, and gives the room up when the request ends.
class PrefillKvManager::Sender final : public scheduler::KvSender {
 public:
  Sender(std::shared_ptr<PrefillKvManager> m, std::shared_ptr<Room> r) : m_(std::move(m)), r_(std::move(r)) {}
  ~Sender() override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    if (!terminal(r_->status)) m_->fail_locked(*r_, "the request ended on the prefill", true);
    r_->owner_gone = true;
  }
  KvPoll poll() override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    return m_->poll(*r_);
  }
  std::string failure() const override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    return r_->failure;
  }
  void send(std::span<const int32_t> src, int64_t first, bool last, const scheduler::TransferMetadata* meta) override {
    {
      std::lock_guard<std::mutex> lock(m_->mu_);
      if (r_->status == KvPoll::kFailed) return;
      if (r_->status == KvPoll::kWaitingForInput) {
        r_->status = KvPoll::kTransferring;
        r_->first_send = Clock::now();
      }
    }
    std::optional<scheduler::TransferMetadata> md;
    if (meta) md = *meta;
    // Raw manager pointer: a task must never hold the manager's last reference (its destructor
    // joins the thread running the task); the channel runs tasks only while the manager lives.
    PrefillKvManager* m = m_.get();
    auto r = r_;
    m_->channel_.run([m, r, pages = std::vector<int32_t>(src.begin(), src.end()), first, last, md] {
      m->transfer(r, pages, first, last, md);
    });
  }
  void abort(const std::string& reason) override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    if (!terminal(r_->status)) m_->fail_locked(*r_, "Aborted by AbortReq: " + reason, true);
  }

 private:
  std::shared_ptr<PrefillKvManager> m_;
  std::shared_ptr<Room> r_;
};

PrefillKvManager::PrefillKvManager(DisaggOptions opts, scheduler::KvBufferView kv, int dp_rank, int dp_size,
                                   std::unique_ptr<TransferBackend> backend, AttnTp attn_tp)
    : opts_(std::move(opts)),
      kv_(std::move(kv)),
      layout_(KvLayout::of(kv_)),
      dp_rank_(dp_rank),
      dp_size_(dp_size),
      attn_tp_(attn_tp),
      backend_(std::move(backend)),
      last_gc_(Clock::now()) {
  layout_.attn_tp_size = attn_tp_.size;
  layout_.mla = attn_tp_.mla;
}

PrefillKvManager::~PrefillKvManager() { stop(); }

void PrefillKvManager::stop() { channel_.stop(); }

Status PrefillKvManager::start(const std::string& host, const std::string& bootstrap_host, int bootstrap_port) {
  PDSERVE_RETURN_IF_ERROR(channel_.start(
      host, [this](Frames&& f) { on_message(std::move(f)); }, [this] { on_tick(); }));
  // SGLang's registration body (system DP ranks, this rank's attention-TP place), one pipeline stage.
  const nlohmann::json reg = {{"role", "Prefill"},       {"attn_tp_size", attn_tp_.size}, {"attn_tp_rank", attn_tp_.rank},
                              {"attn_dp_size", 1},       {"attn_dp_rank", 0},         {"pp_size", 1},
                              {"pp_rank", 0},            {"system_dp_size", dp_size_}, {"system_dp_rank", dp_rank_},
                              {"rank_ip", host},         {"rank_port", channel_.port()}};
  const std::string url = "http://" + bootstrap_addr(bootstrap_host, bootstrap_port) + "/route";
  http::Client client;
  auto r = client.request("PUT", url, reg.dump(), bootstrap_headers(opts_.api_key), std::chrono::seconds(5));
  if (!r || r->status != 200)
    return make_error(ErrorCode::kIo, "prefill DP{} could not register with the bootstrap server at {}: {}", dp_rank_,
                      url, r ? r->body : r.error().message());
  log::info("Prefill DP{} attention TP{} KV transfer endpoint {} registered (backend {}, layout {})", dp_rank_, attn_tp_.rank,
            channel_.endpoint(), backend_->name(), layout_.to_string());
  return ok_status();
}

std::unique_ptr<scheduler::KvSender> PrefillKvManager::make_sender(const std::string& rid, const scheduler::BootstrapInfo& b,
                                                                   int64_t num_pages) {
  if (b.host == kFakeBootstrapHost) return std::make_unique<FakeSender>();
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = rooms_[b.room];
  if (!slot) {
    slot = std::make_shared<Room>();
    slot->room = b.room;
  }
  if (slot->has_sender && slot->owner_gone) {
    // The tombstone of an ended request: a new request with this room starts afresh.
    slot = std::make_shared<Room>();
    slot->room = b.room;
  }
  Room& r = *slot;
  if (r.has_sender && !r.owner_gone) {
    // Two live requests with one room would mix their pages: refuse the newcomer only.
    auto dup = std::make_shared<Room>();
    dup->room = b.room;
    dup->status = KvPoll::kFailed;
    dup->failure = fmt::format("bootstrap_room {} is already in use by another request", b.room);
    dup->has_sender = true;
    return std::make_unique<Sender>(shared_from_this(), dup);
  }
  r.has_sender = true;
  r.owner_gone = false;
  r.held = !opts_.test_hold_rid_prefix.empty() && rid.rfind(opts_.test_hold_rid_prefix, 0) == 0;
  r.num_pages = num_pages;
  r.created = Clock::now();
  check_ready_locked(r);
  return std::make_unique<Sender>(shared_from_this(), slot);
}

std::unique_ptr<scheduler::KvReceiver> PrefillKvManager::make_receiver(const std::string&, const scheduler::BootstrapInfo&) {
  return std::make_unique<FakeReceiver>();  // never used: a prefill server has no receivers
}

size_t PrefillKvManager::tombstones_locked() const {
  return static_cast<size_t>(std::count_if(rooms_.begin(), rooms_.end(), [](const auto& kv) { return is_tombstone(*kv.second); }));
}

size_t PrefillKvManager::tracked_rooms() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rooms_.size() - tombstones_locked();
}

size_t PrefillKvManager::failed_room_tombstones() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tombstones_locked();
}

KvPoll PrefillKvManager::poll(Room& r) {
  const auto now = Clock::now();
  if (r.status == KvPoll::kBootstrapping && seconds(now - r.created) > opts_.bootstrap_timeout_s) {
    fail_locked(r, fmt::format("Request {} timed out after {:.1f}s in KVPoll.Bootstrapping", r.room, opts_.bootstrap_timeout_s),
                false);
  } else if (r.status == KvPoll::kTransferring && r.last_sent && seconds(now - r.last_send_done) > opts_.waiting_timeout_s) {
    fail_locked(r, fmt::format("Request {} timed out after {:.1f}s waiting for the decode ({}) to acknowledge the KV", r.room,
                               opts_.waiting_timeout_s, sessions_of(r)), true);
  }
  return r.status;
}

void PrefillKvManager::fail_locked(Room& r, const std::string& why, bool tell_decode) {
  if (terminal(r.status)) return;
  r.status = KvPoll::kFailed;
  r.failure = why;
  r.failed_at = Clock::now();
  if (tell_decode)
    for (const auto& d : r.dests) channel_.post(d.session, {"FAIL", std::to_string(r.room), why});
}

void PrefillKvManager::check_ready_locked(Room& r) {
  if (!r.has_sender || r.status != KvPoll::kBootstrapping || r.required == 0 ||
      static_cast<int>(r.dests.size()) < r.required)
    return;
  for (const auto& d : r.dests)
    if (!d.dummy && static_cast<int64_t>(d.pages.size()) != r.num_pages)
      return fail_locked(r, fmt::format("the decode allocated {} pages, the prompt needs {}", d.pages.size(), r.num_pages), true);
  r.status = KvPoll::kWaitingForInput;
}

std::string PrefillKvManager::sessions_of(const Room& r) {
  std::string out;
  for (const auto& d : r.dests) out += (out.empty() ? "" : ", ") + d.session;
  return out;
}

void PrefillKvManager::on_message(Frames&& f) {
  if (f.empty()) return;
  const std::string& kind = f[0];
  if (kind == "REG" && f.size() >= 4) {
    const std::string& session = f[1];
    if (dropped_registrations_ < opts_.test_drop_registrations) {
      ++dropped_registrations_;
      log::warning("Test hook: ignoring the registration of decode {}", session);
      return;
    }
    std::string result = "OK";
    auto layout = [&]() -> Result<KvLayout> {
      try {
        return KvLayout::from_json(nlohmann::json::parse(f[2]));
      } catch (const std::exception& e) {
        return make_error(ErrorCode::kInvalidArgument, "bad KV layout in registration: {}", e.what());
      }
    }();
    Status st = layout ? check_layout(layout_, *layout) : Status(layout.error());
    if (st) st = backend_->open_peer(session, f[3]);
    if (!st) {
      result = st.error().message();
      log::error("Refused the registration of decode {}: {}", session, result);
    } else {
      log::info("Decode {} registered with prefill DP{} ({})", session, dp_rank_, layout->to_string());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      sessions_[session] = Session{!st.has_value(), st ? std::string() : result};
    }
    // A decode that misses this answer registers again (DecodeKvManager::kRegisterResend).
    if (auto sent = channel_.send_now(session, {"REGR", channel_.endpoint(), result}); !sent)
      log::warning("Cannot answer the registration of decode {}: {}", session, sent.error().message());
    return;
  }
  if (f.size() < 3) return;
  auto room_id = parse_u64(f[1], "room");
  if (!room_id) return;
  const std::string& session = f[2];
  std::lock_guard<std::mutex> lock(mu_);
  if (kind == "XFER" && f.size() >= 4) {
    auto sit = sessions_.find(session);
    if (sit == sessions_.end() || sit->second.failed) {
      const std::string why = sit == sessions_.end() ? "decode session " + session + " is not registered with this prefill rank"
                                                     : sit->second.failure;
      (void)channel_.send_now(session, {"FAIL", f[1], why});
      return;
    }
    auto pages = unpack_pages(f[3]);
    // required: how many decode ranks will ask for this room (their attention TP over ours);
    // dummy: this rank pairs with the decode but another prefill rank sends the KV.
    int required = 1;
    bool dummy = false;
    if (f.size() >= 6) {
      auto req = parse_u64(f[4], "required");
      required = req && *req >= 1 && *req <= 1024 ? static_cast<int>(*req) : 0;
      dummy = f[5] == "1";
    }
    auto& slot = rooms_[*room_id];
    if (!slot) {
      slot = std::make_shared<Room>();
      slot->room = *room_id;
      slot->created = Clock::now();
    }
    Room& r = *slot;
    if (r.status == KvPoll::kFailed) {
      // The prefill gave this room up before the decode's pages arrived: tell it now.
      if (r.has_sender)
        log::warning("Decode {} sent the pages of room {} after this prefill gave it up ({}); told it", session, r.room,
                     r.failure);
      (void)channel_.send_now(session, {"FAIL", f[1], r.failure});
      return;
    }
    r.info = true;
    auto dit = std::find_if(r.dests.begin(), r.dests.end(), [&](const Dest& d) { return d.session == session; });
    if (dit == r.dests.end()) dit = r.dests.insert(r.dests.end(), Dest{session, {}, false, false});
    dit->dummy = dummy;
    dit->pages = pages && !dummy ? std::move(*pages) : std::vector<int32_t>{};
    if (!pages) {
      fail_locked(r, pages.error().message(), true);
    } else if (required == 0 || (r.required != 0 && r.required != required)) {
      fail_locked(r, fmt::format("bad or inconsistent XFER for room {}: 'required' is {} after {} (the number of decode ranks "
                                 "pairing with this prefill rank, 1..1024)",
                                 r.room, f.size() >= 6 ? f[4] : std::string("1"), r.required), true);
    } else {
      r.required = required;
      check_ready_locked(r);
    }
    return;
  }
  auto it = rooms_.find(*room_id);
  if (kind == "ABORT") {
    const std::string why = "Aborted by the decode: " + (f.size() > 3 ? f[3] : std::string());
    if (it == rooms_.end()) {
      // Remember it: the request may still arrive here.
      auto r = std::make_shared<Room>();
      r->room = *room_id;
      r->created = Clock::now();
      r->status = KvPoll::kFailed;
      r->failure = why;
      r->failed_at = r->created;
      rooms_[*room_id] = r;
    } else if (!terminal(it->second->status)) {
      // Not echoed to the decode rank that aborted; other decode ranks of this room are told.
      fail_locked(*it->second, why, false);
      for (const auto& d : it->second->dests)
        if (d.session != session) channel_.post(d.session, {"FAIL", f[1], why});
    }
    return;
  }
  if (kind == "ACK" && it != rooms_.end()) {
    Room& r = *it->second;
    if (r.status != KvPoll::kTransferring || !r.last_sent) return;
    bool all = true;
    for (auto& d : r.dests) {
      if (d.session == session) d.acked = true;
      all = all && (d.dummy || d.acked);
    }
    if (all) {
      r.status = KvPoll::kSuccess;
      stats_.record(seconds(Clock::now() - r.first_send), r.bytes);
    }
  }
}

void PrefillKvManager::transfer(std::shared_ptr<Room> room, std::vector<int32_t> src, int64_t first, bool last,
                                std::optional<scheduler::TransferMetadata> meta) {
  // (session, destination pages) of every decode rank that gets the bytes.
  std::vector<std::pair<std::string, std::vector<int32_t>>> targets;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Room& r = *room;
    if (r.status != KvPoll::kTransferring) return;
    if (first < 0 || first + static_cast<int64_t>(src.size()) > r.num_pages) {
      fail_locked(r, fmt::format("pages [{}, {}) are outside the {} destination pages", first, first + static_cast<int64_t>(src.size()),
                                 r.num_pages), true);
      return;
    }
    for (const auto& d : r.dests) {
      if (d.dummy) continue;
      auto sit = sessions_.find(d.session);
      if (sit == sessions_.end() || sit->second.failed) {
        fail_locked(r, "decode session " + d.session + " failed: " + (sit == sessions_.end() ? "unknown" : sit->second.failure), true);
        return;
      }
    }
    if (opts_.test_failure_prob > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < opts_.test_failure_prob) {
      fail_locked(r, "injected transfer failure (DISAGGREGATION_TEST_FAILURE_PROB)", true);
      return;
    }
    if (r.held) {
      // Test hook: the room stays Transferring (inflight) with its deadline running, as if the
      // bytes were still on their way.
      if (last && !r.last_sent) {
        r.last_sent = true;
        r.last_send_done = Clock::now();
        log::info("Holding the KV of room {} (PDSERVE_DISAGGREGATION_TEST_HOLD_RID_PREFIX)", r.room);
      }
      return;
    }
    for (const auto& d : r.dests)
      if (!d.dummy)
        targets.emplace_back(d.session, std::vector<int32_t>(d.pages.begin() + first,
                                                             d.pages.begin() + first + static_cast<int64_t>(src.size())));
    if (targets.empty()) {
      // Every decode rank that paired with this rank gets the KV from another prefill
      // attention-TP rank (same prompt, same latent cache): nothing to send, nobody will ack.
      if (last) r.status = KvPoll::kSuccess;
      return;
    }
  }
  // The pages stay owned by the request until this room ends, so reading them unlocked is safe.
  const std::string room_str = std::to_string(room->room);
  int64_t bytes = 0;
  // A decode rank's failure fails the room; the others are told (FAIL) by fail_locked.
  auto failed = [&](const std::string& session, const Status& st) {
    std::lock_guard<std::mutex> lock(mu_);
    // The session is gone: later transfers to it fail at once instead of each waiting.
    sessions_[session] = Session{true, st.error().message()};
    fail_locked(*room, "KV transfer to " + session + " failed: " + st.error().message(), false);
    for (const auto& d : room->dests)
      if (d.session != session) channel_.post(d.session, {"FAIL", room_str, room->failure});
  };
  const std::string done_metadata = last ? metadata_to_json(meta.value_or(scheduler::TransferMetadata{})) : std::string();
  for (const auto& [session, dst] : targets) {
    for (const auto& blocks : plan_chunks(merge_runs(src, dst), layout_, opts_.max_chunk_bytes)) {
      auto payload = backend_->write(session, blocks);
      Status st = payload ? ok_status() : Status(payload.error());
      if (st && (!payload->empty() || std::string_view(backend_->name()) == "tcp")) {
        st = channel_.send_now(session, {"DATA", room_str, pack_blocks(blocks), std::move(*payload)});
      }
      for (const auto& b : blocks) bytes += b.len;
      if (!st) return failed(session, st);
    }
    if (last) {
      Status st = channel_.send_now(session, {"DONE", room_str, done_metadata, channel_.endpoint()});
      if (!st) return failed(session, st);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  room->bytes += bytes;
  if (last) {
    room->last_sent = true;
    room->last_send_done = room->last_done_sent = Clock::now();
    room->done_metadata = done_metadata;
    room->done_sent = true;
  }
}

void PrefillKvManager::resend_unacknowledged_done_locked(Clock::time_point now) {
  for (auto& [id, slot] : rooms_) {
    Room& r = *slot;
    if (r.status != KvPoll::kTransferring || !r.done_sent || now - r.last_done_sent < kAckResend) continue;
    // Warned once per room: a decode that is gone would otherwise log every kAckResend until the
    // waiting timeout, for each of its rooms.
    const bool first = r.last_done_sent == r.last_send_done;
    r.last_done_sent = now;
    for (const auto& d : r.dests) {
      if (d.dummy || d.acked) continue;
      if (first)
        log::warning("No acknowledgement of room {}'s KV from decode {} after {} ms; sending DONE again every {} ms "
                     "until it comes or the waiting timeout",
                     r.room, d.session, kAckResend.count(), kAckResend.count());
      channel_.post(d.session, {"DONE", std::to_string(r.room), r.done_metadata, channel_.endpoint()});
    }
  }
}

void PrefillKvManager::on_tick() {
  const auto now = Clock::now();
  if (now - last_gc_ < std::chrono::milliseconds(200)) return;
  last_gc_ = now;
  // Collect rooms nobody will ask about again: their request ended, or the decode's info (or
  // abort) was never claimed by a request within the bootstrap timeout. Rooms that failed before
  // the decode's pages came are kept as tombstones (header comment) for the retention time.
  std::lock_guard<std::mutex> lock(mu_);
  resend_unacknowledged_done_locked(now);
  size_t tombstones = 0;
  for (auto it = rooms_.begin(); it != rooms_.end();) {
    const Room& r = *it->second;
    const bool expired = seconds(now - r.created) > opts_.bootstrap_timeout_s;
    const bool collectable = (r.owner_gone && (r.info || expired)) || (!r.has_sender && expired);
    const bool tombstone =
        is_tombstone(r) && seconds(now - r.failed_at) < failed_room_retention_s() && tombstones < kMaxTombstones;
    if (collectable && tombstone) ++tombstones;
    if (collectable && !tombstone)
      it = rooms_.erase(it);
    else
      ++it;
  }
}

}  // namespace pdserve::disagg
