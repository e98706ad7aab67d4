// The nodes of one multi-node server (`--dist-init-addr HOST:PORT --nnodes N --node-rank R`):
// rendezvous at the init address, then membership for the server's whole life.
//
// Node 0 listens at the init address; every other node connects (retrying until node 0 is up),
// says who it is, and waits. Node 0 checks each join (node rank in range and not taken, the same
// --nnodes, the same configuration fingerprint — a mismatch is refused with a message naming both
// values) and, once all N are in, sends everyone the topology. A node that has not joined by the
// deadline is reported by rank.
//
// The TCP connections then stay open as the membership channel (a star around node 0): both ends
// send a heartbeat every interval, so a node whose process died (the connection closes) or hangs
// (the heartbeats stop) is noticed within the heartbeat timeout, and `on_lost` fires once with the
// node and the reason. An orderly `leave()` tells the peers why instead of letting them guess.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace pdserve::parallel {

struct NodeGroupOptions {
  std::string init_addr;  // "HOST:PORT" (IPv4 name or address)
  int nnodes = 1;
  int node_rank = 0;
  std::chrono::milliseconds join_timeout{300000};
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{10000};
  // Settings every node must agree on (model, sizes, mode); compared verbatim at join.
  std::string fingerprint;
};

struct NodeInfo {
  int node_rank = 0;
  std::string hostname;
  int64_t pid = 0;
  nlohmann::json attrs;  // what the node tells the others (e.g. its rank service address)
  std::string describe() const;  // "node 1 (host n2, pid 1234)"
};

// Why a peer is gone: it left in order (`orderly`, with its reason) or was lost.
struct NodeEvent {
  NodeInfo node;
  std::string reason;
  bool orderly = false;
};

class NodeGroup {
 public:
  using LostHandler = std::function<void(const NodeEvent&)>;

  // Rendezvous: blocks until the topology is known (all nodes joined) or the join timeout passed.
  // `self_attrs` goes to every node in the topology. `on_lost` runs on a membership thread, at most
  // once per group, for the first peer that leaves or is lost.
  static Result<std::unique_ptr<NodeGroup>> join(const NodeGroupOptions& opts, nlohmann::json self_attrs,
                                                 LostHandler on_lost);
  ~NodeGroup();
  NodeGroup(const NodeGroup&) = delete;
  NodeGroup& operator=(const NodeGroup&) = delete;

  const std::vector<NodeInfo>& nodes() const { return nodes_; }  // indexed by node rank
  int node_rank() const { return opts_.node_rank; }
  int nnodes() const { return opts_.nnodes; }

  // Orderly exit: tells the peers `reason`, then closes. Idempotent; the destructor leaves too.
  void leave(const std::string& reason);

 private:
  struct Peer;
  NodeGroup() = default;
  // This node's own entry (with its attrs) is in nodes_ already; these fill in the others.
  Status rendezvous_as_leader();
  Status rendezvous_as_member();
  void start_membership();
  void watch(Peer& p);
  void report(const NodeEvent& e);

  NodeGroupOptions opts_;
  std::vector<NodeInfo> nodes_;
  std::vector<std::unique_ptr<Peer>> peers_;  // node 0: every other node; others: node 0
  LostHandler on_lost_;
  std::atomic<bool> reported_{false};
  std::atomic<bool> leaving_{false};
  std::thread heartbeat_;
  std::mutex stop_mu_;
  bool stopped_ = false;
};

// This machine's IPv4 address on the route to `init_addr`'s host: what the other nodes can reach
// this node at (a UDP connect, no packet sent).
Result<std::string> local_ip_toward(const std::string& init_addr);

// Splits "HOST:PORT" (the port 1..65535); an error names the flag value.
Result<std::pair<std::string, int>> parse_host_port(const std::string& addr);

}  // namespace pdserve::parallel
