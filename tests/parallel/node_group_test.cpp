// NodeGroup: rendezvous and membership between "nodes" that are threads of this process on
// loopback, plus raw sockets playing misbehaving nodes (junk, silence, abrupt close).
#include "parallel/node_group.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <future>
#include <optional>

#include <gtest/gtest.h>

#include "server/server_process.h"  // free_port()

namespace pdserve::parallel {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;
using GroupResult = Result<std::unique_ptr<NodeGroup>>;
using test::free_port;

std::string addr_of(int port) { return "127.0.0.1:" + std::to_string(port); }

// Fast timeouts: the whole suite should take a few seconds.
NodeGroupOptions options(int port, int nnodes, int rank, std::chrono::milliseconds join_timeout = 5s) {
  NodeGroupOptions o;
  o.init_addr = addr_of(port);
  o.nnodes = nnodes;
  o.node_rank = rank;
  o.join_timeout = join_timeout;
  o.heartbeat_interval = 100ms;
  o.heartbeat_timeout = 800ms;  // loose enough for a loaded 2-core build machine
  o.fingerprint = "model=tiny tp=2 dp=2";
  return o;
}

// Collects on_lost events; must outlive the groups that report to it.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<NodeEvent> events;

  NodeGroup::LostHandler handler() {
    return [this](const NodeEvent& e) {
      std::lock_guard lk(mu);
      events.push_back(e);
      cv.notify_all();
    };
  }
  // The first event, or nullopt if none came within `timeout`.
  std::optional<NodeEvent> wait(std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu);
    if (!cv.wait_for(lk, timeout, [&] { return !events.empty(); })) return std::nullopt;
    return events.front();
  }
  size_t count() {
    std::lock_guard lk(mu);
    return events.size();
  }
};

std::future<GroupResult> join_async(const NodeGroupOptions& o, json attrs, NodeGroup::LostHandler h = nullptr) {
  return std::async(std::launch::async, [o, attrs = std::move(attrs), h = std::move(h)] { return NodeGroup::join(o, attrs, h); });
}

std::string message(const GroupResult& r) { return r ? "ok" : r.error().message(); }
bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// A hand-driven TCP client at node 0's port: says whatever a test wants, or nothing.
class RawNode {
 public:
  explicit RawNode(int port) {
    for (int i = 0; i < 100 && fd_ < 0; ++i) {  // node 0 may still be binding
      fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(port));
      if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) break;
      ::close(fd_);
      fd_ = -1;
      std::this_thread::sleep_for(20ms);
    }
  }
  ~RawNode() { close(); }
  bool connected() const { return fd_ >= 0; }
  void send(const std::string& s) { ASSERT_EQ(::send(fd_, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size())); }
  void send_join(int rank, int nnodes, const std::string& fingerprint) {
    json node = {{"node_rank", rank}, {"hostname", "raw-host"}, {"pid", 4242}, {"attrs", {{"raw", true}}}};
    send(json{{"type", "join"}, {"nnodes", nnodes}, {"fingerprint", fingerprint}, {"node", node}}.dump() + "\n");
  }
  // The next line node 0 sends, or nullopt by the timeout / when it closes.
  std::optional<json> read(std::chrono::milliseconds timeout) {
    const auto deadline = SteadyClock::now() + timeout;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        json j = json::parse(buf_.substr(0, nl), nullptr, false);
        buf_.erase(0, nl + 1);
        return j;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now()).count();
      if (left <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char tmp[4096];
      const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n <= 0) return std::nullopt;
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  // The next message of `type` (heartbeats in between are skipped).
  std::optional<json> read_type(const std::string& type, std::chrono::milliseconds timeout) {
    const auto deadline = SteadyClock::now() + timeout;
    while (SteadyClock::now() < deadline) {
      auto j = read(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now()));
      if (!j) return std::nullopt;
      if (j->is_object() && j->value("type", "") == type) return j;
    }
    return std::nullopt;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

