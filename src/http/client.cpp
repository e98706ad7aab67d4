#include "http/client.h"

#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <fmt/format.h>

namespace pdserve::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// Loops rather than find_first_of, which calls memchr over the set once per character of `s`
// (28 calls for a request head). The same sets as before: RFC 9110's delimiters and whitespace.
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    switch (c) {
      case ' ': case '\t': case '\r': case '\n': case ':': case '(': case ')': case '<': case '>': case '@':
      case ',': case ';': case '\\': case '"': case '/': case '[': case ']': case '?': case '=': case '{':
      case '}':
        return false;
      default:
        break;
    }
  }
  return true;
}

bool field_is_safe(std::string_view s) {
  for (const char c : s)
    if (c == '\r' || c == '\n') return false;
  return true;
}

// A parsed URL with its authority ("host:port", the pool key and Host header) computed once.
struct Target {
  Url url;
  std::string authority;
};

// Url::parse with a one-entry cache per thread: a router or benchmark thread sends request after
// request to the same few URLs, and parsing (with its allocations) cost more than the compare.
// Returns a copy, so a coroutine that suspends holds no reference into the cache.
Result<Target> parse_target(std::string_view text) {
  thread_local std::string last_text;
  thread_local std::optional<Target> last;
  if (last && text == last_text) return *last;
  auto url = Url::parse(text);
  if (!url) return url.error();
  std::string authority = url->authority();
  last.emplace(Target{std::move(*url), std::move(authority)});
  last_text.assign(text);
  return *last;
}

void append_number(std::string& out, std::size_t n) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
  out.append(digits, end);
}

// A pooled connection that finished an exchange this recently is reused without a peek (a
// syscall): its peer's keep-alive timeout (uvicorn 5 s, ours 60 s) cannot have run out yet, and a
// peer that died meanwhile is covered by the one retry of a stale connection (Connection).
constexpr auto kFreshIdle = std::chrono::milliseconds(100);

// How much one read asks for.
constexpr std::size_t kReadBytes = 16 * 1024;

// Beast's response parser filling a Response directly (status, fields) and its body into `sink`;
// Beast's own message parser kept the fields in a basic_fields (an allocation each) that were
// then copied into the Response again.
class ResponseParser final : public bhttp::basic_parser<false> {
 public:
  explicit ResponseParser(Response& response) : sink(&response.body), response_(response) {}

  std::string* sink;  // where body bytes go: the response, or a stream's pending bytes

 private:
  using string_view = beast::string_view;
  using error_code = boost::system::error_code;

  void on_request_impl(bhttp::verb, string_view, string_view, int, error_code&) override {}  // responses only
  void on_response_impl(int status, string_view, int, error_code&) override { response_.status = status; }
  void on_field_impl(bhttp::field, string_view name, string_view value, error_code&) override {
    response_.headers.add(std::string(name.data(), name.size()), std::string(value.data(), value.size()));
  }
  void on_header_impl(error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(string_view data, error_code&) override {
    sink->append(data.data(), data.size());
    return data.size();
  }
  void on_chunk_header_impl(std::uint64_t, string_view, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, string_view data, error_code& ec) override {
    return on_body_impl(data, ec);
  }
  void on_finish_impl(error_code&) override {}

  Response& response_;
};

// The outcome of one attempt, before it becomes a Result: the raw error decides on a retry.
struct Attempt {
  boost::system::error_code ec;
  std::string what;         // which step failed
  bool got_response_bytes = false;
  Response response;
};

}  // namespace

struct Connection::Impl : std::enable_shared_from_this<Connection::Impl> {
  asio::any_io_executor executor;
  ClientOptions options;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;  // kept with the (pooled) connection: allocated once
  std::string authority;
  bool reusable = false;
  Clock::time_point idle_since{};  // when the last exchange ended (reusable)
  // The exchange's deadline for its reads. Beast's stream armed a timer for every read (a
  // timer-heap insert and removal and a completion each); this timer is re-armed lazily instead:
  // one armed no later than the deadline is left alone and, when it fires early, re-armed for
  // the rest, so back-to-back requests cost a timer operation per timeout, not one per read.
  // Connecting and the rare write that waits for the socket keep Beast's timer.
  std::optional<asio::steady_timer> deadline_timer;
  Clock::time_point deadline = Clock::time_point::max();  // max: no exchange under way
  bool deadline_armed = false;
  bool timed_out = false;  // the deadline passed: the read under way was cancelled

