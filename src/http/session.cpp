// The per-connection coroutine of http::Server.
#include <array>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/error.hpp>
#include <fmt/format.h>

#include "base/logging.h"
#include "http/server_core.h"

namespace pdserve::http::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
using Clock = std::chrono::steady_clock;
// How much one read asks for (as Beast's reads: at most 64 KiB at a time).
constexpr std::size_t kReadBytes = 16 * 1024;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr std::string_view kCrlf = "\r\n";
// How long we keep reading (and discarding) after an error response that closes the connection.
constexpr std::chrono::milliseconds kLinger{1000};

std::string format_endpoint(const tcp::endpoint& ep) {
  if (ep.address().is_v6()) return fmt::format("[{}]:{}", ep.address().to_string(), ep.port());
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}


int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Query strings use form encoding: '+' is a space, %XX a byte. A malformed escape stays literal.
std::string url_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 &&
               hex_value(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

void parse_target(Request& r) {
  std::string_view t = r.target;
  std::size_t q = t.find('?');
  r.path.assign(t.substr(0, q));
  if (q == std::string_view::npos) return;
  std::string_view query = t.substr(q + 1);
  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    std::size_t eq = pair.find('=');
    std::string key = url_decode(pair.substr(0, eq));
    std::string value = eq == std::string_view::npos ? std::string() : url_decode(pair.substr(eq + 1));
    r.query[std::move(key)] = std::move(value);
  }
}

bool is_disconnect(const boost::system::error_code& ec) {
  return ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message ||
         ec == beast::error::timeout || ec == asio::error::operation_aborted ||
         ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::bad_descriptor || ec == asio::error::broken_pipe;
}

}  // namespace

Session::Session(ServerCore& core, tcp::socket socket, bool over_limit)
    : core_(core), stream_(std::move(socket)), idle_timer_(stream_.get_executor()),
      over_limit_(over_limit) {
  boost::system::error_code ec;
  auto ep = stream_.socket().remote_endpoint(ec);
  if (!ec) remote_ = format_endpoint(ep);
}

Session::~Session() { finish(); }

void Session::finish() {
  if (finished_) return;
  finished_ = true;
  // The handler may still hold the Responder: detach it so it never touches this connection.
  if (current_) current_->fail();
  current_.reset();
  core_.remove_session(this);
}

void Session::close_socket() {
  idle_timer_.cancel();  // its handler holds the Session
  boost::system::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
  stream_.socket().close(ec);
}

void Session::begin_stop() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    self->stop_requested_ = true;
    if (self->phase_ == Phase::kReading) {
      self->close_socket();
    } else if (self->current_) {
      self->current_->set_keep_alive(false);
    }
  });
}

void Session::force_close() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    self->force_closed_ = true;
    self->close_socket();
    self->wake();
  });
}

std::shared_ptr<const Exchange::Waker> Session::make_waker() {
  // With one I/O thread, a wake-up from that thread (the router's upstream exchange runs there)
  // cannot race with this connection's coroutine, which is suspended: for a complete response it
  // is resumed right here, inside the caller (the exchange's lock is released by then), and
  // writes it before the caller goes on, instead of after a trip through the scheduler's queue.
  // Part of a stream is left for the queue, so that what the caller adds next (the relay's
  // chunk and end) goes out in the same write.
  const bool one_thread = core_.options.io_threads <= 1;
  auto act = [](Session& s, bool abort) {
    // An abort must not wait behind a write that a stalled client never lets finish.
    if (abort) s.close_socket();
    s.wake();  // last: the resumed coroutine may end, and the Session with it
  };
  // The waker keeps no executor: a Responder may drop the last copy of it on its own thread after
  // the Server is gone, and a strand's destructor touches its service inside the io_context. It
  // reaches the io_context only through the core's gate (WakeGate), which ~ServerCore closes.
  return std::make_shared<const Exchange::Waker>(
      [this, one_thread, act, io = &core_.io_context, gate = core_.wake_gate,
       weak = weak_from_this()](Exchange::Wake why) {
        if (!gate->enter()) return;  // the server is gone: no connection to write to
        const bool abort = why == Exchange::Wake::kAbort;
        if (one_thread && why != Exchange::Wake::kMore && io->get_executor().running_in_this_thread()) {
          // `this` is alive: its exchange was attached when the caller released the exchange's
          // lock, nothing else ran since, and the session detaches it before it is destroyed,
          // on this same thread.
          act(*this, abort);
        } else if (auto self = weak.lock()) {
          asio::post(self->get_executor(), [weak, abort, act] {
            if (auto s = weak.lock()) act(*s, abort);
          });
        }
        gate->leave();
      });
}