json attrs_for(int rank) { return {{"rank_service", "tcp://10.0.0." + std::to_string(rank) + ":7000"}, {"gpus", 8}}; }

TEST(NodeGroup, ThreeNodesJoinInAnyOrderAndShareOneTopology) {
  const int port = free_port();
  // Node 2 starts before node 0 (it retries until node 0 listens), node 1 after it.
  auto n2 = join_async(options(port, 3, 2), attrs_for(2));
  std::this_thread::sleep_for(300ms);
  auto n0 = join_async(options(port, 3, 0), attrs_for(0));
  std::this_thread::sleep_for(100ms);
  auto n1 = join_async(options(port, 3, 1), attrs_for(1));
  std::vector<GroupResult> groups;
  for (auto* f : {&n0, &n1, &n2}) {
    ASSERT_EQ(f->wait_for(5s), std::future_status::ready);
    groups.push_back(f->get());
  }
  for (int g = 0; g < 3; ++g) {
    ASSERT_TRUE(groups[static_cast<size_t>(g)]) << message(groups[static_cast<size_t>(g)]);
    const NodeGroup& group = **groups[static_cast<size_t>(g)];
    EXPECT_EQ(group.node_rank(), g);
    EXPECT_EQ(group.nnodes(), 3);
    ASSERT_EQ(group.nodes().size(), 3u);
    for (int r = 0; r < 3; ++r) {
      const NodeInfo& n = group.nodes()[static_cast<size_t>(r)];
      EXPECT_EQ(n.node_rank, r) << "as seen by node " << g;
      EXPECT_EQ(n.attrs, attrs_for(r)) << "as seen by node " << g;
      EXPECT_EQ(n.pid, static_cast<int64_t>(::getpid()));
      EXPECT_FALSE(n.hostname.empty());
      EXPECT_TRUE(contains(n.describe(), "node " + std::to_string(r))) << n.describe();
    }
  }
}

TEST(NodeGroup, SingleNodeNeedsNoRendezvousAndBadFlagsAreRefused) {
  auto one = NodeGroup::join(options(free_port(), 1, 0), attrs_for(0), nullptr);
  ASSERT_TRUE(one) << message(one);
  ASSERT_EQ((*one)->nodes().size(), 1u);
  EXPECT_EQ((*one)->nodes()[0].attrs, attrs_for(0));

  auto bad_rank = NodeGroup::join(options(free_port(), 2, 2), json::object(), nullptr);
  ASSERT_FALSE(bad_rank);
  EXPECT_TRUE(contains(message(bad_rank), "--node-rank")) << message(bad_rank);
  auto bad_n = NodeGroup::join(options(free_port(), 0, 0), json::object(), nullptr);
  ASSERT_FALSE(bad_n);
  EXPECT_TRUE(contains(message(bad_n), "--nnodes")) << message(bad_n);
}

TEST(NodeGroup, ParseHostPort) {
  auto a = parse_host_port("10.1.2.3:5000");
  ASSERT_TRUE(a) << a.error().message();
  EXPECT_EQ(a->first, "10.1.2.3");
  EXPECT_EQ(a->second, 5000);
  auto b = parse_host_port("node-a.cluster:65535");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->first, "node-a.cluster");
  EXPECT_EQ(b->second, 65535);
  EXPECT_EQ(parse_host_port("h:1")->second, 1);

  for (const std::string bad : {"", "nohost", ":5000", "host:", "host:0", "host:65536", "host:5000x", "host: 5000", "host:+5000",
                                "host:-1", "host:99999999999999999999"}) {
    auto r = parse_host_port(bad);
    ASSERT_FALSE(r) << "'" << bad << "' was accepted";
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(contains(r.error().message(), "--dist-init-addr")) << r.error().message();
  }
  EXPECT_TRUE(contains(parse_host_port("host:5000x").error().message(), "'5000x'"));
  EXPECT_TRUE(contains(parse_host_port("nohost").error().message(), "'nohost'"));
}

