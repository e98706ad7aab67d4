// Test helpers: a raw blocking TCP socket (to send exactly the bytes a misbehaving client would)
// and a server fixture on an ephemeral port.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <string_view>

namespace pdserve::http::testing {

class RawSocket {
 public:
  // Connects to 127.0.0.1:port (or ::1 when ipv6).
  explicit RawSocket(int port, bool ipv6 = false) {
    fd_ = ::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int rc;
    if (ipv6) {
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_port = htons(static_cast<uint16_t>(port));
      a.sin6_addr = in6addr_loopback;
      rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    } else {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      rc = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    }
    connected_ = rc == 0;
  }
  ~RawSocket() { close(); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }
  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  // Reads what arrives within `timeout`; sets eof when the peer closed.
  std::string read_some(std::chrono::milliseconds timeout, bool* eof = nullptr) {
    pollfd p{fd_, POLLIN, 0};
    if (eof) *eof = false;
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return {};
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      if (eof) *eof = true;
      return {};
    }
    return std::string(buf, static_cast<std::size_t>(n));
  }
  // Reads until the peer closes or `timeout` passes; returns everything read.
  std::string read_until_close(std::chrono::milliseconds timeout, bool* closed) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string out;
    *closed = false;
    while (std::chrono::steady_clock::now() < deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      bool eof = false;
      out += read_some(left, &eof);
      if (eof) {
        *closed = true;
        break;
      }
    }
    return out;
  }
  // Reads until `needle` appears in the data (or timeout).
  std::string read_until(std::string_view needle, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string out;
    while (out.find(needle) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      bool eof = false;
      out += read_some(std::chrono::milliseconds(50), &eof);
      if (eof) break;
    }
    return out;
  }
  // Closes with a reset (SO_LINGER 0), as a crashed client or a killed process would look.
  void reset() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close();
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

// Polls `pred` until true or timeout; returns its last value.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    ::usleep(2000);
  }
  return pred();
}

}  // namespace pdserve::http::testing
