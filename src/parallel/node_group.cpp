#include "parallel/node_group.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "base/logging.h"

namespace pdserve::parallel {

using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxLine = 1 << 20;  // a membership message is a few hundred bytes

std::string errno_text() { return std::strerror(errno); }

int ms_until(SteadyClock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1000));  // wake at least every second
}

Result<sockaddr_in> resolve(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0 || !res)
    return make_error(ErrorCode::kInvalidArgument, "cannot resolve --dist-init-addr host '{}': {}", host, gai_strerror(rc));
  sockaddr_in addr = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  ::freeaddrinfo(res);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

Status send_line(int fd, std::mutex& mu, const json& j) {
  std::string s = j.dump();
  s.push_back('\n');
  std::lock_guard lk(mu);
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(ErrorCode::kIo, "send: {}", errno_text());
    }
    off += static_cast<size_t>(n);
  }
  return ok_status();
}

// Appends what `fd` has to `buf` (one recv). False when the connection closed or failed (`err` says
// how) or the message grew past kMaxLine; true otherwise, also when nothing was there yet.
bool recv_some(int fd, std::string& buf, std::string& err) {
  char tmp[4096];
  const ssize_t n = ::recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
  if (n == 0) {
    err = "the connection closed (the process exited or the network failed)";
    return false;
  }
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) return true;
    err = "the connection failed (" + errno_text() + "): the process exited or the network failed";
    return false;
  }
  buf.append(tmp, static_cast<size_t>(n));
  if (buf.size() > kMaxLine) {
    err = "a membership message exceeded 1 MiB";
    return false;
  }
  return true;
}

// Takes one complete line out of `buf`, if there is one.
bool take_line(std::string& buf, std::string& line) {
  const auto nl = buf.find('\n');
  if (nl == std::string::npos) return false;
  line = buf.substr(0, nl);
  buf.erase(0, nl + 1);
  return true;
}

enum class ReadResult { kLine, kTimeout, kClosed };

// One '\n'-terminated message from `fd` (bytes past it stay in `buf`), by `deadline`.
ReadResult read_line(int fd, std::string& buf, std::string& line, SteadyClock::time_point deadline, std::string& err) {
  for (;;) {
    if (take_line(buf, line)) return ReadResult::kLine;
    if (SteadyClock::now() >= deadline) return ReadResult::kTimeout;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, ms_until(deadline));
    if (r < 0 && errno != EINTR) {
      err = errno_text();
      return ReadResult::kClosed;
    }
    if (r > 0 && !recv_some(fd, buf, err)) return ReadResult::kClosed;
  }
}

