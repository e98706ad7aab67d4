// One rank's ZeroMQ endpoint for the PD control channel: a PULL socket bound on an ephemeral port
// (SGLang's rank_port) and PUSH sockets to the peers it talks to, all owned by one I/O thread
// (ZeroMQ sockets are not thread safe). Other threads post messages or tasks; the I/O thread runs
// them in order, so everything one rank sends to one peer arrives in that order.
//
// Sends fail fast instead of queueing for a dead peer: ZMQ_IMMEDIATE keeps messages off
// connections that are not up, and a send that cannot be handed to a live connection within
// kSendTimeout reports an error naming the peer's address.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/status.h"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace pdserve::disagg {

using Frames = std::vector<std::string>;

class ControlChannel {
 public:
  static constexpr std::chrono::milliseconds kSendTimeout{1000};
  static constexpr size_t kZeroCopyBytes = 4096;  // frames this large go to ZeroMQ without a copy
  using MessageHandler = std::function<void(Frames&&)>;
  using ErrorHandler = std::function<void(const std::string& error)>;

  ControlChannel();
  ~ControlChannel();
  ControlChannel(const ControlChannel&) = delete;
  ControlChannel& operator=(const ControlChannel&) = delete;

  // Binds tcp://host:* and starts the I/O thread. `on_message` and `on_tick` (about every
  // millisecond, for deadlines) run on the I/O thread.
  Status start(const std::string& host, MessageHandler on_message, std::function<void()> on_tick);
  void stop();
  // "host:port" of the PULL socket: the address peers send to, and this rank's session id.
  const std::string& endpoint() const { return endpoint_; }
  int port() const { return port_; }

  // Any thread: queue a message to `peer` ("host:port"); `on_error` runs on the I/O thread if it
  // cannot be sent.
  void post(const std::string& peer, Frames frames, ErrorHandler on_error = {});
  // Any thread: run `task` on the I/O thread.
  void run(std::function<void()> task);
  // I/O thread only: send now.
  Status send_now(const std::string& peer, Frames frames);
  // I/O thread only: forget the socket to `peer` (a later send reconnects).
  void drop_peer(const std::string& peer);

 private:
  void loop();
  zmq::socket_t& push_socket(const std::string& peer);

  std::unique_ptr<zmq::context_t> ctx_;
  std::unique_ptr<zmq::socket_t> pull_;
  std::unordered_map<std::string, std::unique_ptr<zmq::socket_t>> push_;
  std::string endpoint_;
  int port_ = 0;
  MessageHandler on_message_;
  std::function<void()> on_tick_;
  std::mutex mu_;
  std::vector<std::function<void()>> tasks_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace pdserve::disagg