asio::awaitable<void> Session::run(std::shared_ptr<Session> self) {
  // `self` is a parameter (copied into the frame) so the Session lives as long as the coroutine,
  // from before its first resumption.
  (void)self;
  waker_ = make_waker();
  // Writes are tried at once and only the rest waits for the socket.
  boost::system::error_code ec;
  stream_.socket().non_blocking(true, ec);
  try {
    co_await serve_connection();
  } catch (const std::exception& e) {
    log::debug("http: connection {} ended by exception: {}", remote_, e.what());
  }
  close_socket();
  finish();
}

asio::awaitable<void> Session::serve_connection() {
  const ServerOptions& o = core_.options;
  bool first = true;
  for (;;) {
    phase_ = Phase::kReading;
    if (stop_requested_) co_return;
    // Keep-alive: the idle timeout runs until the next request's first byte; from there the
    // header timeout applies, so a slow trickle cannot hold the connection forever. The bytes come
    // from the read started while responding (start_watch); waited for here, in this frame.
    if (!first && buffer_.size() == 0) {
      if (watching_) {
        set_idle_deadline(Clock::now() + o.idle_timeout);
        idle_expired_ = false;
        while (watching_ && !idle_expired_ && !stop_requested_ && !force_closed_) co_await wait_wake();
        set_idle_deadline(Clock::time_point::max());  // a handler may take as long as it needs
        // Idle too long: returning closes the socket, which aborts the read.
        if (idle_expired_ || stop_requested_ || force_closed_) co_return;
      } else if (!watch_error_) {  // no read ahead was started (defensive: one always is)
        stream_.expires_after(o.idle_timeout);
        auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(kReadBytes), kNoThrow);
        if (ec) co_return;
        buffer_.commit(n);
      }
      if (watch_error_ || buffer_.size() == 0) co_return;  // the read ahead found the connection closed
    }
    first = false;

    Parser parser;
    parser.header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(o.max_header_bytes, UINT32_MAX)));
    parser.body_limit(static_cast<std::uint64_t>(o.max_body_bytes));
    boost::system::error_code ec;
    const auto header_deadline = Clock::now() + o.header_timeout;
    while (!parse_buffered(parser, true, ec) && !ec) {
      ec = co_await read_more(parser, header_deadline);
      if (ec) break;
    }
    if (ec) {
      co_await reject(ec);
      co_return;
    }
    if (!parser.is_done()) {
      if (iequals(parser.request.headers.get_or("expect", ""), "100-continue")) {
        stream_.expires_after(o.write_timeout);
        auto [wec, n] = co_await asio::async_write(stream_, asio::buffer(kContinue), kNoThrow);
        if (wec) co_return;
      }
      const auto body_deadline = Clock::now() + o.body_timeout;
      while (!parse_buffered(parser, false, ec) && !ec) {
        ec = co_await read_more(parser, body_deadline);
        if (ec) break;
      }
      if (ec) {
        co_await reject(ec);
        co_return;
      }
    }

    // Completed where it was parsed and moved once, into dispatch (a Request move is ~150
    // instructions: eight members).
    Request& request = parser.request;
    parse_target(request);
    request.remote_address = remote_;
    request.keep_alive = parser.keep_alive();

    Exchange::Framing framing{request.keep_alive && !over_limit_ && !stop_requested_, parser.version >= 11,
                              request.method == "HEAD"};
    auto ex = std::make_shared<Exchange>(core_.error_body, o.max_queued_bytes, waker_, framing);
    current_ = ex;
    peer_gone_ = false;
    phase_ = Phase::kResponding;
    // Nothing of a next request is buffered: read ahead while the handler works (watches for the
    // client leaving); a pipelined request's bytes cannot be watched past, as before.
    if (buffer_.size() == 0) start_watch();
    if (over_limit_) {
      ex->respond_error(503, "too many connections");
    } else {
      core_.dispatch(std::move(request), std::make_shared<ConnectionResponder>(ex));
    }
    // The response, in this frame rather than a coroutine of its own (a frame per request).
    bool reusable = false;
    for (;;) {
      if (peer_gone_ || force_closed_) break;
      Exchange::Taken taken = ex->take();
      if (taken.abort) break;
      if (taken.items.empty()) {
        co_await wait_wake();
        continue;
      }
      bool last = false;
      const std::size_t payload = gather(taken, last);
      // The socket is non-blocking: a response that fits its send buffer (the common case) is
      // written here, without an asynchronous operation, its timer and a posted completion.
      boost::system::error_code wec;
      std::size_t n = stream_.socket().write_some(out_, wec);
      if (wec == asio::error::would_block || wec == asio::error::try_again) {
        wec = {};
        n = 0;
      }
      if (!wec && n < asio::buffer_size(out_)) wec = co_await write_rest(n);
      ex->written(payload);
      if (wec) break;
      if (last) {
        reusable = true;
        break;
      }
    }
    if (reusable) {
      ex->finish();
    } else {
      ex->fail();
    }
    current_.reset();
    if (!reusable || !ex->keep_alive() || stop_requested_) co_return;
  }
}

