// The multi-node part of ModelServer (DESIGN §3): node 0 owns the HTTP front and reaches the other
// nodes' DP ranks over ZeroMQ; every node watches the others through parallel::NodeGroup, and a
// lost node stops the whole server (with a clear answer to every open request) instead of leaving
// it hanging.
#include <cstdlib>

#include "base/logging.h"
#include "server/model_server.h"

namespace pdserve::server {

namespace {

// PDSERVE_NODE_HEARTBEAT_TIMEOUT (seconds, default 10): how long a silent node is given. A bad
// value fails at startup (as the disaggregation variables do) rather than being replaced quietly.
Result<std::chrono::milliseconds> heartbeat_timeout() {
  const char* v = std::getenv("PDSERVE_NODE_HEARTBEAT_TIMEOUT");
  if (!v || !*v) return std::chrono::milliseconds(10000);
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(s >= 0.5 && s <= 86400))
    return make_error(ErrorCode::kInvalidArgument, "PDSERVE_NODE_HEARTBEAT_TIMEOUT={} must be seconds in [0.5, 86400]", v);
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

}  // namespace

Status ModelServer::create_node_links() {
  for (auto& r : local_ranks_) ranks_.push_back(r.get());
  if (args_.nnodes == 1) return ok_status();
  PDSERVE_ASSIGN_OR_RETURN(node_ip_, parallel::local_ip_toward(args_.dist_init_addr));
  if (!is_front()) {
    std::vector<scheduler::Scheduler*> local;
    for (auto& s : schedulers_) local.push_back(s.get());
    auto on_node_command = [this](const std::string& command, const nlohmann::json& args) {
      if (command == "expert_record") return expert_record_node_command(experts_.get(), args);
      return nlohmann::json{{"success", false}, {"message", "unknown node command '" + command + "'"}};
    };
    PDSERVE_ASSIGN_OR_RETURN(service_, RankService::start(node_ip_, std::move(local), std::move(on_node_command)));
    return ok_status();
  }
  PDSERVE_ASSIGN_OR_RETURN(remote_, RemoteRanks::start(node_ip_, [this](scheduler::RequestOutput&& out) {
                             tm_->on_output(std::move(out));
                           }));
  const int per = static_cast<int>(args_.ranks_per_node());
  for (int node = 1; node < args_.nnodes; ++node) {
    std::vector<int> dp_ranks;
    for (int i = 0; i < per; ++i) dp_ranks.push_back(node * per + i);
    for (RankHandle* h : remote_->add_node(node, dp_ranks)) ranks_.push_back(h);
  }
  return ok_status();
}

Status ModelServer::join_nodes() {
  parallel::NodeGroupOptions o;
  o.init_addr = args_.dist_init_addr;
  o.nnodes = static_cast<int>(args_.nnodes);
  o.node_rank = static_cast<int>(args_.node_rank);
  o.join_timeout = std::chrono::milliseconds(static_cast<int64_t>(args_.dist_timeout * 1000));
  PDSERVE_ASSIGN_OR_RETURN(o.heartbeat_timeout, heartbeat_timeout());
  o.fingerprint = args_.node_fingerprint();
  const nlohmann::json attrs = {{"rank_endpoint", is_front() ? remote_->endpoint() : service_->endpoint()},
                                {"first_dp_rank", args_.first_local_rank()},
                                {"dp_ranks", args_.ranks_per_node()}};
  auto group = parallel::NodeGroup::join(o, attrs, [this](const parallel::NodeEvent& e) { on_node_event(e); });
  if (!group) return group.error();
  group_ = std::move(*group);
  const auto& nodes = group_->nodes();
  if (is_front()) {
    for (size_t r = 1; r < nodes.size(); ++r)
      remote_->connect_node(static_cast<int>(r), nodes[r].describe(), nodes[r].attrs.value("rank_endpoint", ""));
  } else {
    service_->set_front(nodes[0].attrs.value("rank_endpoint", ""));
  }
  return ok_status();
}

Status ModelServer::wait_for_remote_ranks() {
  // Every remote rank answers once its scheduler loop runs: the server is ready only then.
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(args_.dist_timeout * 1000));
  std::vector<std::pair<int, std::future<nlohmann::json>>> replies;
  for (size_t i = static_cast<size_t>(args_.ranks_per_node()); i < ranks_.size(); ++i)
    replies.emplace_back(ranks_[i]->dp_rank(), ranks_[i]->control("get_load", {}));
  for (auto& [rank, f] : replies) {
    if (f.wait_until(deadline) != std::future_status::ready)
      return make_error(ErrorCode::kIo, "DP rank {} (node {}) did not answer within {} s", rank, rank / args_.ranks_per_node(),
                        args_.dist_timeout);
    const nlohmann::json j = f.get();
    if (j.is_object() && j.contains("success") && !j.value("success", true))
      return make_error(ErrorCode::kIo, "DP rank {} is not reachable: {}", rank, j.value("message", ""));
  }
  log::info("All {} DP ranks on {} nodes are running", ranks_.size(), args_.nnodes);
  return ok_status();
}

void ModelServer::on_node_event(const parallel::NodeEvent& e) {
  const std::string who = e.node.describe();
  if (is_front()) {
    // The server cannot serve without every node (their DP ranks and experts): stop, answering
    // every open request, rather than hang.
    if (e.orderly) log::error("{} left ({}); the server cannot run without it: shutting down", who, e.reason);
    else log::error("{} is lost: {}; shutting down the server", who, e.reason);
    if (remote_) remote_->node_lost(e.node.node_rank, e.reason);
    failed_ = true;
    shutdown(fmt::format("{} is lost", who));
    return;
  }
  if (e.orderly) {
    log::info("Node 0 ({}) stopped ({}); shutting down", who, e.reason);
  } else {
    log::error("Node 0 ({}) is lost: {}; shutting down", who, e.reason);
    failed_ = true;
  }
  shutdown(fmt::format("node 0 is gone: {}", e.reason));
}

}  // namespace pdserve::server
