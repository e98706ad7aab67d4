// HTTP/1.1 server: Boost.Beast on an Asio io_context run by a few threads, one C++20 coroutine per
// connection (no thread per connection), routing on exact path + method, full or chunked (SSE)
// responses that may be produced later from any thread.
//
// Handler model. A handler runs on an I/O thread and must not block: it gets the parsed Request
// and a shared_ptr<Responder>, and answers now or hands the Responder to another thread (the
// tokenizer manager / scheduler) which answers later. Responder calls are thread-safe; their
// effects reach the socket in call order. See docs/http.md for examples.
//
// Error bodies (404, 405, 413, 401, ...) all come from ServerOptions::error_body so that one
// function decides the JSON shape (SGLang/OpenAI compatibility lives in server/, not here).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "http/message.h"

namespace boost::asio {
class io_context;
}

namespace pdserve::http {

namespace detail {
class ServerCore;
}

struct Request {
  std::string method;          // "GET", "POST", ... as sent (methods are case-sensitive)
  std::string target;          // raw request target: "/generate?x=1"
  std::string path;            // target up to '?', not percent-decoded (routes match it exactly)
  std::map<std::string, std::string> query;  // decoded query parameters; a repeated key keeps the last
  Headers headers;             // case-insensitive lookup: headers.get("content-type")
  std::string body;
  std::string remote_address;  // "127.0.0.1:52144" or "[::1]:52144"
  bool keep_alive = true;      // what the client asked for

  // The value of query parameter `name`, if present.
  std::optional<std::string_view> query_param(std::string_view name) const;
};

// The answer side of one request. Every method may be called from any thread. Methods return
// false when the call had no effect: the connection is gone, or the call is out of order
// (respond after start_stream, send_chunk before start_stream, anything after the end).
//
// Lifetime: the handler owns the Responder (through the shared_ptr). If every copy is dropped
// before the response is complete, the server answers 500 (nothing sent yet) or closes the
// connection (stream unfinished, so the client sees a truncated stream, never a "complete" one).
// Do not capture the shared_ptr inside its own on_close callback: that cycle keeps it alive until
// the client disconnects.
class Responder {
 public:
  virtual ~Responder() = default;

  // A complete response with Content-Length. `extra` headers are added as given. The content type
  // and `extra` are copied into the response head during the call (views: no string per call).
  virtual bool respond(int status, std::string body, std::string_view content_type = "application/json",
                       const Headers& extra = {}) = 0;
  // respond(status, error_body(status, message), "application/json"): the server's error format.
  virtual bool respond_error(int status, std::string_view message) = 0;

  // Starts a chunked response (Transfer-Encoding: chunked). For SSE pass "text/event-stream"
  // and send sse_event(...) strings as chunks; the server adds Cache-Control: no-cache unless
  // `extra` has one.
  virtual bool start_stream(int status, std::string_view content_type = "text/event-stream",
                            const Headers& extra = {}) = 0;
  // Queues one chunk (empty data is ignored: a zero-length chunk would end the stream).
  // Backpressure: queued_bytes() grows while the client reads slower than we produce; past
  // ServerOptions::max_queued_bytes the connection is closed (on_close fires) and this returns
  // false, so a stalled client cannot make the server buffer without limit.
  virtual bool send_chunk(std::string data) = 0;
  // Ends the stream (the terminating zero-length chunk). The response is complete once written.
  virtual bool end_stream() = 0;
  // A whole stream at once: start_stream, send_chunk(data), end_stream, queued together so that
  // the connection writes them in one go (a relay that already holds an upstream's complete
  // stream: one wake-up instead of a posted one for the head and another for the end).
  virtual bool respond_stream(int status, std::string_view content_type, std::string data, const Headers& extra = {}) {
    if (!start_stream(status, content_type, extra)) return false;
    if (!send_chunk(std::move(data))) return false;
    return end_stream();
  }