void Session::start_watch() {
  watching_ = true;
  watch_error_ = {};
  stream_.socket().async_read_some(
      buffer_.prepare(kReadBytes), [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
        self->watching_ = false;
        if (ec) {
          self->watch_error_ = ec;
          // EOF or reset while responding: the client left (the response loop fails the
          // exchange, which fires on_close); a close of ours aborted the read.
          if (self->phase_ == Phase::kResponding && ec != asio::error::operation_aborted) self->peer_gone_ = true;
        } else {
          self->buffer_.commit(n);
        }
        self->wake();  // the response loop or the keep-alive wait waits for it
      });
}

asio::awaitable<void> Session::wait_wake() {
  // Not a coroutine itself (no frame of its own): the initiation stores the suspended coroutine.
  return asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
      [this](WakeHandler handler) { waiter_.emplace(std::move(handler)); }, asio::use_awaitable);
}

void Session::wake() {
  if (!waiter_) return;
  WakeHandler handler = std::move(*waiter_);
  waiter_.reset();
  handler();  // resumes the coroutine until its next wait; `this` may be gone afterwards
}

void Session::set_idle_deadline(Clock::time_point deadline) {
  idle_deadline_ = deadline;
  if (deadline == Clock::time_point::max() || (idle_timer_armed_ && idle_timer_.expiry() <= deadline)) return;
  idle_timer_armed_ = true;
  idle_timer_.expires_at(deadline);  // a later wait still pending ends with operation_aborted
  idle_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (ec == asio::error::operation_aborted) return;  // re-armed earlier, or the socket closed
    self->idle_timer_armed_ = false;
    if (self->idle_deadline_ == Clock::time_point::max()) return;  // responding: no deadline now
    if (Clock::now() < self->idle_deadline_) {  // fired for an older deadline
      self->set_idle_deadline(self->idle_deadline_);
      return;
    }
    self->idle_expired_ = true;
    self->wake();
  });
}

