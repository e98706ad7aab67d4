// Internal: the state behind http::Server (listener, I/O threads, routes, open connections) and
// the per-connection Session. Not for use outside src/http/.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include "http/exchange.h"
#include "http/server.h"

namespace pdserve::http::detail {

class ServerCore;

// One accepted connection: a coroutine that reads a request, hands it to the router, writes what
// the Exchange queues, and repeats while keep-alive holds. Everything runs on the socket's strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(ServerCore& core, boost::asio::ip::tcp::socket socket, bool over_limit);
  ~Session();

  // Serves the connection until it closes; `self` keeps the Session alive meanwhile.
  boost::asio::awaitable<void> run(std::shared_ptr<Session> self);
  // Thread-safe (they post to the strand). begin_stop: close if idle, else close after the
  // current response. force_close: close now; an unfinished response fires on_close.
  void begin_stop();
  void force_close();
  auto get_executor() { return stream_.get_executor(); }

 private:
  enum class Phase { kReading, kResponding };

  boost::asio::awaitable<void> serve_connection();
  boost::asio::awaitable<void> reject(boost::system::error_code ec);
  // `message` is owned (not a view): coroutine parameters must outlive the caller's temporaries.
  boost::asio::awaitable<void> write_error_and_linger(int status, std::string message);
  boost::asio::awaitable<bool> respond(std::shared_ptr<Exchange> ex);
  boost::asio::awaitable<bool> respond_loop(const std::shared_ptr<Exchange>& ex);
  boost::asio::awaitable<void> watch_peer(std::shared_ptr<Session> self, std::shared_ptr<Exchange> ex);
  std::function<void()> make_wake();
  void close_socket();
  void finish();

  ServerCore& core_;
  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  boost::asio::steady_timer wake_timer_;  // a condition variable for the coroutine: cancel() wakes it
  std::string remote_;
  bool over_limit_;
  Phase phase_ = Phase::kReading;
  bool stop_requested_ = false;
  bool force_closed_ = false;
  bool peer_gone_ = false;
  bool finished_ = false;
  std::shared_ptr<Exchange> current_;
};

struct RouteEntry {
  std::map<std::string, Handler, std::less<>> by_method;
};

class ServerCore {
 public:
  explicit ServerCore(ServerOptions options);
  ~ServerCore();

  Status start();
  void stop(std::chrono::milliseconds grace);
  void wait();
  void dispatch(Request request, std::shared_ptr<Responder> responder) const;
  void remove_session(Session* session);
  std::size_t connection_count() const;

  const ServerOptions options;
  const std::shared_ptr<const ErrorBodyFn> error_body;
  std::unordered_map<std::string, RouteEntry> exact_routes;
  std::vector<std::pair<std::string, RouteEntry>> prefix_routes;  // longest prefix first
  std::atomic<std::uint16_t> port{0};
  std::atomic<bool> stopping{false};

 private:
  enum class RunState { kIdle, kRunning, kStopping, kStopped };
  boost::asio::awaitable<void> accept_loop();
  void do_stop(std::chrono::milliseconds grace);
  std::vector<std::shared_ptr<Session>> snapshot_sessions() const;

  // Declared before io_context_: sessions destroyed with the io_context unregister themselves.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions_;
  RunState state_ = RunState::kIdle;
  std::thread stopper_;  // runs the shutdown when stop() is called from an I/O thread

 public:
  boost::asio::io_context io_context;

 private:
  std::optional<boost::asio::ip::tcp::acceptor> acceptor_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
};

}  // namespace pdserve::http::detail