// A TCP connection to `addr`, or -1 with `err`. Non-blocking connect: a blocking one to a host that
// drops packets would wait the kernel's ~2 minutes whatever the join timeout says.
int connect_by(const sockaddr_in& addr, SteadyClock::time_point deadline, std::string& err) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    err = "socket: " + errno_text();
    return -1;
  }
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  if (rc != 0 && errno == EINPROGRESS) {
    for (;;) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, ms_until(deadline));
      if (rc < 0 && errno == EINTR) continue;
      if (rc != 0 || SteadyClock::now() >= deadline) break;
    }
    if (rc == 0) {
      err = "connect timed out";
      ::close(fd);
      return -1;
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (rc < 0) soerr = errno;
    else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
    if (soerr != 0) {
      err = std::strerror(soerr);
      ::close(fd);
      return -1;
    }
  } else if (rc != 0) {
    err = errno_text();
    ::close(fd);
    return -1;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

// Membership sockets: no Nagle delay on heartbeats, and a send that cannot proceed (a hung peer
// whose receive buffer filled up) gives up after `timeout` instead of blocking leave() forever.
void tune_socket(int fd, std::chrono::milliseconds timeout) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

std::string node_name() {
  // Under SLURM the step knows its node's name; several "nodes" may share one host.
  if (const char* n = std::getenv("SLURMD_NODENAME"); n && *n) return n;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

// A string field of a message, or `fallback`: json::value() would throw on a field of another
// type, and anyone can connect to node 0's port and send anything.
std::string text(const json& j, const char* key, const char* fallback) {
  if (!j.is_object()) return fallback;
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

json to_json(const NodeInfo& n) {
  return {{"node_rank", n.node_rank}, {"hostname", n.hostname}, {"pid", n.pid}, {"attrs", n.attrs}};
}

NodeInfo node_from_json(const json& j) {
  NodeInfo n;
  n.node_rank = j.at("node_rank").get<int>();
  n.hostname = j.at("hostname").get<std::string>();
  n.pid = j.at("pid").get<int64_t>();
  n.attrs = j.value("attrs", json::object());
  return n;
}

}  // namespace

std::string NodeInfo::describe() const { return fmt::format("node {} ({}, pid {})", node_rank, hostname, pid); }

Result<std::pair<std::string, int>> parse_host_port(const std::string& addr) {
  const auto colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return make_error(ErrorCode::kInvalidArgument, "--dist-init-addr must be HOST:PORT, got '{}'", addr);
  const std::string host = addr.substr(0, colon), port_s = addr.substr(colon + 1);
  // Digits only: strtol alone would take " 80" or "+80".
  const bool digits = !port_s.empty() && port_s.size() <= 5 &&
                      std::all_of(port_s.begin(), port_s.end(), [](char c) { return c >= '0' && c <= '9'; });
  const long port = digits ? std::strtol(port_s.c_str(), nullptr, 10) : 0;
  if (port < 1 || port > 65535)
    return make_error(ErrorCode::kInvalidArgument, "--dist-init-addr port must be 1..65535, got '{}'", port_s);
  return std::make_pair(host, static_cast<int>(port));
}

Result<std::string> local_ip_toward(const std::string& init_addr) {
  PDSERVE_ASSIGN_OR_RETURN(auto hp, parse_host_port(init_addr));
  PDSERVE_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(hp.first, hp.second));
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(ErrorCode::kIo, "socket: {}", errno_text());
  sockaddr_in local{};
  socklen_t len = sizeof local;
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  const std::string err = ok ? "" : errno_text();
  ::close(fd);
  if (!ok) return make_error(ErrorCode::kIo, "no route to --dist-init-addr {}: {}", init_addr, err);
  char buf[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf);
  return std::string(buf);
}

struct NodeGroup::Peer {
  int fd = -1;
  NodeInfo info;
  std::mutex send_mu;
  std::string buf;
  std::thread reader;
  ~Peer() {
    if (fd >= 0) ::close(fd);
  }
};

Result<std::unique_ptr<NodeGroup>> NodeGroup::join(const NodeGroupOptions& opts, json self_attrs, LostHandler on_lost) {
  if (opts.nnodes < 1) return make_error(ErrorCode::kInvalidArgument, "--nnodes must be at least 1, got {}", opts.nnodes);
  if (opts.node_rank < 0 || opts.node_rank >= opts.nnodes)
    return make_error(ErrorCode::kInvalidArgument, "--node-rank must be in [0, {}), got {}", opts.nnodes, opts.node_rank);
  auto g = std::unique_ptr<NodeGroup>(new NodeGroup());
  g->opts_ = opts;
  g->on_lost_ = std::move(on_lost);
  g->nodes_.resize(static_cast<size_t>(opts.nnodes));
  g->nodes_[static_cast<size_t>(opts.node_rank)] =
      NodeInfo{opts.node_rank, node_name(), static_cast<int64_t>(::getpid()), self_attrs};
  if (opts.nnodes > 1) {
    PDSERVE_RETURN_IF_ERROR(opts.node_rank == 0 ? g->rendezvous_as_leader() : g->rendezvous_as_member());
    g->start_membership();
  }
  return g;
}

Status NodeGroup::rendezvous_as_leader() {
  PDSERVE_ASSIGN_OR_RETURN(auto hp, parse_host_port(opts_.init_addr));
  PDSERVE_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(hp.first, hp.second));
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) return make_error(ErrorCode::kIo, "socket: {}", errno_text());
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{lfd};
  const int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // A backlog with room for stray connections too: a full accept queue drops a real node's SYN,
  // which costs it the kernel's 1 s retransmit.
  const int backlog = std::max(opts_.nnodes * 2, 128);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(lfd, backlog) != 0)
    return make_error(ErrorCode::kIo, "node 0 cannot listen on --dist-init-addr {}: {} (node 0 must run on the host it names)",
                      opts_.init_addr, errno_text());
  log::info("Waiting for {} more node(s) at {} (--nnodes {}, timeout {} s)", opts_.nnodes - 1, opts_.init_addr, opts_.nnodes,
            opts_.join_timeout.count() / 1000.0);
  const auto deadline = SteadyClock::now() + opts_.join_timeout;
  // Misconfiguration and timeouts fail the whole server at once: every node that joined hears why.
  auto fail = [&](ErrorCode code, const std::string& why, int extra_fd, std::mutex* extra_mu) -> Status {
    const json reject{{"type", "reject"}, {"error", why}};
    if (extra_fd >= 0) (void)send_line(extra_fd, *extra_mu, reject);
    for (auto& q : peers_) (void)send_line(q->fd, q->send_mu, reject);
    return make_error(code, "rendezvous at {} failed: {}", opts_.init_addr, why);
  };
  // Connections that have not said who they are yet. They are polled together with the listening
  // socket, so one that says nothing (a port scanner, a stray client) holds up no one; it is
  // dropped after kHelloTimeout.
  constexpr auto kHelloTimeout = std::chrono::seconds(10);
  struct Pending {
    std::unique_ptr<Peer> peer;
    SteadyClock::time_point until;
  };
  std::vector<Pending> pending;
  std::vector<bool> joined(static_cast<size_t>(opts_.nnodes), false);
  joined[0] = true;
  for (;;) {
    if (static_cast<int>(peers_.size()) == opts_.nnodes - 1) break;
    const auto now = SteadyClock::now();
    if (now >= deadline) {
      std::string missing;
      for (int r = 1; r < opts_.nnodes; ++r)
        if (!joined[static_cast<size_t>(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      return fail(ErrorCode::kIo,
                  fmt::format("node rank(s) {} did not join within {} s (--nnodes {})", missing,
                              opts_.join_timeout.count() / 1000.0, opts_.nnodes),
                  -1, nullptr);
    }
    std::erase_if(pending, [&](const Pending& c) { return now >= c.until; });
    std::vector<pollfd> fds{{lfd, POLLIN, 0}};
    for (const auto& c : pending) fds.push_back({c.peer->fd, POLLIN, 0});
    for (const auto& q : peers_) fds.push_back({q->fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), ms_until(deadline)) <= 0) continue;

    // Joined nodes say nothing until the topology: readable means gone. Free the rank, so that a
    // node restarted by its launcher can join again.
    for (size_t i = peers_.size(); i-- > 0;) {
      if (!fds[1 + pending.size() + i].revents) continue;
      std::string err;
      if (recv_some(peers_[i]->fd, peers_[i]->buf, err)) continue;
      log::warning("{} left before all nodes joined ({}); waiting for node rank {} to join again", peers_[i]->info.describe(), err,
                   peers_[i]->info.node_rank);
      joined[static_cast<size_t>(peers_[i]->info.node_rank)] = false;
      nodes_[static_cast<size_t>(peers_[i]->info.node_rank)] = NodeInfo{};
      peers_.erase(peers_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    std::vector<std::unique_ptr<Peer>> hellos;  // pending connections whose first line is complete
    std::vector<std::string> lines;
    for (size_t i = pending.size(); i-- > 0;) {
      if (!fds[1 + i].revents) continue;
      std::string err, line;
      const bool open = recv_some(pending[i].peer->fd, pending[i].peer->buf, err);
      const bool complete = open && take_line(pending[i].peer->buf, line);
      if (complete) {
        hellos.push_back(std::move(pending[i].peer));
        lines.push_back(std::move(line));
      }
      if (!open || complete) pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if (fds[0].revents) {
      const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        auto peer = std::make_unique<Peer>();
        peer->fd = fd;
        tune_socket(fd, opts_.heartbeat_timeout);
        pending.push_back({std::move(peer), SteadyClock::now() + kHelloTimeout});
      }
    }

    for (size_t h = 0; h < hellos.size(); ++h) {
      auto& peer = hellos[h];
      json j = json::parse(lines[h], nullptr, false);
      if (text(j, "type", "") != "join" || !j.contains("node")) continue;  // junk: dropped
      NodeInfo n;
      try {
        n = node_from_json(j.at("node"));
      } catch (const std::exception&) {
        continue;
      }
      std::string refusal;
      const int their_nnodes = j.contains("nnodes") && j["nnodes"].is_number_integer() ? j["nnodes"].get<int>() : -1;
      const std::string their_fp = text(j, "fingerprint", "");
      if (their_nnodes != opts_.nnodes)
        refusal = fmt::format("--nnodes differs: node 0 has {}, {} has {}", opts_.nnodes, n.describe(), their_nnodes);
      else if (n.node_rank < 1 || n.node_rank >= opts_.nnodes)
        refusal = fmt::format("{} has a --node-rank outside [1, {})", n.describe(), opts_.nnodes);
      else if (joined[static_cast<size_t>(n.node_rank)])
        refusal = fmt::format("--node-rank {} joined twice: {} and {}", n.node_rank,
                              nodes_[static_cast<size_t>(n.node_rank)].describe(), n.describe());
      else if (their_fp != opts_.fingerprint)
        refusal = fmt::format("the server settings differ: node 0 has [{}], {} has [{}]", opts_.fingerprint, n.describe(), their_fp);
      if (!refusal.empty()) return fail(ErrorCode::kInvalidArgument, refusal, peer->fd, &peer->send_mu);
      log::info("Node {} joined ({}, pid {})", n.node_rank, n.hostname, n.pid);
      joined[static_cast<size_t>(n.node_rank)] = true;
      nodes_[static_cast<size_t>(n.node_rank)] = n;
      peer->info = n;
      peers_.push_back(std::move(peer));
    }
  }
  json topo = json::array();
  for (const auto& n : nodes_) topo.push_back(to_json(n));
  for (auto& p : peers_) PDSERVE_RETURN_IF_ERROR(send_line(p->fd, p->send_mu, json{{"type", "topology"}, {"nodes", topo}}));
  log::info("All {} nodes joined at {}", opts_.nnodes, opts_.init_addr);
  return ok_status();
}

Status NodeGroup::rendezvous_as_member() {
  PDSERVE_ASSIGN_OR_RETURN(auto hp, parse_host_port(opts_.init_addr));
  PDSERVE_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(hp.first, hp.second));
  const auto deadline = SteadyClock::now() + opts_.join_timeout;
  auto peer = std::make_unique<Peer>();
  std::string last_error;
  // Node 0 may start later than this node: retry until the deadline.
  while ((peer->fd = connect_by(addr, deadline, last_error)) < 0) {
    if (SteadyClock::now() >= deadline)
      return make_error(ErrorCode::kIo, "node {} could not reach node 0 at --dist-init-addr {} within {} s: {}", opts_.node_rank,
                        opts_.init_addr, opts_.join_timeout.count() / 1000.0, last_error);
    std::this_thread::sleep_for(std::min<SteadyClock::duration>(std::chrono::milliseconds(200), deadline - SteadyClock::now()));
  }
  tune_socket(peer->fd, opts_.heartbeat_timeout);
  const auto& self = nodes_[static_cast<size_t>(opts_.node_rank)];
  PDSERVE_RETURN_IF_ERROR(send_line(peer->fd, peer->send_mu,
                                    json{{"type", "join"}, {"nnodes", opts_.nnodes}, {"fingerprint", opts_.fingerprint},
                                         {"node", to_json(self)}}));
  log::info("Node {} joined node 0 at {}; waiting for the other nodes", opts_.node_rank, opts_.init_addr);
  std::string line, err;
  for (;;) {
    const ReadResult rr = read_line(peer->fd, peer->buf, line, deadline, err);
    if (rr == ReadResult::kTimeout)
      return make_error(ErrorCode::kIo, "the nodes at {} did not all join within {} s (--nnodes {})", opts_.init_addr,
                        opts_.join_timeout.count() / 1000.0, opts_.nnodes);
    if (rr == ReadResult::kClosed)
      return make_error(ErrorCode::kIo, "node 0 at {} closed the rendezvous: {}", opts_.init_addr, err);
    json j = json::parse(line, nullptr, false);
    const std::string type = text(j, "type", "");
    if (type == "reject")
      return make_error(ErrorCode::kInvalidArgument, "rendezvous at {} failed: {}", opts_.init_addr, text(j, "error", "refused"));
    if (type != "topology") continue;
    try {
      for (const auto& n : j.at("nodes")) {
        NodeInfo info = node_from_json(n);
        if (info.node_rank < 0 || info.node_rank >= opts_.nnodes) throw std::out_of_range("node_rank");
        nodes_[static_cast<size_t>(info.node_rank)] = info;
      }
    } catch (const std::exception& e) {
      return make_error(ErrorCode::kCorrupt, "node 0 sent a malformed topology: {}", e.what());
    }
    peer->info = nodes_[0];
    peers_.push_back(std::move(peer));
    return ok_status();
  }
}

void NodeGroup::start_membership() {
  for (auto& p : peers_) {
    Peer* raw = p.get();
    raw->reader = std::thread([this, raw] { watch(*raw); });
  }
  heartbeat_ = std::thread([this] {
    while (!leaving_) {
      for (auto& p : peers_) (void)send_line(p->fd, p->send_mu, json{{"type", "ping"}});
      // Short sleeps so that leave() is not held up by a long interval.
      const auto until = SteadyClock::now() + opts_.heartbeat_interval;
      while (!leaving_ && SteadyClock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
}

void NodeGroup::watch(Peer& p) {
  std::string line, err;
  for (;;) {
    const ReadResult rr = read_line(p.fd, p.buf, line, SteadyClock::now() + opts_.heartbeat_timeout, err);
    if (leaving_) return;
    if (rr == ReadResult::kTimeout)
      return report({p.info, fmt::format("no heartbeat for {} s (the process hangs or the network is down)",
                                         opts_.heartbeat_timeout.count() / 1000.0), false});
    if (rr == ReadResult::kClosed) return report({p.info, err, false});
    json j = json::parse(line, nullptr, false);
    if (text(j, "type", "") == "bye") return report({p.info, text(j, "reason", "left"), true});
  }
}

void NodeGroup::report(const NodeEvent& e) {
  if (leaving_ || reported_.exchange(true)) return;
  if (on_lost_) on_lost_(e);
}

void NodeGroup::leave(const std::string& reason) {
  if (leaving_.exchange(true)) return;
  for (auto& p : peers_) {
    (void)send_line(p->fd, p->send_mu, json{{"type", "bye"}, {"reason", reason}});
    ::shutdown(p->fd, SHUT_RDWR);  // wakes the reader
  }
}

NodeGroup::~NodeGroup() {
  leave("shutting down");
  if (heartbeat_.joinable()) heartbeat_.join();
  for (auto& p : peers_) {
    if (!p->reader.joinable()) continue;
    // Destroying the group from its own lost handler would join the calling thread.
    if (p->reader.get_id() == std::this_thread::get_id()) p->reader.detach();
    else p->reader.join();
  }
}

}  // namespace pdserve::parallel
