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
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/basic_parser.hpp>

#include "http/exchange.h"
#include "http/server.h"

namespace pdserve::http::detail {

class ServerCore;

// Lets a Responder's wake-up, called from any thread, touch the server's io_context only while it
// exists. A waker enters the gate around its use of the io_context; ~ServerCore closes it, waiting
// for those inside, before the io_context goes. Counting, not a lock: a wake-up on an I/O thread
// may resume a connection inline whose handler wakes another one (nested entries).
class WakeGate {
 public:
  // Sequentially consistent: either enter() sees the gate closed, or close() sees it entered.
  bool enter() {
    users_.fetch_add(1);
    if (open_.load()) return true;
    users_.fetch_sub(1);
    return false;
  }
  void leave() { users_.fetch_sub(1); }
  void close() {
    open_.store(false);
    while (users_.load() != 0) std::this_thread::yield();  // a post in progress: microseconds
  }

 private:
  std::atomic<int> users_{0};
  std::atomic<bool> open_{true};
};

// Beast's request parser filling a Request directly. Beast's own message parser keeps the fields
// in a basic_fields (an allocation per field) that were then copied into the Request again.
class RequestParser final : public boost::beast::http::basic_parser<true> {
 public:
  RequestParser() { request.headers.reserve(8); }  // a typical request's fields, one allocation

  Request request;  // method, target, headers, body; the rest is the session's to fill
  int version = 11;

 private:
  using string_view = boost::beast::string_view;
  using error_code = boost::system::error_code;

  void on_request_impl(boost::beast::http::verb, string_view method, string_view target, int v,
                       error_code&) override {
    request.method.assign(method.data(), method.size());
    request.target.assign(target.data(), target.size());
    version = v;
  }
  void on_response_impl(int, string_view, int, error_code&) override {}  // requests only
  void on_field_impl(boost::beast::http::field, string_view name, string_view value, error_code&) override {
    request.headers.add(std::string(name.data(), name.size()), std::string(value.data(), value.size()));
  }
  void on_header_impl(error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>& length, error_code&) override {
    if (length) request.body.reserve(static_cast<std::size_t>(*length));  // within body_limit, checked before
  }
  std::size_t on_body_impl(string_view data, error_code&) override {
    request.body.append(data.data(), data.size());
    return data.size();
  }
  void on_chunk_header_impl(std::uint64_t, string_view, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, string_view data, error_code&) override {
    request.body.append(data.data(), data.size());
    return data.size();
  }
  void on_finish_impl(error_code&) override {}
};

// One accepted connection: a coroutine that reads a request, hands it to the router, writes what
// the Exchange queues, and repeats while keep-alive holds. Everything runs on the socket's strand
// (or, with one I/O thread, on that thread).
//
// While a response is under way the connection keeps one read pending on the socket: it notices
// a client that leaves (EOF, reset) and is also the read of the next keep-alive request, so a
// request costs one read operation, not a read plus a watcher.
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
  // After the I/O threads were joined: lets go of a coroutine still waiting in wait_wake() (it
  // holds the Session, which holds it), so that the io_context's destruction frees both.
  void drop_waiter() { waiter_.reset(); }
  auto get_executor() { return stream_.get_executor(); }

 private:
  enum class Phase { kReading, kResponding };

  using Parser = RequestParser;

  boost::asio::awaitable<void> serve_connection();
  // Feeds `parser` the buffered bytes: true once its header (header_only) or whole message is
  // parsed; false when it needs more bytes (read_more) or failed (`ec`).
  bool parse_buffered(Parser& parser, bool header_only, boost::system::error_code& ec);
  // One read for the parser, by `deadline`; the end of the stream goes to the parser.
  boost::asio::awaitable<boost::system::error_code> read_more(Parser& parser,
                                                              std::chrono::steady_clock::time_point deadline);
  // Starts the read kept pending while responding (see above).
  void start_watch();
  boost::asio::awaitable<void> reject(boost::system::error_code ec);
  // `message` is owned (not a view): coroutine parameters must outlive the caller's temporaries.
  boost::asio::awaitable<void> write_error_and_linger(int status, std::string message);
  // Points out_ at the taken items; returns their payload bytes; `last`: the response ends.
  std::size_t gather(const Exchange::Taken& taken, bool& last);
  // Writes what is left of out_ after the first `written` bytes went out at once.
  boost::asio::awaitable<boost::system::error_code> write_rest(std::size_t written);
  std::shared_ptr<const Exchange::Waker> make_waker();
  // The coroutine's condition variable: wait_wake() suspends it until the next wake(), which
  // resumes it at once, inside the caller (who runs on the connection's executor and holds no
  // lock). The handler is kept here, not in a timer: a timer wait cost a timer-heap insert and
  // removal (under the reactor's lock) and a trip through the scheduler's queue per wait, two
  // waits per request. A wake with no waiter is dropped: the coroutine checks its state before
  // it waits.
  boost::asio::awaitable<void> wait_wake();
  void wake();
  // The keep-alive deadline (time_point::max(): none). Its timer is re-armed lazily: one armed
  // no later than the deadline is left alone and, when it fires early, re-armed for the rest, so
  // a busy connection costs a timer operation per idle_timeout, not one per request.
  void set_idle_deadline(std::chrono::steady_clock::time_point deadline);
  void close_socket();
  void finish();

  ServerCore& core_;
  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  using WakeHandler = boost::asio::async_result<boost::asio::use_awaitable_t<>, void()>::handler_type;
  std::optional<WakeHandler> waiter_;  // the coroutine, while it waits in wait_wake()
  boost::asio::steady_timer idle_timer_;
  std::chrono::steady_clock::time_point idle_deadline_ = std::chrono::steady_clock::time_point::max();
  bool idle_timer_armed_ = false;
  bool idle_expired_ = false;
  std::string remote_;
  bool over_limit_;
  Phase phase_ = Phase::kReading;
  bool stop_requested_ = false;
  bool force_closed_ = false;
  bool peer_gone_ = false;
  bool finished_ = false;
  bool watching_ = false;                 // the pending read is under way
  boost::system::error_code watch_error_;  // how it ended, if not with bytes
  std::shared_ptr<Exchange> current_;
  std::shared_ptr<const Exchange::Waker> waker_;  // shared by this connection's exchanges
  std::vector<boost::asio::const_buffer> out_;    // a write's buffers, capacity kept
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
  const std::shared_ptr<WakeGate> wake_gate = std::make_shared<WakeGate>();  // shared with the wakers

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
