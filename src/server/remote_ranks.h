// The two ends of a multi-node server's request path (DESIGN §3): node 0's front reaches the DP
// ranks of the other nodes through RemoteRanks (one RankHandle per remote rank); each other node
// runs a RankService that hands the messages to its schedulers and sends their outputs, control
// replies and statistics back. Both ride on ZeroMQ (disagg::ControlChannel: one PULL socket per
// node, ordered per peer, sends that fail fast when the peer is gone).
//
// Nothing is lost when a node goes away: node 0 remembers every request it sent to a node until the
// final output comes back, and node_lost() finishes each still open with a 503 naming the node;
// control commands waiting for the node answer {"success": false}.
#pragma once

#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "disagg/control_channel.h"
#include "scheduler/scheduler.h"
#include "server/rank_handle.h"

namespace pdserve::server {

// Node 0's side.
class RemoteRanks {
 public:
  using OutputSink = std::function<void(scheduler::RequestOutput&&)>;
  // Binds the reply socket on `host` ("host:port" of it is endpoint()).
  static Result<std::unique_ptr<RemoteRanks>> start(const std::string& host, OutputSink sink);
  ~RemoteRanks();

  const std::string& endpoint() const { return channel_.endpoint(); }
  // Node `node_rank` runs the DP ranks `dp_ranks`. Returns their handles (owned here), usable
  // once connect_node() gave the node's address.
  std::vector<RankHandle*> add_node(int node_rank, const std::vector<int>& dp_ranks);
  // After the rendezvous: the node's RankService listens at `endpoint`.
  void connect_node(int node_rank, const std::string& node_name, const std::string& endpoint);
  // The node is gone: its open requests finish with 503 and its pending control commands fail.
  void node_lost(int node_rank, const std::string& why);
  // A command for a whole node (not one of its ranks), answered by its RankService's node handler.
  std::future<nlohmann::json> node_control(int node_rank, const std::string& command, nlohmann::json args);
  // Shutdown: every open request finishes with 503 and `message`.
  void finish_all(const std::string& message);
  void stop();

 private:
  class Remote;
  struct Node {
    std::string name, endpoint;
    bool alive = true;
    std::string lost_reason;
  };
  RemoteRanks() = default;
  void on_message(disagg::Frames&& f);
  void submit(int node, int dp_rank, scheduler::GenerateInput in);
  void abort(int node, int dp_rank, const std::string& prefix, bool all, const std::string& message);
  // dp_rank -1: a node command ("node_control"), else a rank's ("control").
  std::future<nlohmann::json> control(int node, int dp_rank, const std::string& command, nlohmann::json args);
  scheduler::SchedulerStats stats(int dp_rank) const;
  void fail_request(const std::string& rid, const std::string& message);

  disagg::ControlChannel channel_;
  OutputSink sink_;
  std::vector<std::unique_ptr<Remote>> handles_;
  mutable std::mutex mu_;
  std::map<int, Node> nodes_;
  std::unordered_map<std::string, std::pair<int, int>> open_;  // rid -> (node, dp rank)
  std::unordered_map<uint64_t, std::pair<int, std::promise<nlohmann::json>>> controls_;  // id -> (node, reply)
  std::unordered_map<int, scheduler::SchedulerStats> stats_;
  uint64_t next_control_ = 0;
};

// Every other node's side.
class RankService {
 public:
  // Binds on `host`; `ranks` are this node's schedulers (global DP ranks in their configs).
  // Node commands (e.g. the expert recorder's start/stop/dump) are answered by `on_node_command`,
  // on a thread of its own.
  using NodeHandler = std::function<nlohmann::json(const std::string& command, const nlohmann::json& args)>;
  static Result<std::unique_ptr<RankService>> start(const std::string& host, std::vector<scheduler::Scheduler*> ranks,
                                                    NodeHandler on_node_command);
  ~RankService();

  const std::string& endpoint() const { return channel_.endpoint(); }
  // Where outputs go (node 0's RemoteRanks endpoint); set before the schedulers start.
  void set_front(const std::string& endpoint);
  // The schedulers' output sink.
  void deliver(scheduler::RequestOutput&& out);
  void stop();

 private:
  RankService() = default;
  void on_message(disagg::Frames&& f);
  void on_tick();
  scheduler::Scheduler* find(int dp_rank) const;

  disagg::ControlChannel channel_;
  std::vector<scheduler::Scheduler*> ranks_;
  NodeHandler node_handler_;  // fixed before the I/O thread starts
  std::string front_;  // I/O thread only (set through the channel's task queue)
  // I/O thread only: control replies still being computed, and when statistics were last sent.
  std::vector<std::pair<uint64_t, std::future<nlohmann::json>>> pending_;
  std::chrono::steady_clock::time_point last_stats_{};
};

}  // namespace pdserve::server