  void close() {
    stop_deadline();
    if (stream) {
      boost::system::error_code ec;
      stream->socket().shutdown(tcp::socket::shutdown_both, ec);
      stream->socket().close(ec);
      stream.reset();
    }
    buffer.clear();
    authority.clear();
    reusable = false;
  }

  // A pooled connection the server has since closed reads as EOF; finding that out now avoids
  // sending a request into a dead socket.
  bool still_alive() {
    if (!stream || !reusable) return false;
    return peer_open();
  }

  // still_alive() without the peek for a connection used a moment ago (kFreshIdle).
  bool reusable_now() {
    if (!stream || !reusable) return false;
    return Clock::now() - idle_since < kFreshIdle || peer_open();
  }

  bool peer_open() {
    char c;
    ssize_t n = ::recv(stream->socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  // Beast's timer, for connect and the write that waits.
  void set_stream_deadline(Clock::time_point d) {
    if (d == Clock::time_point::max()) {
      stream->expires_never();
    } else {
      stream->expires_at(d);
    }
  }

  // No exchange on this connection soon: an armed timer would keep an io_context that runs until
  // it has no work (the blocking Client, a benchmark's load) from returning.
  void stop_deadline() {
    if (deadline_armed) deadline_timer->cancel();
    deadline_armed = false;
  }

  // Starts (d < max) or ends (max) an exchange's deadline; see deadline_timer.
  void watch_deadline(Clock::time_point d) {
    deadline = d;
    timed_out = false;
    if (d == Clock::time_point::max()) return;
    if (!deadline_timer) deadline_timer.emplace(executor);
    if (deadline_armed && deadline_timer->expiry() <= d) return;
    deadline_armed = true;
    deadline_timer->expires_at(d);  // a later wait still pending ends with operation_aborted
    // Weak: a pooled connection may be dropped while its timer's completion is queued.
    deadline_timer->async_wait([weak = weak_from_this()](boost::system::error_code ec) {
      auto self = weak.lock();
      if (!self || ec == asio::error::operation_aborted) return;
      self->deadline_armed = false;
      if (self->deadline == Clock::time_point::max() || !self->stream) return;  // idle now
      if (Clock::now() < self->deadline) {  // fired for an earlier exchange's deadline
        self->watch_deadline(self->deadline);
        return;
      }
      self->timed_out = true;
      boost::system::error_code cec;
      self->stream->socket().cancel(cec);  // the read under way ends with operation_aborted
    });
  }

  asio::awaitable<Attempt> connect(const Target& t, Clock::time_point deadline) {
    const Url& url = t.url;
    close();
    Attempt a;
    std::vector<tcp::endpoint> endpoints;
    boost::system::error_code ec;
    auto address = asio::ip::make_address(url.host, ec);
    if (!ec) {
      endpoints.emplace_back(address, url.port);
    } else {
      tcp::resolver resolver(executor);
      auto [rec, results] = co_await resolver.async_resolve(url.host, std::to_string(url.port), kNoThrow);
      if (rec) {
        a.ec = rec;
        a.what = "resolve";
        co_return a;
      }
      for (const auto& r : results) endpoints.push_back(r.endpoint());
    }
    stream.emplace(executor);
    set_stream_deadline(std::min(deadline, Clock::now() + options.connect_timeout));
    // Tries each address in turn: "localhost" may resolve to ::1 first while the server
    // listens on 127.0.0.1 only.
    auto [cec, ep] = co_await stream->async_connect(endpoints, kNoThrow);
    if (cec) {
      a.ec = cec;
      a.what = "connect";
      close();
      co_return a;
    }
    stream->expires_never();
    stream->socket().set_option(tcp::no_delay(true), ec);
    stream->socket().non_blocking(true, ec);  // exchange() writes at once what the socket takes
    authority = t.authority;
    co_return a;
  }

  // The request head, appended piece by piece into `head` (its capacity kept from the last
  // request): fmt::format per line cost more than the rest of the request's preparation together.
  void serialize(const Target& t, const ClientRequest& req) {
    using namespace std::string_view_literals;  // pieces with their length: no strlen per append
    std::string& h = head;
    h.clear();
    h.reserve(128 + t.url.target.size() + options.user_agent.size());
    h.append(req.method).append(" "sv).append(t.url.target).append(" HTTP/1.1\r\n"sv);
    if (!req.headers.contains("host"sv)) h.append("Host: "sv).append(t.authority).append("\r\n"sv);
    if (!req.headers.contains("user-agent"sv) && !options.user_agent.empty()) {
      h.append("User-Agent: "sv).append(options.user_agent).append("\r\n"sv);
    }
    const std::string_view method = req.method;
    bool needs_length = !req.body.empty() || method == "POST"sv || method == "PUT"sv || method == "PATCH"sv;
    if (needs_length) {
      h.append("Content-Length: "sv);
      append_number(h, req.body.size());
      h.append("\r\n"sv);
    }
    for (const auto& [name, value] : req.headers) {
      if (!is_token(name) || !field_is_safe(value) || iequals(name, "content-length"sv) ||
          iequals(name, "transfer-encoding"sv)) {
        continue;
      }
      h.append(name).append(": "sv).append(value).append("\r\n"sv);
    }
    h.append("\r\n"sv);
  }

  // What exchange() keeps across its waits, held here rather than in its coroutine frame: Asio
  // recycles frames of at most 1,020 bytes (and only a few per thread); with these the frame was
  // 1,264 bytes, so every exchange cost an aligned_alloc, and each such miss also evicted a
  // recycled frame. The connection runs one exchange at a time, so one set is enough.
  std::string head;                      // the request head (serialize)
  std::optional<ResponseParser> parser;  // an optional: an interim 1xx response gets a fresh one
  std::string pending;                   // a stream's body bytes parsed and not yet passed on
  SseParser sse;

  void fresh_parser(Attempt& a, const ClientRequest& req) {
    a.response = Response{};
    a.response.headers.reserve(8);  // a typical response's fields in one allocation, not three
    parser.emplace(a.response);
    parser->header_limit(1u << 20);
    parser->body_limit(boost::none);  // limited in exchange(): by max_response_bytes unless streamed
    if (req.method == "HEAD") parser->skip(true);
  }

  // The head and `body` from byte `sent` on.
  std::array<asio::const_buffer, 2> unsent(const std::string& body, std::size_t sent) const {
    return {asio::buffer(head) + sent, asio::buffer(body) + (sent > head.size() ? sent - head.size() : 0)};
  }

  // Writes the head and `body` from byte `sent` on, as much as the non-blocking socket takes now
  // (all of it, usually); `sent` is advanced.
  boost::system::error_code write_now(const std::string& body, std::size_t& sent) {
    const auto out = unsent(body, sent);
    boost::system::error_code ec;
    const std::size_t n = stream->socket().write_some(out, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) return {};
    sent += n;
    return ec;
  }

  // The rest of the request when the socket's send buffer did not take it at once (rare: a large
  // body), under Beast's timer; a coroutine of its own so that exchange()'s frame stays small.
  asio::awaitable<boost::system::error_code> write_rest(const std::string& body, std::size_t sent,
                                                        Clock::time_point deadline) {
    const auto out = unsent(body, sent);
    set_stream_deadline(deadline);
    auto [ec, n] = co_await asio::async_write(*stream, out, kNoThrow);
    if (stream) stream->expires_never();
    if (ec == asio::error::operation_aborted && timed_out) ec = beast::error::timeout;
    co_return ec;
  }

  // Feeds the parser what `buffer` holds, the head alone first (the body's sink depends on it):
  // false when on_head stopped the exchange. Parse errors come back in `ec`.
  bool parse_buffered(Attempt& a, const ClientRequest& req, const StreamCallbacks* callbacks, bool& head_seen,
                      bool& streaming, boost::system::error_code& ec) {
    while (!parser->is_done() || !head_seen) {
      parser->eager(head_seen);
      bool progress = false;  // the parser took bytes (and may take more)
      if (buffer.size() != 0) {
        const std::size_t used = parser->put(buffer.data(), ec);
        buffer.consume(used);
        if (ec == bhttp::error::need_more) {
          ec = {};
        } else {
          progress = !ec && used > 0;
        }
      }
      // A header that completes a bodiless response leaves the parser done with nothing buffered.
      if (ec || (!progress && !parser->is_done())) break;
      if (head_seen || !parser->is_header_done()) continue;
      const int status = a.response.status;
      if (status < 200 && status != 101) {  // interim: the final response follows
        fresh_parser(a, req);
        continue;
      }
      head_seen = true;
      streaming = callbacks != nullptr && status >= 200 && status < 300;
      parser->sink = streaming ? &pending : &a.response.body;
      if (callbacks != nullptr && callbacks->on_head && !callbacks->on_head(a.response)) {
        close();
        return false;
      }
    }
    a.got_response_bytes = a.got_response_bytes || parser->got_some();
    return true;
  }

  // Passes a stream's parsed body bytes on (`last`: the response is complete with them): false
  // when the exchange ends here (a callback stopped it, or an SSE event was too large, which `a`
  // then reports).
  bool pass_on(const StreamCallbacks& callbacks, Attempt& a, bool last) {
    const auto& on_data = last && callbacks.on_last_data ? callbacks.on_last_data : callbacks.on_data;
    bool stopped = on_data && !on_data(pending);
    if (!stopped && callbacks.on_event) {
      bool fed = sse.feed(pending, [&](const SseEvent& e) {
        if (!stopped && !callbacks.on_event(e)) stopped = true;
      });
      if (!fed) {
        a.ec = bhttp::error::body_limit;
        a.what = "SSE event too large";
        stopped = true;
      }
    }
    pending.clear();
    if (stopped) close();
    return !stopped;
  }

  // A relay's consumer is behind (StreamCallbacks::hold): no more of the body is read meanwhile.
  asio::awaitable<void> hold_reads(const StreamCallbacks& callbacks, Clock::time_point deadline) {
    asio::steady_timer pause(executor);
    while (callbacks.hold()) {
      if (Clock::now() >= deadline) break;  // the next read reports the timeout
      pause.expires_after(std::chrono::milliseconds(1));
      co_await pause.async_wait(kNoThrow);
    }
  }

  // Sends the request and reads the response into `a`; `callbacks` null means a plain request.
  // The response is parsed where it lies in the buffer and read only when the parser needs bytes
  // (Beast's composed reads cost a chain of handlers and a posted completion per call). What
  // lives across the waits is in `a` (the caller's) and in the connection (see `head`).
  asio::awaitable<void> exchange(const Target& t, const ClientRequest& req, const StreamCallbacks* callbacks,
                                 Clock::time_point deadline, Attempt& a) {
    a.ec = {};
    a.what.clear();
    a.got_response_bytes = false;
    reusable = false;
    serialize(t, req);
    watch_deadline(deadline);
    {
      std::size_t sent = 0;
      auto ec = write_now(req.body, sent);
      if (!ec && sent < head.size() + req.body.size()) ec = co_await write_rest(req.body, sent, deadline);
      if (ec) {
        a.ec = ec;
        a.what = "send";
        co_return;
      }
    }
    fresh_parser(a, req);
    pending.clear();
    if (callbacks != nullptr) sse = SseParser();
    bool head_seen = false, streaming = false;
    for (;;) {
      boost::system::error_code ec;
      if (!parse_buffered(a, req, callbacks, head_seen, streaming, ec)) co_return;
      if (ec) {
        a.ec = ec;
        a.what = head_seen ? "read body" : "read response";
        co_return;
      }
      if (!streaming && a.response.body.size() > options.max_response_bytes) {
        a.ec = bhttp::error::body_limit;
        a.what = fmt::format("response body larger than {} bytes", options.max_response_bytes);
        close();
        co_return;
      }
      if (!pending.empty() && !pass_on(*callbacks, a, head_seen && parser->is_done())) co_return;
      if (head_seen && parser->is_done()) break;
      if (streaming && callbacks->hold && callbacks->hold()) co_await hold_reads(*callbacks, deadline);
      if (timed_out) {  // passed while no read was under way (a callback, a hold)
        a.ec = beast::error::timeout;
        a.what = head_seen ? "read body" : "read response";
        co_return;
      }
      // read_some, not read: a stream's events go on as they come. On the socket itself: Beast's
      // stream would arm its timer for the read (see deadline_timer).
      auto [rec, n] = co_await stream->socket().async_read_some(buffer.prepare(kReadBytes), kNoThrow);
      if (rec == asio::error::operation_aborted && timed_out) rec = beast::error::timeout;
      a.got_response_bytes = a.got_response_bytes || n > 0;
      if (rec == asio::error::eof) {
        // As Beast's read: the end of the stream ends a message only where its framing allows.
        if (parser->got_some()) {
          parser->put_eof(rec);
          if (!rec && !parser->is_done()) rec = bhttp::error::partial_message;
        } else {
          rec = bhttp::error::end_of_stream;
        }
      }
      if (rec) {
        a.ec = rec;
        a.what = head_seen ? "read body" : "read response";
        co_return;
      }
      buffer.commit(n);
    }
    reusable = parser->keep_alive();
    if (!reusable) close();
    idle_since = Clock::now();
  }

  asio::awaitable<Result<Response>> run(ClientRequest req, const StreamCallbacks* callbacks) {
    auto target = parse_target(req.url);
    if (!target) co_return target.error();
    co_return co_await run_on(*this, std::move(*target), std::move(req), callbacks, nullptr, nullptr);
  }

  // Runs `req` on connection `c`: connects if needed, and retries once on a fresh connection when
  // a reused one turns out stale (see Connection). A pooled connection (`owned`, which holds `c`)
  // goes back to `pool` at the end, so that a pooled request is one coroutine frame, not one for
  // the pool and one for the connection (Asio recycles few frames; the rest are aligned mallocs).
  static asio::awaitable<Result<Response>> run_on(Impl& c, Target target, ClientRequest req,
                                                  const StreamCallbacks* callbacks,
                                                  std::shared_ptr<AsyncClient::Pool> pool,
                                                  std::unique_ptr<Connection> owned);
};

Connection::Connection(asio::any_io_executor executor, ClientOptions options)
    : impl_(std::make_shared<Impl>()) {
  impl_->executor = std::move(executor);
  impl_->options = std::move(options);
}
Connection::~Connection() {
  if (impl_) impl_->close();
}
Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&&) noexcept = default;

asio::awaitable<Result<Response>> Connection::request(ClientRequest request) {
  co_return co_await impl_->run(std::move(request), nullptr);
}

asio::awaitable<Result<Response>> Connection::stream(ClientRequest request, StreamCallbacks callbacks) {
  co_return co_await impl_->run(std::move(request), &callbacks);
}

bool Connection::connected() const { return impl_->still_alive(); }
bool Connection::reusable() const { return impl_->stream.has_value() && impl_->reusable; }
const std::string& Connection::authority() const { return impl_->authority; }
void Connection::close() { impl_->close(); }

// ---------------------------------------------------------------------------------------------

struct AsyncClient::Pool : std::enable_shared_from_this<AsyncClient::Pool> {
  asio::any_io_executor executor;
  ClientOptions options;
  mutable std::mutex mu;
  std::unordered_map<std::string, std::vector<std::unique_ptr<Connection>>> idle;
  std::size_t in_flight = 0;  // requests on connections taken from here