  // `callback` runs once, on an I/O thread (or right here if the connection is already gone),
  // if the connection ends before the response was completely written: client disconnect,
  // write error/timeout, backpressure overflow, or Server::stop() after its grace period.
  // It never runs after a complete response. Only the last registered callback is kept.
  // Keep it short and non-blocking (e.g. tell the scheduler to abort the request).
  virtual void on_close(std::function<void()> callback) = 0;
  // True while the client is connected and the response is not yet complete.
  virtual bool is_open() const = 0;
  // Bytes accepted by respond/send_chunk and not yet written to the socket.
  virtual std::size_t queued_bytes() const = 0;
};

using Handler = std::function<void(Request request, std::shared_ptr<Responder> responder)>;

// Makes the body of every error response the server writes itself (404, 405, 413, 401, 400, 500,
// 503, ...) and of Responder::respond_error.
using ErrorBodyFn = std::function<std::string(int status, std::string_view message)>;
// {"error": {"message": "<message>", "type": "<reason phrase>", "code": <status>}}
std::string default_error_body(int status, std::string_view message);

struct ServerOptions {
  std::string host = "127.0.0.1";  // IPv4/IPv6 literal ("0.0.0.0", "::", "::1") or a host name
  std::uint16_t port = 0;          // 0: an ephemeral port; read Server::port() after start()
  int io_threads = 1;
  std::size_t max_body_bytes = 64u << 20;  // larger request bodies get 413 (Content-Length or chunked)
  std::size_t max_header_bytes = 64u << 10;  // larger request heads get 431
  // From the first byte of a request (or from accept) to the end of its header; a client that
  // trickles header bytes (slowloris) is disconnected when it runs out.
  std::chrono::milliseconds header_timeout{30'000};
  std::chrono::milliseconds body_timeout{60'000};   // end of header to end of body
  std::chrono::milliseconds idle_timeout{60'000};   // keep-alive: between requests
  std::chrono::milliseconds write_timeout{60'000};  // one write to the socket (a stalled reader)
  std::size_t max_connections = 10'000;  // past it a request is answered 503 and the connection closed
  std::size_t max_queued_bytes = 16u << 20;  // per response, see Responder::send_chunk
  ErrorBodyFn error_body = default_error_body;
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();  // stop(0ms) if still running
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Routes are registered before start() (the table is read without locks afterwards).
  // A request for a known path with another method gets 405 with an Allow header; an unknown
  // path gets 404. Registering the same method+path twice replaces the handler. HEAD requests
  // go to the GET handler unless a HEAD route exists (the body is not sent).
  void route(std::string_view method, std::string path, Handler handler);
  // Matches paths that start with `prefix` (e.g. "/v1/models/" for /v1/models/{model}) when no
  // exact route matched; the longest prefix wins.
  void route_prefix(std::string_view method, std::string prefix, Handler handler);

  // Binds and listens (port() is valid afterwards), then starts io_threads threads running the
  // I/O loop, and returns. An error if the address cannot be bound or start() was called before.
  Status start();
  // Blocks until the server has stopped (stop() finished, from any thread or a signal callback).
  void wait();
  // start() + wait().
  Status run();

  // Graceful shutdown: stops accepting, closes idle keep-alive connections, lets in-flight
  // responses finish for up to `grace`, then closes what is left (their on_close fires) and
  // joins the I/O threads. Idempotent and thread-safe. Called from an I/O thread (a handler,
  // a Responder callback) it only starts the shutdown and returns; wait() then blocks until done.
  void stop(std::chrono::milliseconds grace);

  std::uint16_t port() const;
  // The I/O loop the server's threads run, for handlers that do their own asynchronous work on
  // those same threads instead of handing it to another thread (the router's upstream requests).
  // Work posted to it must be finished or abandoned by stop(); it lives as long as the Server.
  boost::asio::io_context& io_context();
  // Open connections right now (for tests and metrics).
  std::size_t connection_count() const;
  bool stopping() const;

 private:
  std::shared_ptr<detail::ServerCore> core_;
};

// Wraps `next` with an API key check: the request must carry "Authorization: Bearer <api_key>",
// else it is answered 401 through the server's error body. An empty api_key disables the check
// (SGLang's --api-key is optional), returning `next` unchanged.
Handler require_api_key(std::string api_key, Handler next);

}  // namespace pdserve::http
