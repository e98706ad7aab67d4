#include "server/remote_ranks.h"

#include <future>

#include "base/logging.h"
#include "server/rank_wire.h"

namespace pdserve::server {

using json = nlohmann::json;

namespace {

json failure(const std::string& message) { return {{"success", false}, {"message", message}}; }

disagg::Frames frames(const char* type, const json& payload) { return {type, payload.dump()}; }

}  // namespace

// ---------------------------------------------------------------------------------- node 0 side

class RemoteRanks::Remote final : public RankHandle {
 public:
  Remote(RemoteRanks* owner, int node, int dp) : owner_(owner), node_(node), dp_(dp) {}
  int dp_rank() const override { return dp_; }
  void submit(scheduler::GenerateInput in) override { owner_->submit(node_, dp_, std::move(in)); }
  void abort(const std::string& prefix, bool all, const std::string& message) override {
    owner_->abort(node_, dp_, prefix, all, message);
  }
  std::future<json> control(const std::string& command, json args) override {
    return owner_->control(node_, dp_, command, std::move(args));
  }
  scheduler::SchedulerStats stats() const override { return owner_->stats(dp_); }

 private:
  RemoteRanks* owner_;
  int node_, dp_;
};

Result<std::unique_ptr<RemoteRanks>> RemoteRanks::start(const std::string& host, OutputSink sink) {
  auto r = std::unique_ptr<RemoteRanks>(new RemoteRanks());
  r->sink_ = std::move(sink);
  RemoteRanks* self = r.get();
  PDSERVE_RETURN_IF_ERROR(r->channel_.start(host, [self](disagg::Frames&& f) { self->on_message(std::move(f)); }, {}));
  return r;
}

RemoteRanks::~RemoteRanks() { stop(); }

void RemoteRanks::stop() { channel_.stop(); }

std::vector<RankHandle*> RemoteRanks::add_node(int node_rank, const std::vector<int>& dp_ranks) {
  std::lock_guard lk(mu_);
  nodes_[node_rank] = Node{fmt::format("node {}", node_rank), "", false, "it has not joined yet"};
  std::vector<RankHandle*> out;
  for (int dp : dp_ranks) {
    handles_.push_back(std::make_unique<Remote>(this, node_rank, dp));
    out.push_back(handles_.back().get());
  }
  return out;
}

void RemoteRanks::connect_node(int node_rank, const std::string& node_name, const std::string& endpoint) {
  std::lock_guard lk(mu_);
  nodes_[node_rank] = Node{node_name, endpoint, true, ""};
}

void RemoteRanks::finish_all(const std::string& message) {
  std::vector<std::string> rids;
  {
    std::lock_guard lk(mu_);
    for (const auto& [rid, where] : open_) rids.push_back(rid);
  }
  for (const auto& rid : rids) fail_request(rid, message);
}

void RemoteRanks::submit(int node, int dp_rank, scheduler::GenerateInput in) {
  const std::string rid = in.rid;
  std::string endpoint, lost;
  {
    std::lock_guard lk(mu_);
    const Node& n = nodes_.at(node);
    open_[rid] = {node, dp_rank};
    if (n.alive) endpoint = n.endpoint;
    else lost = fmt::format("{} is lost: {}", n.name, n.lost_reason);
  }
  if (!lost.empty()) return fail_request(rid, lost);
  channel_.post(endpoint, frames("submit", {{"rank", dp_rank}, {"input", to_wire(in)}}),
                [this, rid](const std::string& err) { fail_request(rid, err); });
}

void RemoteRanks::abort(int node, int dp_rank, const std::string& prefix, bool all, const std::string& message) {
  std::string endpoint;
  {
    std::lock_guard lk(mu_);
    const Node& n = nodes_.at(node);
    if (!n.alive) return;  // its requests were already finished by node_lost()
    endpoint = n.endpoint;
  }
  channel_.post(endpoint, frames("abort", {{"rank", dp_rank}, {"prefix", prefix}, {"all", all}, {"message", message}}));
}

std::future<json> RemoteRanks::control(int node, int dp_rank, const std::string& command, json args) {
  std::promise<json> p;
  auto f = p.get_future();
  std::string endpoint;
  uint64_t id = 0;
  {
    std::lock_guard lk(mu_);
    const Node& n = nodes_.at(node);
    if (!n.alive) {
      p.set_value(failure(fmt::format("DP rank {} is on {}, which is lost: {}", dp_rank, n.name, n.lost_reason)));
      return f;
    }
    endpoint = n.endpoint;
    id = next_control_++;
    controls_.emplace(id, std::make_pair(node, std::move(p)));
  }
  channel_.post(endpoint,
                frames(dp_rank < 0 ? "node_control" : "control",
                       {{"id", id}, {"rank", dp_rank}, {"command", command}, {"args", std::move(args)}}),
                [this, id](const std::string& err) {
                  std::lock_guard lk(mu_);
                  if (auto it = controls_.find(id); it != controls_.end()) {
                    it->second.second.set_value(failure(err));
                    controls_.erase(it);
                  }
                });
  return f;
}

std::future<json> RemoteRanks::node_control(int node_rank, const std::string& command, json args) {
  return control(node_rank, -1, command, std::move(args));
}

scheduler::SchedulerStats RemoteRanks::stats(int dp_rank) const {
  std::lock_guard lk(mu_);
  auto it = stats_.find(dp_rank);
  return it == stats_.end() ? scheduler::SchedulerStats{} : it->second;
}

void RemoteRanks::fail_request(const std::string& rid, const std::string& message) {
  int dp = 0;
  {
    std::lock_guard lk(mu_);
    auto it = open_.find(rid);
    if (it == open_.end()) return;  // already finished
    dp = it->second.second;
    open_.erase(it);
  }
  scheduler::RequestOutput out;
  out.rid = rid;
  out.finished = true;
  out.finish_reason = scheduler::abort_reason(message, 503);
  out.dp_rank = dp;
  sink_(std::move(out));
}

void RemoteRanks::node_lost(int node_rank, const std::string& why) {
  std::vector<std::string> rids;
  std::string name;
  {
    std::lock_guard lk(mu_);
    auto nit = nodes_.find(node_rank);
    if (nit == nodes_.end() || !nit->second.alive) return;
    nit->second.alive = false;
    nit->second.lost_reason = why;
    name = nit->second.name;
    for (const auto& [rid, where] : open_)
      if (where.first == node_rank) rids.push_back(rid);
    for (auto it = controls_.begin(); it != controls_.end();) {
      if (it->second.first != node_rank) {
        ++it;
        continue;
      }
      it->second.second.set_value(failure(fmt::format("{} is lost: {}", name, why)));
      it = controls_.erase(it);
    }
  }
  for (const auto& rid : rids) fail_request(rid, fmt::format("the request's DP rank was on {}, which is lost: {}", name, why));
}

void RemoteRanks::on_message(disagg::Frames&& f) {
  if (f.size() != 2) return;
  json j = json::parse(f[1], nullptr, false);
  if (!j.is_object()) return log::warning("multi-node: dropped a malformed message of type '{}'", f[0]);
  if (f[0] == "output") {
    auto out = request_output_from_wire(j);
    if (!out) return log::warning("multi-node: {}", out.error().message());
    {
      std::lock_guard lk(mu_);
      auto it = open_.find(out->rid);
      if (it == open_.end()) return;  // finished already (e.g. failed when its node was declared lost)
      if (out->finished) open_.erase(it);
    }
    sink_(std::move(*out));
  } else if (f[0] == "control_reply") {
    std::lock_guard lk(mu_);
    if (auto it = controls_.find(j.value("id", uint64_t{0})); it != controls_.end()) {
      it->second.second.set_value(j.value("reply", json()));
      controls_.erase(it);
    }
  } else if (f[0] == "stats") {
    auto s = scheduler_stats_from_wire(j.value("stats", json()));
    if (!s) return log::warning("multi-node: {}", s.error().message());
    std::lock_guard lk(mu_);
    stats_[j.value("rank", -1)] = *s;
  }
}

// ------------------------------------------------------------------------------ other nodes' side

Result<std::unique_ptr<RankService>> RankService::start(const std::string& host, std::vector<scheduler::Scheduler*> ranks,
                                                       NodeHandler on_node_command) {
  auto s = std::unique_ptr<RankService>(new RankService());
  s->ranks_ = std::move(ranks);
  s->node_handler_ = std::move(on_node_command);
  RankService* self = s.get();
  PDSERVE_RETURN_IF_ERROR(s->channel_.start(
      host, [self](disagg::Frames&& f) { self->on_message(std::move(f)); }, [self] { self->on_tick(); }));
  return s;
}

RankService::~RankService() { stop(); }

void RankService::stop() { channel_.stop(); }

scheduler::Scheduler* RankService::find(int dp_rank) const {
  for (auto* s : ranks_)
    if (s->config().dp_rank == dp_rank) return s;
  return nullptr;
}

void RankService::set_front(const std::string& endpoint) {
  channel_.run([this, endpoint] { front_ = endpoint; });
}

void RankService::deliver(scheduler::RequestOutput&& out) {
  channel_.run([this, msg = frames("output", to_wire(out))]() mutable {
    // Lost only if node 0 is gone, and then this node shuts down too.
    if (auto st = channel_.send_now(front_, std::move(msg)); !st)
      log::warning("multi-node: an output could not reach node 0: {}", st.error().message());
  });
}

void RankService::on_message(disagg::Frames&& f) {
  if (f.size() != 2) return;
  json j = json::parse(f[1], nullptr, false);
  if (!j.is_object()) return log::warning("multi-node: dropped a malformed message of type '{}'", f[0]);
  const int rank = j.value("rank", -1);
  scheduler::Scheduler* s = find(rank);
  if (f[0] == "submit") {
    auto in = generate_input_from_wire(j.value("input", json()));
    if (!in) return log::warning("multi-node: {}", in.error().message());
    if (!s) {
      // Node 0's layout and ours disagree (cannot happen after a good rendezvous): answer, not drop.
      scheduler::RequestOutput out;
      out.rid = in->rid;
      out.finished = true;
      out.finish_reason = scheduler::abort_reason(fmt::format("DP rank {} is not on this node", rank), 500);
      return deliver(std::move(out));
    }
    s->submit(std::move(*in));
  } else if (f[0] == "abort") {
    if (s) s->abort(j.value("prefix", ""), j.value("all", false), j.value("message", "aborted"));
  } else if (f[0] == "node_control") {
    const uint64_t id = j.value("id", uint64_t{0});
    NodeHandler h = node_handler_;
    const std::string command = j.value("command", "");
    const json args = j.value("args", json::object());
    pending_.emplace_back(id, std::async(std::launch::async, [h, command, args] {
                            return h ? h(command, args) : failure("this node answers no node commands");
                          }));
  } else if (f[0] == "control") {
    const uint64_t id = j.value("id", uint64_t{0});
    if (!s) {
      (void)channel_.send_now(front_, frames("control_reply", {{"id", id}, {"reply", failure("no such DP rank on this node")}}));
      return;
    }
    pending_.emplace_back(id, s->control(j.value("command", ""), j.value("args", json::object())));
  }
}

void RankService::on_tick() {
  // Control replies are computed by the scheduler loops; send each once ready, in any order.
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->second.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      ++it;
      continue;
    }
    (void)channel_.send_now(front_, frames("control_reply", {{"id", it->first}, {"reply", it->second.get()}}));
    it = pending_.erase(it);
  }
  const auto now = std::chrono::steady_clock::now();
  if (front_.empty() || now - last_stats_ < std::chrono::milliseconds(500)) return;
  last_stats_ = now;
  for (auto* s : ranks_)
    (void)channel_.send_now(front_, frames("stats", {{"rank", s->config().dp_rank}, {"stats", to_wire(s->stats())}}));
}

}  // namespace pdserve::server
