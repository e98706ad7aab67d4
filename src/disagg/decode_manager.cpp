#include "disagg/decode_manager.h"

#include <algorithm>

#include <fmt/format.h>

#include "base/logging.h"
#include "disagg/bootstrap_server.h"
#include "disagg/fake_endpoints.h"
#include "http/client.h"

namespace pdserve::disagg {

using scheduler::KvPoll;

class DecodeKvManager::Receiver final : public scheduler::KvReceiver {
 public:
  Receiver(std::shared_ptr<DecodeKvManager> m, std::shared_ptr<Room> r) : m_(std::move(m)), r_(std::move(r)) {}
  ~Receiver() override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    if (!terminal(r_->status)) m_->fail_locked(*r_, "the request ended on the decode", true);
    auto it = m_->rooms_.find(r_->room);
    if (it != m_->rooms_.end() && it->second == r_) m_->rooms_.erase(it);
  }
  KvPoll poll() override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    return m_->poll(*r_);
  }
  std::string failure() const override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    return r_->failure;
  }
  void init(std::vector<int32_t> pages) override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    Room& r = *r_;
    if (r.status != KvPoll::kWaitingForInput) return;
    r.sorted_pages = pages;
    std::sort(r.sorted_pages.begin(), r.sorted_pages.end());
    r.pages = std::move(pages);
    m_->send_xfer_locked(r_);
  }
  scheduler::TransferMetadata metadata() const override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    return r_->meta;
  }
  void abort(const std::string& reason) override {
    std::lock_guard<std::mutex> lock(m_->mu_);
    m_->fail_locked(*r_, "Aborted by AbortReq: " + reason, true);
  }

 private:
  std::shared_ptr<DecodeKvManager> m_;
  std::shared_ptr<Room> r_;
};

DecodeKvManager::DecodeKvManager(DisaggOptions opts, scheduler::KvBufferView kv, int dp_rank,
                                 std::unique_ptr<TransferBackend> backend, AttnTp attn_tp)
    : opts_(std::move(opts)),
      kv_(std::move(kv)),
      layout_(KvLayout::of(kv_)),
      dp_rank_(dp_rank),
      attn_tp_(attn_tp),
      backend_(std::move(backend)) {
  layout_.attn_tp_size = attn_tp_.size;
  layout_.mla = attn_tp_.mla;
}

DecodeKvManager::~DecodeKvManager() { stop(); }

Status DecodeKvManager::start(const std::string& host) {
  PDSERVE_ASSIGN_OR_RETURN(descriptor_, backend_->local_descriptor());
  PDSERVE_RETURN_IF_ERROR(channel_.start(host, [this](Frames&& f) { on_message(std::move(f)); }, {}));
  handshake_thread_ = std::thread([this] { handshake_loop(); });
  heartbeat_thread_ = std::thread([this] { heartbeat_loop(); });
  log::info("Decode DP{} attention TP{} KV transfer endpoint {} (backend {}, layout {})", dp_rank_, attn_tp_.rank,
            channel_.endpoint(), backend_->name(), layout_.to_string());
  return ok_status();
}

void DecodeKvManager::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (handshake_thread_.joinable()) handshake_thread_.join();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  channel_.stop();
}

std::unique_ptr<scheduler::KvSender> DecodeKvManager::make_sender(const std::string&, const scheduler::BootstrapInfo&, int64_t) {
  return std::make_unique<FakeSender>();  // never used: a decode server has no senders
}

std::unique_ptr<scheduler::KvReceiver> DecodeKvManager::make_receiver(const std::string&, const scheduler::BootstrapInfo& b) {
  if (b.host == kFakeBootstrapHost) return std::make_unique<FakeReceiver>();
  auto room = std::make_shared<Room>();
  room->room = b.room;
  room->addr = bootstrap_addr(b.host, b.port);
  room->created = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  if (rooms_.count(b.room)) {
    room->status = KvPoll::kFailed;
    room->failure = fmt::format("bootstrap_room {} is already in use by another request", b.room);
    return std::make_unique<Receiver>(shared_from_this(), room);
  }
  rooms_[b.room] = room;
  handshakes_.push_back(room);
  cv_.notify_all();
  return std::make_unique<Receiver>(shared_from_this(), room);
}

