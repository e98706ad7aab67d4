// HTTP request parsing and routing: the fuzz input is written as-is to a real http::Server on
// loopback (the same Session coroutine, Beast parser, target/query decoding and route table that
// pdserve serve runs), then the write side is closed and the answer read until the server closes.
//
// A connection the server does not close within kHangLimitMs after the client's EOF is a hang
// and aborts (libFuzzer records it as a crash). The server's own waits are at most 2 s (the
// timeouts below) plus 1 s (linger after an error); the rest is room for a loaded CI machine.
// Every socket call retries on EINTR: libFuzzer's SIGALRM (its -timeout watchdog) interrupts them.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "base/logging.h"
#include "fuzz/fuzz_util.h"
#include "http/server.h"
#include "http/sse.h"

namespace {

using namespace pdserve::http;
constexpr int kHangLimitMs = 8000;  // below scripts/fuzz.sh's per-input timeout (10 s)

// Handlers touch every parsed field so that the sanitizers see them used.
std::string describe(const Request& r) {
  std::string out = fmt::format("{} {} path={} keep_alive={} from={}\n", r.method, r.target, r.path, r.keep_alive,
                                r.remote_address.empty() ? "?" : "ok");
  for (const auto& [k, v] : r.query) out += fmt::format("q {}={}\n", k, v);
  for (const auto& [k, v] : r.headers) out += fmt::format("h {}: {}\n", k, v);
  if (auto ct = r.headers.get("content-type")) out += fmt::format("ct {}\n", *ct);
  if (auto x = r.query_param("x")) out += fmt::format("x {}\n", *x);
  out += fmt::format("body {} bytes\n", r.body.size());
  return out;
}

Server& server() {
  static std::unique_ptr<Server> s = [] {
    ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.io_threads = 1;
    o.max_body_bytes = 64 << 10;
    o.max_header_bytes = 8 << 10;
    o.header_timeout = o.body_timeout = o.idle_timeout = o.write_timeout = std::chrono::milliseconds(2000);
    auto srv = std::make_unique<Server>(o);
    srv->route("GET", "/health", [](Request, std::shared_ptr<Responder> r) { r->respond(200, "{}"); });
    srv->route("POST", "/generate", [](Request q, std::shared_ptr<Responder> r) {
      r->respond(200, describe(q), "text/plain", Headers{{"X-Path", q.path}});
    });
    srv->route("PUT", "/generate", [](Request q, std::shared_ptr<Responder> r) { r->respond_error(400, q.body); });
    srv->route("POST", "/stream", [](Request q, std::shared_ptr<Responder> r) {
      r->start_stream(200);
      r->send_chunk(sse_event(describe(q)));
      r->send_chunk(sse_event(q.body));
      r->send_chunk(sse_event("[DONE]"));
      r->end_stream();
    });
    srv->route("GET", "/secure", require_api_key("k3y", [](Request q, std::shared_ptr<Responder> r) {
                 r->respond(200, describe(q));
               }));
    srv->route("GET", "/throw", [](Request, std::shared_ptr<Responder>) { throw std::runtime_error("boom"); });
    srv->route("GET", "/drop", [](Request, std::shared_ptr<Responder>) {});  // Responder dropped: 500
    srv->route_prefix("GET", "/v1/models/", [](Request q, std::shared_ptr<Responder> r) {
      r->respond(200, describe(q));
    });
    srv->route_prefix("DELETE", "/v1/", [](Request q, std::shared_ptr<Responder> r) { r->respond(204, ""); (void)q; });
    if (auto st = srv->start(); !st) {
      std::fprintf(stderr, "http_request_fuzz: cannot start the server: %s\n", st.error().message().c_str());
      std::abort();
    }
    return srv;
  }();
  return *s;
}

int connect_loopback(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0) {
    std::perror("http_request_fuzz: socket");
    std::abort();
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    // Interrupted, the connection goes on in the background: wait until it is writable.
    int err = errno;
    if (err == EINTR) {
      pollfd p{fd, POLLOUT, 0};
      while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    }
    if (err != 0) {
      std::fprintf(stderr, "http_request_fuzz: connect: %s\n", std::strerror(err));
      std::abort();
    }
  }
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  pdserve::log::set_level(pdserve::log::Level::kCritical);  // "handler threw" is expected here
  server();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = connect_loopback(server().port());
  // The server may answer (and close) before it read everything: a failed send is fine.
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kHangLimitMs);
  char buf[16384];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    const int ready = left.count() <= 0 ? 0 : ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      std::fprintf(stderr, "http_request_fuzz: the server kept the connection open %d ms after EOF\n", kHangLimitMs);
      std::abort();
    }
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF or reset: the server is done with this connection
  }
  ::close(fd);
  return 0;
}