TEST(NodeGroup, LocalIpToward) {
  auto ip = local_ip_toward("127.0.0.1:5000");
  ASSERT_TRUE(ip) << ip.error().message();
  EXPECT_EQ(*ip, "127.0.0.1");
  auto by_name = local_ip_toward("localhost:5000");
  ASSERT_TRUE(by_name) << by_name.error().message();
  EXPECT_EQ(*by_name, "127.0.0.1");

  auto no_port = local_ip_toward("127.0.0.1");
  ASSERT_FALSE(no_port);
  EXPECT_TRUE(contains(no_port.error().message(), "HOST:PORT"));
  auto unknown = local_ip_toward("no-such-host.invalid:5000");
  ASSERT_FALSE(unknown);
  EXPECT_TRUE(contains(unknown.error().message(), "no-such-host.invalid")) << unknown.error().message();
}

TEST(NodeGroup, LeaderAloneTimesOutNamingTheMissingRanks) {
  const auto start = SteadyClock::now();
  auto r = NodeGroup::join(options(free_port(), 3, 0, 500ms), json::object(), nullptr);
  const auto took = SteadyClock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(message(r), "node rank(s) 1, 2 did not join")) << message(r);
  EXPECT_GE(took, 450ms);
  EXPECT_LT(took, 2s);
}

TEST(NodeGroup, TimeoutNamesOnlyTheMissingRankAndTellsTheJoinedOnes) {
  const int port = free_port();
  auto n0 = join_async(options(port, 3, 0, 800ms), json::object());
  auto n1 = join_async(options(port, 3, 1, 5s), json::object());
  ASSERT_EQ(n0.wait_for(3s), std::future_status::ready);
  auto r0 = n0.get();
  ASSERT_FALSE(r0);
  EXPECT_TRUE(contains(message(r0), "node rank(s) 2 did not join")) << message(r0);
  // Node 1 hears node 0's reason rather than waiting out its own, longer timeout.
  ASSERT_EQ(n1.wait_for(2s), std::future_status::ready);
  auto r1 = n1.get();
  ASSERT_FALSE(r1);
  EXPECT_TRUE(contains(message(r1), "node rank(s) 2 did not join")) << message(r1);
}

TEST(NodeGroup, MemberWithoutLeaderTimesOutNamingTheAddress) {
  const int port = free_port();
  const auto start = SteadyClock::now();
  auto r = NodeGroup::join(options(port, 2, 1, 500ms), json::object(), nullptr);
  const auto took = SteadyClock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(message(r), addr_of(port))) << message(r);
  EXPECT_TRUE(contains(message(r), "could not reach node 0")) << message(r);
  EXPECT_GE(took, 450ms);
  EXPECT_LT(took, 2s);
}

// Both sides of a refused join fail, and every message names both values.
void expect_refused(const GroupResult& r, const std::vector<std::string>& needles) {
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
  for (const auto& n : needles) EXPECT_TRUE(contains(message(r), n)) << "'" << n << "' not in: " << message(r);
}

TEST(NodeGroup, DuplicateNodeRankIsRefusedEverywhere) {
  const int port = free_port();
  auto n0 = join_async(options(port, 3, 0), json::object());
  auto first = join_async(options(port, 3, 1), json::object());
  std::this_thread::sleep_for(300ms);  // the first node 1 is in before the second arrives
  RawNode dup(port);
  ASSERT_TRUE(dup.connected());
  dup.send_join(1, 3, options(port, 3, 1).fingerprint);
  for (auto* f : {&n0, &first}) ASSERT_EQ(f->wait_for(3s), std::future_status::ready);
  const std::vector<std::string> both = {"--node-rank 1 joined twice", "pid " + std::to_string(::getpid()), "raw-host, pid 4242"};
  expect_refused(n0.get(), both);
  expect_refused(first.get(), both);
  auto reply = dup.read_type("reject", 2s);
  ASSERT_TRUE(reply);
  EXPECT_TRUE(contains(reply->value("error", ""), "joined twice")) << reply->dump();
}