  std::unique_ptr<Connection> acquire(const std::string& authority) {
    {
      std::lock_guard lock(mu);
      ++in_flight;
      auto it = idle.find(authority);
      if (it != idle.end() && !it->second.empty()) {
        auto c = std::move(it->second.back());
        it->second.pop_back();
        return c;
      }
    }
    return std::make_unique<Connection>(executor, options);
  }

  Clock::time_point next_sweep{};

  void release(std::unique_ptr<Connection> c) {
    std::vector<std::unique_ptr<Connection>> closed;  // destroyed after the lock is released
    std::lock_guard lock(mu);
    // No peek here: the exchange just ended and left the connection open; reuse and the sweep
    // below check the peer.
    if (c->reusable()) {
      auto& list = idle[c->authority()];
      if (list.size() < options.max_idle_per_host) list.push_back(std::move(c));
    }
    // Deadline timers stay armed between back-to-back requests (Connection::Impl); once nothing
    // is in flight they are stopped. Run on the pool's executor, as the timers' completions are.
    if (--in_flight == 0)
      for (auto& [authority, conns] : idle)
        for (auto& x : conns) x->impl_->stop_deadline();
    // Idle connections whose peer closed them (a worker that died, restarted or went idle-timeout)
    // sit in CLOSE-WAIT at the bottom of the LIFO stacks until a burst reaches them, or forever
    // for a host no longer used: drop them, at most once a second (one peek per idle socket).
    const auto now = Clock::now();
    if (now >= next_sweep) sweep_locked(closed);
    arm_sweep_timer_locked();
  }

