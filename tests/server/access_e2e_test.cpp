// Access control and slow clients against real `pdserve serve` processes (docs/reliability.md,
// "Access control and limits"): the default bind address of the server and of the prefill's
// bootstrap server, the bootstrap server's API key, and raw sockets that trickle a request or stop
// reading a stream.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/tcp.h>

#include <optional>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
const std::string kKey = "sk-access";

// An IPv4 address of this machine other than loopback, if it has one.
std::optional<std::string> non_loopback_ipv4() {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return std::nullopt;
  std::optional<std::string> found;
  for (ifaddrs* i = list; i != nullptr && !found; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    const auto* in = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
    if ((ntohl(in->sin_addr.s_addr) >> 24) == 127) continue;
    char text[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    found = text;
  }
  ::freeifaddrs(list);
  return found;
}

// A TCP connection to ip:port, or -1. `rcvbuf` > 0 shrinks the receive buffer first, so that a
// client that stops reading stalls the server's writes after a few KB instead of a few MB.
int connect_to(const std::string& ip, int port, int rcvbuf = 0) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Reads until the peer closes (true) or `limit` passes without that (false).
bool wait_peer_close(int fd, std::chrono::seconds limit) {
  timeval tv{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const auto until = Clock::now() + limit;
  char buf[65536];
  while (Clock::now() < until) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;  // reset
  }
  return false;
}

double metric(ServerProcess& s, const std::string& name) {
  http::Client c;
  auto r = c.get(s.url("/metrics"));
  if (!r || r->status != 200) return -1;
  std::istringstream lines(r->body);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind(name, 0) == 0 && (line[name.size()] == '{' || line[name.size()] == ' '))
      return std::stod(line.substr(line.rfind(' ') + 1));
  return -1;
}

TEST(AccessE2E, DefaultBindIsLoopbackAndTheBootstrapServerNeedsTheKey) {
  const int bootstrap_port = free_port();
  // No --host: the server and its bootstrap server must bind 127.0.0.1 only.
  ServerProcess s({"--api-key", kKey, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port",
                   std::to_string(bootstrap_port)},
                  "access_bind", /*pass_host=*/false);
  // A decode with the same key, started alongside (its startup overlaps the prefill's).
  ServerProcess d({"--api-key", kKey, "--disaggregation-mode", "decode"}, "access_decode");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  ASSERT_TRUE(d.wait_ready()) << d.log();
  http::Client c;
  const std::string bootstrap = "http://127.0.0.1:" + std::to_string(bootstrap_port);
  const std::string topology = bootstrap + "/route?engine_rank=-1&target_dp_group=-1&target_pp_rank=-1";
  EXPECT_EQ(c.get(bootstrap + "/health")->status, 200);  // open: the decode's heartbeat
  auto denied = c.get(topology);
  ASSERT_TRUE(denied.has_value());
  EXPECT_EQ(denied->status, 401) << denied->body;
  EXPECT_EQ(c.request("GET", topology, "", json_headers("sk-wrong"))->status, 401);
  // The prefill's own rank registered with the key, so the table is there for a keyed decode.
  auto topo = c.request("GET", topology, "", json_headers(kKey));
  ASSERT_EQ(topo->status, 200) << topo->body;
  EXPECT_EQ(json::parse(topo->body)["prefill_dp_size"], 1);
  // A PD request end to end: the decode looks the prefill rank up with its key and gets the KV.
  const json pd = {{"input_ids", {21, 22, 23, 24, 25}},
                   {"sampling_params", {{"max_new_tokens", 4}, {"ignore_eos", true}, {"temperature", 0}}},
                   {"bootstrap_host", "127.0.0.1"},
                   {"bootstrap_port", bootstrap_port},
                   {"bootstrap_room", 4242}};
  std::thread prefill_side([&] {
    http::Client pc;
    auto r = pc.request("POST", s.url("/generate"), pd.dump(), json_headers(kKey), std::chrono::seconds(60));
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message());
  });
  auto decoded = c.request("POST", d.url("/generate"), pd.dump(), json_headers(kKey), std::chrono::seconds(60));
  prefill_side.join();
  ASSERT_TRUE(decoded.has_value());
  ASSERT_EQ(decoded->status, 200) << decoded->body << d.log();
  EXPECT_EQ(json::parse(decoded->body)["output_ids"].size(), 4u) << decoded->body;
  auto info = c.request("GET", s.url("/server_info"), "", json_headers(kKey));
  ASSERT_EQ(info->status, 200);
  EXPECT_EQ(json::parse(info->body)["host"], "127.0.0.1");

  const auto external = non_loopback_ipv4();
  if (!external) GTEST_SKIP() << "this machine has no non-loopback IPv4 address to try";
  for (int port : {s.port(), bootstrap_port}) {
    const int fd = connect_to(*external, port);
    EXPECT_LT(fd, 0) << "port " << port << " is reachable on " << *external;
    if (fd >= 0) ::close(fd);
  }
}