TEST(NodeGroup, NnodesMismatchIsRefusedOnBothSides) {
  const int port = free_port();
  auto n0 = join_async(options(port, 3, 0), json::object());
  auto n1 = join_async(options(port, 2, 1), json::object());
  for (auto* f : {&n0, &n1}) ASSERT_EQ(f->wait_for(3s), std::future_status::ready);
  const std::vector<std::string> both = {"--nnodes differs", "node 0 has 3", "has 2"};
  expect_refused(n0.get(), both);
  expect_refused(n1.get(), both);
}

TEST(NodeGroup, FingerprintMismatchIsRefusedOnBothSides) {
  const int port = free_port();
  auto o1 = options(port, 2, 1);
  o1.fingerprint = "model=other tp=4 dp=1";
  auto n0 = join_async(options(port, 2, 0), json::object());
  auto n1 = join_async(o1, json::object());
  for (auto* f : {&n0, &n1}) ASSERT_EQ(f->wait_for(3s), std::future_status::ready);
  const std::vector<std::string> both = {"settings differ", "[model=tiny tp=2 dp=2]", "[model=other tp=4 dp=1]"};
  expect_refused(n0.get(), both);
  expect_refused(n1.get(), both);
}

TEST(NodeGroup, JunkConnectionsDoNotBreakTheRendezvous) {
  const int port = free_port();
  auto n0 = join_async(options(port, 2, 0), json::object());
  // Silent ones first: node 0 must not wait on them before hearing node 1.
  RawNode silent(port), half_line(port), closes(port), garbage(port), wrong_types(port), bad_node(port), no_node(port);
  for (auto* r : {&silent, &half_line, &closes, &garbage, &wrong_types, &bad_node, &no_node}) ASSERT_TRUE(r->connected());
  half_line.send("{\"type\": \"jo");
  closes.close();
  garbage.send("\x01\x02 GET / HTTP/1.1\r\n\r\n");
  wrong_types.send("{\"type\": 5, \"nnodes\": \"two\", \"fingerprint\": [1], \"node\": 7}\n");
  bad_node.send("{\"type\": \"join\", \"nnodes\": 2, \"node\": {\"node_rank\": \"one\"}}\n");
  no_node.send("{\"type\": \"join\", \"nnodes\": 2}\n");
  const auto start = SteadyClock::now();
  auto n1 = join_async(options(port, 2, 1), json::object());
  for (auto* f : {&n0, &n1}) ASSERT_EQ(f->wait_for(4s), std::future_status::ready);
  auto r0 = n0.get(), r1 = n1.get();
  ASSERT_TRUE(r0) << message(r0);
  ASSERT_TRUE(r1) << message(r1);
  EXPECT_LT(SteadyClock::now() - start, 2s);  // far below the 10 s a silent connection may take
  EXPECT_EQ((*r0)->nodes()[1].node_rank, 1);
}

// Node 0 and node 1 as NodeGroups, and node 2 as a raw socket that joined properly.
struct TwoAndRaw {
  Recorder lost0, lost1;
  std::unique_ptr<NodeGroup> g0, g1;
  std::unique_ptr<RawNode> raw;

  void start(int port, std::chrono::milliseconds heartbeat_timeout = 800ms) {
    auto o0 = options(port, 3, 0);
    o0.heartbeat_timeout = heartbeat_timeout;
    auto n0 = join_async(o0, json::object(), lost0.handler());
    auto n1 = join_async(options(port, 3, 1), json::object(), lost1.handler());
    raw = std::make_unique<RawNode>(port);
    ASSERT_TRUE(raw->connected());
    raw->send_join(2, 3, options(port, 3, 2).fingerprint);
    auto topo = raw->read_type("topology", 4s);
    ASSERT_TRUE(topo);
    ASSERT_EQ(topo->at("nodes").size(), 3u);
    auto r0 = n0.get(), r1 = n1.get();
    ASSERT_TRUE(r0) << message(r0);
    ASSERT_TRUE(r1) << message(r1);
    g0 = std::move(*r0);
    g1 = std::move(*r1);
  }
};

