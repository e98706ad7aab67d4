// Internal: the state of one request/response, shared between the Responder handle (called from
// any thread) and the connection's coroutine (on its strand).
//
// Why a mutex-protected queue and not a post() per call: the queue gives queued_bytes() and call
// order for free, lets the connection write a burst of chunks in one writev, and means a Responder
// never touches the io_context once its connection is gone (wake_ is only called for an exchange
// still attached). A wake-up already under way when the Server is destroyed is let through or
// refused by the server's WakeGate (server_core.h), so a scheduler thread holding a Responder
// while, or after, the Server goes is harmless.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "http/server.h"

namespace pdserve::http::detail {

// Test hook, null in production: runs on a Responder's thread between taking the connection's
// waker and calling it, the window in which the Server may be destroyed
// (tests/http/server_lifetime_test.cpp holds a thread there).
inline std::atomic<void (*)()> wake_test_hook{nullptr};

// What the connection writes, in order. `head` is the serialized status line + fields (kFull,
// kHead) or the chunk-size line (kChunk); `body` the payload.
struct OutItem {
  enum class Kind { kFull, kHead, kChunk, kEnd } kind;
  std::string head;
  std::string body;
  bool crlf = false;  // a chunk's trailing CRLF (absent for HTTP/1.0 raw streaming)
};

class Exchange {
 public:
  // Why the connection is woken: kDone, the response's last item was queued (a whole response, or
  // a stream's end): it may be written at once; kMore, part of a stream: the caller may queue more
  // right away, so the write can wait for the scheduler's next turn and take the burst in one
  // writev; kAbort: close now (backpressure overflow, abandoned stream).
  enum class Wake { kDone, kMore, kAbort };
  // Wakes the connection to write what was queued. One per connection, shared by its exchanges
  // (not built per request). Called right after mu_ is released (never under it): on the
  // connection's own thread it may resume the connection's coroutine at once, which takes mu_.
  using Waker = std::function<void(Wake why)>;
  // How the response is framed, known when the request has been read.
  struct Framing {
    bool keep_alive = true;  // the connection may stay open after the response
    bool chunked = true;     // HTTP/1.0 clients do not know chunked encoding: raw streams end by closing
    bool head_only = false;  // a HEAD request: the head is sent as for GET, the body never is
  };

  Exchange(std::shared_ptr<const ErrorBodyFn> error_body, std::size_t max_queued_bytes,
           std::shared_ptr<const Waker> wake, Framing framing)
      : error_body_(std::move(error_body)), max_queued_(max_queued_bytes), wake_(std::move(wake)),
        keep_alive_(framing.keep_alive), chunked_(framing.chunked), head_only_(framing.head_only) {}

  // Responder side: any thread.
  bool respond(int status, std::string body, std::string_view content_type, const Headers& extra);
  bool respond_error(int status, std::string_view message);
  bool start_stream(int status, std::string_view content_type, const Headers& extra);
  bool send_chunk(std::string data);
  bool end_stream();
  bool respond_stream(int status, std::string_view content_type, const Headers& extra, std::string data);
  void set_on_close(std::function<void()> callback);
  bool is_open() const;
  std::size_t queued_bytes() const { return queued_.load(std::memory_order_relaxed); }
  // Every Responder handle is gone.
  void abandon();

  // Connection side: its strand.
  struct Taken {
    std::vector<OutItem> items;
    bool abort = false;  // close now: backpressure overflow, or abandoned mid-stream
  };
  Taken take();
  void written(std::size_t payload_bytes) { queued_.fetch_sub(payload_bytes, std::memory_order_relaxed); }
  // Whether the connection should stay open after the response (decided when the head is built).
  void set_keep_alive(bool keep_alive);
  bool keep_alive() const;
  // The final item was written: the response is complete; on_close will never fire.
  void finish();
  // The connection ended before the response completed: fires on_close once.
  void fail();

 private:
  enum class State { kNone, kFull, kStreaming, kEnded };
  // Queues `item`; wakes the connection (after releasing `lock`) unless a wake-up is pending or
  // `wake` is false (more items of the same response follow under the same lock).
  bool push(std::unique_lock<std::mutex>& lock, OutItem item, std::size_t payload_bytes, bool wake = true);
  // Under mu_: a stream (or a whole one) may begin with `status`.
  bool may_start_stream(int status) const;
  // Under mu_: a stream's head item (a raw HTTP/1.0 stream also ends the connection).
  OutItem stream_head(int status, std::string_view content_type, const Headers& extra);
  // A chunk's item (size line, payload, CRLF) for `data` (non-empty), and the stream's end.
  OutItem chunk_item(std::string data) const;
  OutItem end_item() const;
  // Closes the connection under the response (the queue bound was hit, or a stream was
  // abandoned): wakes the connection with kAbort after releasing `lock`; returns false.
  bool abort_response(std::unique_lock<std::mutex>& lock);
  // Releases `lock`, then calls wake_ (taken while locked).
  void wake_unlocked(std::unique_lock<std::mutex>& lock, Wake why);
  // `chunked`: a stream's head (Transfer-Encoding, and Cache-Control: no-cache unless `extra` has one).
  std::string make_head(int status, std::string_view content_type, const Headers& extra,
                        bool chunked, std::size_t content_length) const;

  const std::shared_ptr<const ErrorBodyFn> error_body_;
  const std::size_t max_queued_;
  mutable std::mutex mu_;
  std::shared_ptr<const Waker> wake_;  // taken under mu_ while attached_, called after
  State state_ = State::kNone;
  bool attached_ = true;   // the connection still serves this exchange
  bool completed_ = false;
  bool abort_ = false;
  bool wake_pending_ = false;
  bool keep_alive_;
  const bool chunked_;
  const bool head_only_;
  std::vector<OutItem> items_;
  std::atomic<std::size_t> queued_{0};
  std::function<void()> on_close_;
};

// The handle given to handlers. Its destruction (the last copy dropped) tells the exchange that
// nobody will answer.
class ConnectionResponder final : public Responder {
 public:
  explicit ConnectionResponder(std::shared_ptr<Exchange> exchange) : ex_(std::move(exchange)) {}
  ~ConnectionResponder() override { ex_->abandon(); }

  bool respond(int status, std::string body, std::string_view content_type, const Headers& extra) override {
    return ex_->respond(status, std::move(body), content_type, extra);
  }
  bool respond_error(int status, std::string_view message) override { return ex_->respond_error(status, message); }
  bool start_stream(int status, std::string_view content_type, const Headers& extra) override {
    return ex_->start_stream(status, content_type, extra);
  }
  bool send_chunk(std::string data) override { return ex_->send_chunk(std::move(data)); }
  bool end_stream() override { return ex_->end_stream(); }
  bool respond_stream(int status, std::string_view content_type, std::string data, const Headers& extra) override {
    return ex_->respond_stream(status, content_type, extra, std::move(data));
  }
  void on_close(std::function<void()> callback) override { ex_->set_on_close(std::move(callback)); }
  bool is_open() const override { return ex_->is_open(); }
  std::size_t queued_bytes() const override { return ex_->queued_bytes(); }

 private:
  std::shared_ptr<Exchange> ex_;
};

}  // namespace pdserve::http::detail