  void sweep_locked(std::vector<std::unique_ptr<Connection>>& closed) {
    next_sweep = Clock::now() + std::chrono::seconds(1);
    for (auto it = idle.begin(); it != idle.end();) {
      auto& conns = it->second;
      for (auto& x : conns)
        if (!x->connected()) closed.push_back(std::move(x));
      std::erase(conns, nullptr);
      it = conns.empty() ? idle.erase(it) : std::next(it);
    }
  }

  // The sweep above runs only when a request completes: after the last one of a burst, a peer
  // that closes a pooled connection later (its keep-alive timeout, its death) would leave it in
  // CLOSE-WAIT until traffic resumes. With options.idle_sweep_interval, a timer sweeps while any
  // connection is idle. Its completion holds the pool weakly: a pool being destroyed cancels it.
  std::optional<asio::steady_timer> sweep_timer;
  bool sweep_armed = false;

  void arm_sweep_timer_locked() {
    if (options.idle_sweep_interval.count() <= 0 || sweep_armed || idle.empty()) return;
    if (!sweep_timer) sweep_timer.emplace(executor);
    sweep_armed = true;
    sweep_timer->expires_after(options.idle_sweep_interval);
    sweep_timer->async_wait([weak = weak_from_this()](const boost::system::error_code&) {
      auto self = weak.lock();
      if (!self) return;
      std::vector<std::unique_ptr<Connection>> closed;  // destroyed after the lock is released
      std::lock_guard lock(self->mu);
      self->sweep_armed = false;
      self->sweep_locked(closed);
      self->arm_sweep_timer_locked();
    });
  }