KvPoll DecodeKvManager::poll(Room& r) {
  const auto now = Clock::now();
  if (r.status == KvPoll::kBootstrapping && seconds(now - r.created) > opts_.bootstrap_timeout_s) {
    fail_locked(r, fmt::format("Request {} timed out after {:.1f}s in KVPoll.Bootstrapping (prefill bootstrap server {})", r.room,
                               opts_.bootstrap_timeout_s, r.addr), false);
  } else if (r.status == KvPoll::kTransferring && seconds(now - r.init_time) > opts_.waiting_timeout_s) {
    fail_locked(r, fmt::format("Request {} timed out after {:.1f}s in KVPoll.Transferring waiting for the KV from {}", r.room,
                               opts_.waiting_timeout_s, r.endpoint), true);
  }
  return r.status;
}

void DecodeKvManager::fail_locked(Room& r, const std::string& why, bool tell_prefill) {
  if (terminal(r.status)) return;
  r.status = KvPoll::kFailed;
  r.failure = why;
  if (tell_prefill && r.xfer_sent)
    for (const auto& t : r.targets) channel_.post(t.endpoint, {"ABORT", std::to_string(r.room), channel_.endpoint(), why});
}

void DecodeKvManager::send_xfer_locked(const std::shared_ptr<Room>& room) {
  Room& r = *room;
  r.status = KvPoll::kTransferring;
  r.init_time = Clock::now();
  r.xfer_sent = true;
  // Raw manager pointer: tasks on the manager's own threads must never hold its last reference
  // (its destructor joins them); the channel runs tasks only while the manager lives.
  DecodeKvManager* m = this;
  for (const auto& t : r.targets) {
    const std::string pages = t.dummy ? std::string() : pack_pages(r.pages);
    const int required = t.dummy ? 1 : r.dests_per_real_rank;
    channel_.post(t.endpoint,
                  {"XFER", std::to_string(r.room), channel_.endpoint(), pages, std::to_string(required), t.dummy ? "1" : "0"},
                  [m, room](const std::string& err) {
                    std::lock_guard<std::mutex> lock(m->mu_);
                    m->on_xfer_unreachable_locked(room, err);
                  });
  }
}

void DecodeKvManager::on_xfer_unreachable_locked(const std::shared_ptr<Room>& room, const std::string& err) {
  Room& r = *room;
  if (r.relooked_up && r.status == KvPoll::kBootstrapping) return;  // another target's failure: retry under way
  if (r.status != KvPoll::kTransferring || r.relooked_up) {
    fail_locked(r, "cannot send the destination pages: " + err, true);
    return;
  }
  log::warning("Cannot send the destination pages of room {} to the prefill at {} ({}): looking its ranks up again", r.room,
               r.addr, err);
  prefills_.erase(r.addr);  // every later request looks the ranks up afresh too
  r.relooked_up = true;
  r.xfer_sent = false;  // nothing reached the old ranks: no ABORT for them
  r.status = KvPoll::kBootstrapping;
  r.created = Clock::now();  // the bootstrap deadline runs again for the new lookup
  r.targets.clear();
  r.endpoint.clear();
  handshakes_.push_back(room);
  cv_.notify_all();
}