class SlowClientE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--enable-metrics", "--http-header-timeout", "1", "--http-body-timeout", "1",
                                 "--http-write-timeout", "1", "--http-max-queued-bytes", "65536"},
                                "slow_client");
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->terminate(), 0) << server_->log();
    delete server_;
  }
  static ServerProcess* server_;
};
ServerProcess* SlowClientE2E::server_ = nullptr;

TEST_F(SlowClientE2E, TricklingHeadersAndAStalledBodyAreCutOff) {
  // Slowloris: a byte of header every 200 ms never completes the head; the header timeout (1 s)
  // closes the connection, long before the idle/body defaults (60 s) could.
  const int fd = connect_to("127.0.0.1", server_->port());
  ASSERT_GE(fd, 0);
  const auto start = Clock::now();
  bool closed = false;
  const std::string head = "POST /generate HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  for (size_t i = 0; Clock::now() - start < std::chrono::seconds(10); ++i) {
    if (!send_all(fd, std::string(1, i < head.size() ? head[i] : 'a'))) {
      closed = true;
      break;
    }
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      closed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const double header_s = std::chrono::duration<double>(Clock::now() - start).count();
  ::close(fd);
  EXPECT_TRUE(closed);
  EXPECT_LT(header_s, 5.0);

  // A body that stops after 10 of its 100 bytes: the body timeout (1 s) closes it.
  const int body_fd = connect_to("127.0.0.1", server_->port());
  ASSERT_GE(body_fd, 0);
  const auto body_start = Clock::now();
  ASSERT_TRUE(send_all(body_fd, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"text\": \""));
  EXPECT_TRUE(wait_peer_close(body_fd, std::chrono::seconds(10)));
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - body_start).count(), 5.0);
  ::close(body_fd);
}

TEST_F(SlowClientE2E, StalledStreamingReaderIsAbortedAndItsKvFreed) {
  const double aborted_before = metric(*server_, "sglang:num_aborted_requests_total");
  ASSERT_GE(aborted_before, 0);
  // A long streamed generation with big events (20 top logprobs each) to a client that never reads.
  const json body = {{"input_ids", {11, 12, 13, 14, 15, 16, 17, 18}},
                     {"sampling_params", {{"max_new_tokens", 50000}, {"ignore_eos", true}, {"temperature", 0}}},
                     {"stream", true},
                     {"return_logprob", true},
                     {"top_logprobs_num", 20},
                     {"rid", "stalled-reader"}};
  const std::string text = body.dump();
  const int fd = connect_to("127.0.0.1", server_->port(), /*rcvbuf=*/4096);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(text.size()) + "\r\n\r\n" + text));
  const auto start = Clock::now();
  // The server stops waiting on the stalled socket (write timeout 1 s or 64 KiB queued), closes it,
  // and aborts the request: one more aborted request, nothing running, no KV page held.
  double aborted = aborted_before;
  while (aborted == aborted_before && Clock::now() - start < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    aborted = metric(*server_, "sglang:num_aborted_requests_total");
  }
  const double abort_s = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_EQ(aborted, aborted_before + 1) << server_->log();
  http::Client c;
  bool idle = false;
  for (int i = 0; i < 200 && !idle; ++i) {
    auto load = c.get(server_->url("/get_load"));
    idle = load && load->status == 200 && json::parse(load->body)[0]["num_reqs"] == 0;
    if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(idle);
  auto info = c.get(server_->url("/server_info"));
  ASSERT_TRUE(info && info->status == 200);
  const json state = json::parse(info->body)["internal_states"][0];
  EXPECT_TRUE(state["kv_accounting_consistent"].get<bool>()) << state.dump();
  EXPECT_EQ(state["memory_usage"]["kvcache_pages_in_requests"], 0) << state.dump();
  // The server closed the stalled connection (what is still buffered reads out, then EOF).
  EXPECT_TRUE(wait_peer_close(fd, std::chrono::seconds(10)));
  ::close(fd);
  std::printf("stalled reader aborted after %.1f s\n", abort_s);
  // Everybody else is still served.
  auto ok = c.request("POST", server_->url("/generate"),
                      json{{"text", "still fine"}, {"sampling_params", {{"max_new_tokens", 2}}}}.dump(), json_headers());
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->status, 200) << ok->body;
}

}  // namespace
}  // namespace pdserve::test