TEST(NodeGroup, MemberThatStopsHeartbeatsIsLostOnce) {
  TwoAndRaw t;
  ASSERT_NO_FATAL_FAILURE(t.start(free_port()));
  // Heartbeats keep it in for longer than the timeout...
  for (int i = 0; i < 10; ++i) {
    t.raw->send("{\"type\":\"ping\"}\n");
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(t.lost0.count(), 0u) << t.lost0.events.front().reason;
  // ...and silence gets it reported within the timeout (800 ms), though the socket stays open.
  const auto silent_since = SteadyClock::now();
  auto e = t.lost0.wait(2s);
  ASSERT_TRUE(e);
  const auto took = SteadyClock::now() - silent_since;
  EXPECT_EQ(e->node.node_rank, 2);
  EXPECT_EQ(e->node.hostname, "raw-host");
  EXPECT_FALSE(e->orderly);
  EXPECT_TRUE(contains(e->reason, "no heartbeat")) << e->reason;
  EXPECT_GE(took, 600ms);
  EXPECT_LT(took, 2000ms);

  // on_lost fires once per group: neither node 2 closing now nor node 1 leaving reports again.
  t.raw->close();
  t.g1->leave("later event");
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(t.lost0.count(), 1u);
  EXPECT_EQ(t.lost1.count(), 0u);  // node 1 left itself: not told about its own departure
}

TEST(NodeGroup, MemberWhoseConnectionClosesIsLostAtOnce) {
  TwoAndRaw t;
  ASSERT_NO_FATAL_FAILURE(t.start(free_port(), 10s));  // a report in time can only come from the close
  const auto closed_at = SteadyClock::now();
  t.raw->close();
  auto e = t.lost0.wait(2s);
  ASSERT_TRUE(e);
  EXPECT_LT(SteadyClock::now() - closed_at, 2s);
  EXPECT_EQ(e->node.node_rank, 2);
  EXPECT_FALSE(e->orderly);
  EXPECT_TRUE(contains(e->reason, "the process exited")) << e->reason;  // closed or reset
}

TEST(NodeGroup, MemberLeaveReachesNodeZeroAsOrderly) {
  TwoAndRaw t;
  ASSERT_NO_FATAL_FAILURE(t.start(free_port()));
  t.g1->leave("node 1 drained for maintenance");
  auto e = t.lost0.wait(2s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->node.node_rank, 1);
  EXPECT_TRUE(e->orderly);
  EXPECT_EQ(e->reason, "node 1 drained for maintenance");
  t.g1->leave("again");  // idempotent
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(t.lost0.count(), 1u);
}

TEST(NodeGroup, NodeZeroLeaveReachesEveryMember) {
  TwoAndRaw t;
  ASSERT_NO_FATAL_FAILURE(t.start(free_port()));
  t.g0->leave("node 0 is shutting down: SIGTERM");
  auto e = t.lost1.wait(2s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->node.node_rank, 0);
  EXPECT_TRUE(e->orderly);
  EXPECT_EQ(e->reason, "node 0 is shutting down: SIGTERM");
  auto bye = t.raw->read_type("bye", 2s);
  ASSERT_TRUE(bye);
  EXPECT_EQ(bye->value("reason", ""), "node 0 is shutting down: SIGTERM");
  EXPECT_EQ(t.lost0.count(), 0u);  // the node that left reports nothing
}

TEST(NodeGroup, DestroyingAGroupLeavesIt) {
  TwoAndRaw t;
  ASSERT_NO_FATAL_FAILURE(t.start(free_port()));
  t.g1.reset();
  auto e = t.lost0.wait(2s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->node.node_rank, 1);
  EXPECT_TRUE(e->orderly);
}

}  // namespace
}  // namespace pdserve::parallel