void DecodeKvManager::update_rooms_locked(const std::string& addr) {
  auto pit = prefills_.find(addr);
  if (pit == prefills_.end()) return;
  for (auto& [id, r] : rooms_) {
    if (r->addr != addr || r->targets.empty() || r->status != KvPoll::kBootstrapping) continue;
    // Ready once every prefill rank it pairs with accepted our registration.
    bool ready = true;
    for (auto& t : r->targets) {
      auto cit = pit->second.conns.find({r->group, t.tp_rank});
      if (cit == pit->second.conns.end() || cit->second.state == ConnState::kPending) {
        ready = false;
      } else if (cit->second.state == ConnState::kFailed) {
        fail_locked(*r, cit->second.failure, false);
        ready = false;
        break;
      } else {
        t.endpoint = cit->second.endpoint;
      }
    }
    if (ready) {
      r->endpoint = r->targets.front().endpoint;
      r->status = KvPoll::kWaitingForInput;
      if (r->relooked_up && !r->pages.empty()) send_xfer_locked(r);  // its pages were allocated already
    }
  }
}

void DecodeKvManager::lose_prefill(const std::string& addr, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  log::error("{}", why);
  prefills_.erase(addr);  // a restarted prefill is looked up afresh
  for (auto& [id, r] : rooms_)
    if (r->addr == addr) fail_locked(*r, why, false);
}

void DecodeKvManager::handshake_loop() {
  for (;;) {
    std::shared_ptr<Room> room;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Timed, so that pending registrations are looked at also while no handshake comes.
      cv_.wait_for(lock, kRegisterResend / 2, [&] { return stopping_ || !handshakes_.empty(); });
      if (stopping_) return;
    }
    // Every turn, not only when idle: under a steady stream of handshakes an idle-only check
    // would never run. Cheap (a scan of this decode's connections; each resends at most every
    // kRegisterResend).
    resend_pending_registrations();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (handshakes_.empty()) continue;
      room = handshakes_.front();
      handshakes_.pop_front();
      if (room->status != KvPoll::kBootstrapping) continue;
    }
    handshake(room);
  }
}

void DecodeKvManager::handshake(const std::shared_ptr<Room>& room) {
  const std::string addr = room->addr;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(std::min(opts_.bootstrap_timeout_s, 5.0) * 1000));
  http::Client client;
  auto fail = [&](const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_locked(*room, why, false);
  };
  int dp_size = 0, prefill_tp = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = prefills_.find(addr);
    if (it != prefills_.end()) dp_size = it->second.dp_size, prefill_tp = it->second.attn_tp_size;
  }
  if (dp_size == 0) {
    auto r = client.request("GET", "http://" + addr + "/route?engine_rank=-1&target_dp_group=-1&target_pp_rank=-1", {},
                            bootstrap_headers(opts_.api_key), timeout);
    if (!r) return fail(fmt::format("cannot reach the prefill bootstrap server at {}: {}", addr, r.error().message()));
    if (r->status != 200) return fail(fmt::format("the prefill bootstrap server at {} answered {}: {}", addr, r->status, r->body));
    try {
      const auto topo = nlohmann::json::parse(r->body);
      dp_size = topo.at("prefill_dp_size").get<int>();
      prefill_tp = topo.value("prefill_attn_tp_size", 1);
    } catch (const std::exception& e) {
      return fail(fmt::format("bad topology from the prefill bootstrap server at {}: {}", addr, e.what()));
    }
    if (dp_size <= 0 || prefill_tp <= 0)
      return fail(fmt::format("the prefill bootstrap server at {} reports dp size {}, attention TP size {}", addr, dp_size, prefill_tp));
    std::lock_guard<std::mutex> lock(mu_);
    prefills_[addr].dp_size = dp_size;
    prefills_[addr].attn_tp_size = prefill_tp;
  }
  // SGLang's pairing: both sides pick DP rank bootstrap_room % dp_size, so no message is needed;
  // within the group, the attention-TP ranks of attn_tp_targets.
  const int group = static_cast<int>(room->room % static_cast<uint64_t>(dp_size));
  auto targets = attn_tp_targets(attn_tp_.size, attn_tp_.rank, prefill_tp);
  if (!targets) return fail(fmt::format("cannot pair with the prefill at {}: {}", addr, targets.error().message()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    room->group = group;
    room->dests_per_real_rank = targets->dests_per_real_rank;
    room->targets.clear();
    for (size_t i = 0; i < targets->ranks.size(); ++i) room->targets.push_back(Target{targets->ranks[i], "", i > 0});
  }
  for (const int tp_rank : targets->ranks) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& p = prefills_[addr];
      auto cit = p.conns.find({group, tp_rank});
      if (cit != p.conns.end()) {
        if (cit->second.state == ConnState::kFailed) {
          // Fail this request with the reason, and let the next one try to register again.
          fail_locked(*room, cit->second.failure, false);
          p.conns.erase(cit);
          return;
        }
        continue;  // ready, or pending until its REGR arrives
      }
    }
    auto r = client.request("GET", fmt::format("http://{}/route?engine_rank={}&target_dp_group={}&target_pp_rank=0", addr, tp_rank, group),
                            {}, bootstrap_headers(opts_.api_key), timeout);
    if (!r) return fail(fmt::format("cannot reach the prefill bootstrap server at {}: {}", addr, r.error().message()));
    if (r->status != 200) return fail(fmt::format("the prefill bootstrap server at {} answered {}: {}", addr, r->status, r->body));
    std::string endpoint;
    try {
      const auto j = nlohmann::json::parse(r->body);
      endpoint = bootstrap_addr(j.at("rank_ip").get<std::string>(), j.at("rank_port").get<int>());
    } catch (const std::exception& e) {
      return fail(fmt::format("bad rank address from the prefill bootstrap server at {}: {}", addr, e.what()));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& c = prefills_[addr].conns[{group, tp_rank}];
      c.state = ConnState::kPending;
      c.endpoint = endpoint;
      c.registered_at = Clock::now();
    }
    post_registration(addr, endpoint);
  }
  std::lock_guard<std::mutex> lock(mu_);
  update_rooms_locked(addr);  // ready: now; pending: when the REGRs arrive
}