  // Runs one request on a pooled connection; the coroutine keeps the pool alive (`self`) and
  // returns the connection to it.
  static asio::awaitable<Result<Response>> run(std::shared_ptr<Pool> self, ClientRequest req,
                                               const StreamCallbacks* callbacks) {
    auto target = parse_target(req.url);
    if (!target) return failed(target.error());
    auto conn = self->acquire(target->authority);
    Connection::Impl& impl = *conn->impl_;
    return Connection::Impl::run_on(impl, std::move(*target), std::move(req), callbacks, std::move(self),
                                    std::move(conn));
  }

  static asio::awaitable<Result<Response>> failed(Result<Response> r) { co_return r; }
};

asio::awaitable<Result<Response>> Connection::Impl::run_on(Impl& c, Target target, ClientRequest req,
                                                           const StreamCallbacks* callbacks,
                                                           std::shared_ptr<AsyncClient::Pool> pool,
                                                           std::unique_ptr<Connection> owned) {
  std::optional<Result<Response>> result;
  if (!is_token(req.method)) {
    result.emplace(make_error(ErrorCode::kInvalidArgument, "bad HTTP method '{}'", req.method));
  } else {
    const Clock::time_point deadline =
        req.timeout.count() > 0 ? Clock::now() + req.timeout : Clock::time_point::max();
    Attempt a;
    for (int attempt = 0; attempt < 2; ++attempt) {
      bool reused = c.authority == target.authority && c.reusable_now();
      if (!reused) {
        a = co_await c.connect(target, deadline);
        if (a.ec) break;
      }
      co_await c.exchange(target, req, callbacks, deadline, a);
      c.watch_deadline(Clock::time_point::max());
      if (!a.ec) {
        result.emplace(std::move(a.response));
        break;
      }
      c.close();
      // The server may close an idle keep-alive connection just as we reuse it. Nothing of the
      // response arrived, so the request was not processed: one retry on a fresh connection.
      bool stale = a.ec == asio::error::eof || a.ec == asio::error::connection_reset ||
                   a.ec == asio::error::broken_pipe || a.ec == bhttp::error::end_of_stream;
      if (!(reused && stale && !a.got_response_bytes)) break;
    }
    if (!result && a.ec == beast::error::timeout) {
      result.emplace(make_error(ErrorCode::kIo, "{} {}: timed out after {} ms ({})", req.method, req.url,
                                req.timeout.count(), a.what));
    } else if (!result) {
      result.emplace(make_error(ErrorCode::kIo, "{} {}: {} failed: {}", req.method, req.url, a.what,
                                a.ec.message()));
    }
  }
  if (pool) {
    pool->release(std::move(owned));
  } else {
    c.stop_deadline();
  }
  co_return std::move(*result);
}

AsyncClient::AsyncClient(asio::any_io_executor executor, ClientOptions options)
    : pool_(std::make_shared<Pool>()) {
  pool_->executor = std::move(executor);
  pool_->options = std::move(options);
}
AsyncClient::~AsyncClient() = default;

asio::awaitable<Result<Response>> AsyncClient::request(ClientRequest request) {
  return Pool::run(pool_, std::move(request), nullptr);
}

asio::awaitable<Result<Response>> AsyncClient::stream(ClientRequest request, StreamCallbacks callbacks) {
  // The callbacks must live in a frame of their own: the pool's coroutine only borrows them.
  auto pool = pool_;
  co_return co_await Pool::run(std::move(pool), std::move(request), &callbacks);
}

std::size_t AsyncClient::idle_connections() const {
  std::lock_guard lock(pool_->mu);
  std::size_t n = 0;
  for (const auto& [k, v] : pool_->idle) n += v.size();
  return n;
}

// ---------------------------------------------------------------------------------------------

struct Client::Impl {
  asio::io_context io_context{1};
  AsyncClient client;
  explicit Impl(ClientOptions options) : client(io_context.get_executor(), std::move(options)) {}