bool Session::parse_buffered(Parser& parser, bool header_only, boost::system::error_code& ec) {
  // A keep-alive request usually arrives whole in one read: parsing it where it lies avoids
  // Beast's composed read operations (a chain of handlers and a posted completion each), and
  // doing it outside a coroutine avoids a coroutine frame per call.
  parser.eager(!header_only);
  for (;;) {
    if (header_only ? parser.is_header_done() : parser.is_done()) return true;
    if (buffer_.size() == 0) return false;
    const std::size_t used = parser.put(buffer_.data(), ec);
    buffer_.consume(used);
    if (ec == bhttp::error::need_more) {
      ec = {};
      return false;
    }
    if (ec) return false;
    if (used == 0) return false;
  }
}

asio::awaitable<boost::system::error_code> Session::read_more(Parser& parser, Clock::time_point deadline) {
  stream_.expires_at(deadline);
  auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(kReadBytes), kNoThrow);
  if (ec == asio::error::eof) {
    // As Beast's read: the end of the stream ends a message only where its framing allows.
    if (!parser.got_some()) co_return boost::system::error_code(bhttp::error::end_of_stream);
    boost::system::error_code eof_ec;
    parser.put_eof(eof_ec);
    if (!eof_ec && !parser.is_done()) eof_ec = bhttp::error::partial_message;
    co_return eof_ec;
  }
  if (!ec) buffer_.commit(n);
  co_return ec;
}

asio::awaitable<void> Session::reject(boost::system::error_code ec) {
  if (ec == bhttp::error::header_limit) {
    co_await write_error_and_linger(431, "request header too large");
  } else if (ec == bhttp::error::body_limit) {
    co_await write_error_and_linger(
        413, fmt::format("request body larger than {} bytes", core_.options.max_body_bytes));
  } else if (!is_disconnect(ec)) {
    co_await write_error_and_linger(400, fmt::format("malformed request: {}", ec.message()));
  }
  // Timeouts and disconnects: nobody is listening, so just close.
}

asio::awaitable<void> Session::write_error_and_linger(int status, std::string message) {
  std::string body = (*core_.error_body)(status, message);
  std::string out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n",
      status, reason_phrase(status), body.size());
  out += body;
  stream_.expires_after(core_.options.write_timeout);
  auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(out), kNoThrow);
  if (ec) co_return;
  // The client may still be sending the body we refused. Closing with unread data makes the
  // kernel send a reset, which can destroy our response before the client reads it; so half-close
  // and discard input for a moment first.
  boost::system::error_code sec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, sec);
  stream_.expires_after(kLinger);
  std::array<char, 16 * 1024> sink;
  for (;;) {
    auto [rec, m] = co_await stream_.async_read_some(asio::buffer(sink), kNoThrow);
    if (rec || stop_requested_) break;
  }
}

std::size_t Session::gather(const Exchange::Taken& taken, bool& last) {
  // One gather write per burst: a stream that fell behind catches up in one syscall.
  out_.clear();
  std::size_t payload = 0;
  for (const OutItem& item : taken.items) {
    if (!item.head.empty()) out_.push_back(asio::buffer(item.head));
    if (!item.body.empty()) out_.push_back(asio::buffer(item.body));
    if (item.crlf) out_.push_back(asio::buffer(kCrlf));
    payload += item.body.size();
    last = last || item.kind == OutItem::Kind::kFull || item.kind == OutItem::Kind::kEnd;
  }
  return payload;
}

asio::awaitable<boost::system::error_code> Session::write_rest(std::size_t written) {
  // What the socket did not take at once (a slow reader), under the write timeout.
  std::vector<asio::const_buffer> rest;
  for (const auto& b : out_) {
    if (written >= b.size()) {
      written -= b.size();
      continue;
    }
    rest.push_back(b + written);
    written = 0;
  }
  stream_.expires_after(core_.options.write_timeout);
  auto [ec, n] = co_await asio::async_write(stream_, rest, kNoThrow);
  stream_.expires_never();
  co_return ec;
}

}  // namespace pdserve::http::detail