void DecodeKvManager::post_registration(const std::string& addr, const std::string& endpoint) {
  channel_.post(endpoint, {"REG", channel_.endpoint(), layout_.to_json().dump(), descriptor_},
                [this, addr, endpoint](const std::string& err) {
                  lose_prefill(addr, fmt::format("cannot register with prefill rank {} (bootstrap_addr: {}): {}", endpoint,
                                                 addr, err));
                });
}

void DecodeKvManager::resend_pending_registrations() {
  std::vector<std::pair<std::string, std::string>> resend;  // (bootstrap address, rank endpoint)
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    for (auto& [addr, p] : prefills_)
      for (auto& [key, c] : p.conns)
        if (c.state == ConnState::kPending && !c.endpoint.empty() && now - c.registered_at >= kRegisterResend) {
          c.registered_at = now;
          resend.emplace_back(addr, c.endpoint);
        }
  }
  for (const auto& [addr, endpoint] : resend) {
    log::warning("No registration reply from prefill rank {} (bootstrap_addr: {}) after {} ms; registering again", endpoint,
                 addr, kRegisterResend.count());
    post_registration(addr, endpoint);
  }
}

void DecodeKvManager::heartbeat_loop() {
  http::Client client;
  for (;;) {
    std::vector<std::string> addrs;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::duration<double>(opts_.heartbeat_interval_s), [&] { return stopping_; });
      if (stopping_) return;
      for (const auto& [addr, p] : prefills_) addrs.push_back(addr);
    }
    for (const auto& addr : addrs) {
      auto r = client.get("http://" + addr + "/health", std::chrono::milliseconds(2000));
      const bool ok = r && r->status == 200;
      int failures = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = prefills_.find(addr);
        if (it == prefills_.end()) continue;
        it->second.heartbeat_failures = ok ? 0 : it->second.heartbeat_failures + 1;
        failures = it->second.heartbeat_failures;
      }
      if (failures >= opts_.heartbeat_max_failure)
        lose_prefill(addr, fmt::format("Losing connection with prefill instance (bootstrap_addr: {})", addr));
    }
  }
}