  Result<Response> run(ClientRequest req, const StreamCallbacks* callbacks) {
    std::optional<Result<Response>> out;
    asio::co_spawn(
        io_context,
        [&]() -> asio::awaitable<void> {
          if (callbacks) {  // not ?: with co_await: g++ 12 destroys its temporaries twice
            out.emplace(co_await client.stream(std::move(req), *callbacks));
          } else {
            out.emplace(co_await client.request(std::move(req)));
          }
        },
        [&](std::exception_ptr e) {
          if (!e) return;
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& ex) {
            out.emplace(make_error(ErrorCode::kInternal, "http client: {}", ex.what()));
          }
        });
    io_context.restart();
    io_context.run();
    if (!out) return make_error(ErrorCode::kInternal, "http client: request did not complete");
    return std::move(*out);
  }
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Client::~Client() = default;

Result<Response> Client::request(std::string_view method, std::string_view url, std::string body,
                                 Headers headers, std::chrono::milliseconds timeout) {
  return impl_->run(ClientRequest{std::string(method), std::string(url), std::move(body),
                                  std::move(headers), timeout},
                    nullptr);
}

Result<Response> Client::request(ClientRequest request) { return impl_->run(std::move(request), nullptr); }

Result<Response> Client::get(std::string_view url, std::chrono::milliseconds timeout) {
  return request("GET", url, {}, {}, timeout);
}

Result<Response> Client::post_json(std::string_view url, std::string body,
                                   std::chrono::milliseconds timeout) {
  return request("POST", url, std::move(body), Headers{{"Content-Type", "application/json"}}, timeout);
}

Result<Response> Client::stream(ClientRequest request, StreamCallbacks callbacks) {
  return impl_->run(std::move(request), &callbacks);
}

}  // namespace pdserve::http
