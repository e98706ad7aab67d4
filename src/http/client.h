// HTTP/1.1 client: plain http:// only (the router, the benchmark and the tests talk to our own
// servers on a trusted network). Three layers over one implementation:
//
//   Connection   one keep-alive socket, used by one coroutine at a time (awaitable API)
//   AsyncClient  a pool of Connections keyed by host:port; many concurrent requests from one
//                thread (the benchmark runs ~1000 streams as coroutines on one io_context)
//   Client       blocking wrapper with its own io_context, for tools and tests
//
// Errors are values: transport failures (refused, reset, timeout, bad response) come back as
// ErrorCode::kIo, bad URLs as kInvalidArgument, https as kUnsupported. Any HTTP status, 4xx/5xx
// included, is a successful Response.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "base/status.h"
#include "http/message.h"
#include "http/sse.h"

namespace pdserve::http {

struct Url {
  std::string host;          // without brackets: "127.0.0.1", "::1", "localhost"
  std::uint16_t port = 80;
  std::string target = "/";  // path and query, as sent in the request line

  // "http://host[:port][/path][?query]"; IPv6 literals in brackets ("http://[::1]:8000/x").
  static Result<Url> parse(std::string_view url);
  // The Host header value and pool key: "127.0.0.1:8000", "[::1]:8000".
  std::string authority() const;
};

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{5'000};  // also bounded by the request's timeout
  std::size_t max_response_bytes = 256u << 20;       // larger non-streamed bodies are an error
  std::size_t max_idle_per_host = 1024;              // AsyncClient pool size per host:port
  // AsyncClient: how often a timer drops idle connections whose peer closed them, while any are
  // idle; 0: only when a request completes (at most once a second). A timer keeps the executor's
  // io_context busy, so only for a loop that runs until stopped (the router's), never Client's.
  std::chrono::milliseconds idle_sweep_interval{0};
  std::string user_agent = "pdserve";
};

// Not an aggregate on purpose: g++ 12 destroys aggregate by-value coroutine parameters twice
// (they would be freed twice inside request()/stream()); the constructors avoid that.
struct ClientRequest {
  ClientRequest() = default;
  ClientRequest(std::string method_, std::string url_, std::string body_ = {}, Headers headers_ = {},
                std::chrono::milliseconds timeout_ = std::chrono::milliseconds(60'000))
      : method(std::move(method_)), url(std::move(url_)), body(std::move(body_)),
        headers(std::move(headers_)), timeout(timeout_) {}

  std::string method = "GET";
  std::string url;
  std::string body;  // sent with Content-Length when non-empty or when the method is POST/PUT/PATCH
  Headers headers;   // Host, Content-Length, User-Agent are added unless given
  // Deadline for the whole exchange: connect, send, and the complete response (stream included).
  // Zero means no deadline.
  std::chrono::milliseconds timeout{60'000};
};

// Callbacks of a streamed request, called in order on the thread that runs the request. Any of
// them may return false to stop: the connection is then closed and the call returns the head.
// For a non-2xx status the body is collected into Response::body and on_data/on_event are not
// called (the router and the benchmark want the error text, not a stream).
struct StreamCallbacks {
  StreamCallbacks() = default;  // not an aggregate: see ClientRequest
  StreamCallbacks(std::function<bool(const Response&)> on_head_,
                  std::function<bool(std::string_view)> on_data_,
                  std::function<bool(const SseEvent&)> on_event_)
      : on_head(std::move(on_head_)), on_data(std::move(on_data_)), on_event(std::move(on_event_)) {}

  std::function<bool(const Response& head)> on_head;    // status and headers (body empty)
  std::function<bool(std::string_view data)> on_data;   // body bytes as they arrive (any split)
  std::function<bool(const SseEvent& event)> on_event;  // SSE events parsed from the body
  // Optional: called instead of on_data for the body's last bytes, when the response is complete
  // as they are handed over (a relay can then send its client the rest and the end at once).
  std::function<bool(std::string_view data)> on_last_data;
  // Optional backpressure (the router's relay): while it returns true, no more of the body is read
  // (checked after each chunk, then every millisecond), so a slow consumer slows the producer
  // down instead of making us buffer. The request's timeout still applies.
  std::function<bool()> hold;
};

// One keep-alive connection. Reconnects as needed (first use, a different host:port, the server
// closed it). A request on a reused connection that fails before any response byte arrived (the
// server closed the idle connection just as we sent) is retried once on a fresh connection.
// Not for concurrent use: one request at a time; any thread.
class Connection {
 public:
  explicit Connection(boost::asio::any_io_executor executor, ClientOptions options = {});
  ~Connection();
  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;

  boost::asio::awaitable<Result<Response>> request(ClientRequest request);
  boost::asio::awaitable<Result<Response>> stream(ClientRequest request, StreamCallbacks callbacks);

  // True if a socket is open, the last exchange left it reusable and the peer has not closed it
  // (a non-blocking peek).
  bool connected() const;
  // connected() without the peek: the last exchange left the socket open for reuse.
  bool reusable() const;
  // The connected peer's "host:port" authority, empty when not connected.
  const std::string& authority() const;
  void close();

 private:
  friend class AsyncClient;  // its pool runs requests with the URL it already parsed
  struct Impl;
  std::shared_ptr<Impl> impl_;  // shared: its deadline timer's completion holds a weak reference
};

// A pool of keep-alive Connections; requests may run concurrently (each takes its own
// connection). Thread-safe. Must outlive the requests running on it.
class AsyncClient {
 public:
  explicit AsyncClient(boost::asio::any_io_executor executor, ClientOptions options = {});
  ~AsyncClient();
  AsyncClient(const AsyncClient&) = delete;
  AsyncClient& operator=(const AsyncClient&) = delete;

  boost::asio::awaitable<Result<Response>> request(ClientRequest request);
  boost::asio::awaitable<Result<Response>> stream(ClientRequest request, StreamCallbacks callbacks);

  // Idle pooled connections (for tests).
  std::size_t idle_connections() const;

 private:
  friend class Connection;  // a pooled request gives its connection back to the pool itself
  struct Pool;
  std::shared_ptr<Pool> pool_;
};

// Blocking client; reuses connections between calls. Not thread-safe: one per thread.
class Client {
 public:
  explicit Client(ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Result<Response> request(std::string_view method, std::string_view url, std::string body = {},
                           Headers headers = {},
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000));
  Result<Response> request(ClientRequest request);
  Result<Response> get(std::string_view url,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000));
  // POST with Content-Type application/json.
  Result<Response> post_json(std::string_view url, std::string body,
                             std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000));
  Result<Response> stream(ClientRequest request, StreamCallbacks callbacks);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdserve::http