void DecodeKvManager::on_message(Frames&& f) {
  if (f.size() < 3) return;
  const std::string& kind = f[0];
  if (kind == "REGR") {
    const std::string& endpoint = f[1];
    const bool ok = f[2] == "OK";
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [addr, p] : prefills_) {
      bool changed = false;
      for (auto& [key, c] : p.conns)
        if (c.endpoint == endpoint && c.state == ConnState::kPending) {
          c.state = ok ? ConnState::kReady : ConnState::kFailed;
          if (!ok) c.failure = fmt::format("prefill rank {} refused the registration: {}", endpoint, f[2]);
          changed = true;
        }
      if (changed) update_rooms_locked(addr);
    }
    return;
  }
  auto id = parse_u64(f[1], "room");
  if (!id) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = rooms_.find(*id);
  if (it == rooms_.end()) {
    // Ended here already. A failed or aborted room's prefill was told (ABORT); a DONE arriving now
    // is one the prefill sent again because our ACK was lost after the KV arrived: answer it.
    if (kind == "DONE" && f.size() >= 4) acknowledge(f[1], f[3]);
    return;
  }
  Room& r = *it->second;
  if (kind == "DONE" && r.status == KvPoll::kSuccess) return acknowledge(f[1], r.endpoint);  // a repeated DONE
  if (kind == "FAIL") {
    fail_locked(r, "the prefill reported: " + f[2], false);
    return;
  }
  if (r.status != KvPoll::kTransferring) return;
  if (kind == "DATA" && f.size() >= 4) {
    auto blocks = unpack_blocks(f[2]);
    if (!blocks) return fail_locked(r, blocks.error().message(), true);
    const int64_t page_bytes = layout_.bytes_per_page();
    for (const auto& b : *blocks) {
      // Never trust the peer with our memory: every byte must land in this room's pages.
      bool inside = b.dst_offset % page_bytes == 0 && b.len % page_bytes == 0 && b.len > 0;
      for (int64_t p = b.dst_offset / page_bytes; inside && p < (b.dst_offset + b.len) / page_bytes; ++p)
        inside = std::binary_search(r.sorted_pages.begin(), r.sorted_pages.end(), static_cast<int32_t>(p));
      if (!inside)
        return fail_locked(r, fmt::format("the prefill sent KV (layer {}, offset {}, {} bytes) outside the request's pages",
                                          b.layer, b.dst_offset, b.len), true);
    }
    if (auto st = backend_->apply(*blocks, f[3]); !st) return fail_locked(r, st.error().message(), true);
    r.bytes += static_cast<int64_t>(f[3].size());
  } else if (kind == "DONE") {
    auto meta = metadata_from_json(f[2]);
    if (!meta) return fail_locked(r, meta.error().message(), true);
    const int64_t expected = static_cast<int64_t>(r.pages.size()) * layout_.num_layers * layout_.bytes_per_page();
    if (std::string_view(backend_->name()) == "tcp" && r.bytes != expected)
      return fail_locked(r, fmt::format("incomplete KV: {} of {} bytes arrived before DONE", r.bytes, expected), true);
    r.meta = std::move(*meta);
    r.status = KvPoll::kSuccess;
    stats_.record(seconds(Clock::now() - r.init_time), r.bytes);
    acknowledge(f[1], r.endpoint);
  }
}

void DecodeKvManager::acknowledge(const std::string& room, const std::string& prefill_endpoint) {
  if (dropped_acks_ < opts_.test_drop_acks) {
    ++dropped_acks_;
    log::warning("Test hook: not acknowledging room {}", room);
    return;
  }
  channel_.post(prefill_endpoint, {"ACK", room, channel_.endpoint()});
}

}  // namespace pdserve::disagg
