#include "http/exchange.h"

#include <charconv>

#include "base/logging.h"

namespace pdserve::http::detail {

namespace {

// A CR or LF in a field would let a value inject headers (or a body) into the response.
// A loop: find_first_of calls memchr once per character of `s`.
bool field_is_safe(std::string_view s) {
  for (const char c : s)
    if (c == '\r' || c == '\n') return false;
  return true;
}

// 1xx, 204 and 304 responses never carry a body (RFC 9110 §6.4.1).
bool status_allows_body(int status) { return !(status < 200 || status == 204 || status == 304); }

// Heads and chunk lines are built with appends and to_chars: fmt::format cost ~2 k instructions
// per response, more than the rest of the head.
void append_number(std::string& out, std::size_t n, int base = 10) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n, base);
  out.append(digits, end);
}

}  // namespace

std::string Exchange::make_head(int status, std::string_view content_type, const Headers& extra,
                                bool chunked, std::size_t content_length) const {
  std::string h;
  h.reserve(128 + content_type.size());
  h.append("HTTP/1.1 ");
  append_number(h, static_cast<std::size_t>(status));
  h.append(" ").append(reason_phrase(status)).append("\r\n");
  if (!content_type.empty() && field_is_safe(content_type)) {
    h.append("Content-Type: ").append(content_type).append("\r\n");
  }
  if (status_allows_body(status)) {
    if (chunked) {
      if (chunked_) h.append("Transfer-Encoding: chunked\r\n");
    } else {
      h.append("Content-Length: ");
      append_number(h, content_length);
      h.append("\r\n");
    }
  }
  if (!keep_alive_) h.append("Connection: close\r\n");
  for (const auto& [name, value] : extra) {
    if (name.empty() || !field_is_safe(name) || !field_is_safe(value) ||
        name.find(':') != std::string::npos) {
      log::warning("http: dropping unsafe response header '{}'", name);
      continue;
    }
    // The framing fields are ours: a second Content-Length would corrupt the response.
    if (iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
        iequals(name, "connection")) {
      continue;
    }
    h.append(name).append(": ").append(value).append("\r\n");
  }
  // Proxies (nginx) buffer responses unless told otherwise; SSE must reach the client per event.
  if (chunked && !extra.contains("cache-control")) h.append("Cache-Control: no-cache\r\n");
  h.append("\r\n");
  return h;
}

bool Exchange::push(std::unique_lock<std::mutex>& lock, OutItem item, std::size_t payload_bytes, bool wake) {
  queued_.fetch_add(payload_bytes, std::memory_order_relaxed);
  const OutItem::Kind item_kind = item.kind;
  // take() swaps the queue out with each wake-up, so it starts empty every time: a relayed stream
  // queues head, chunk and end, and growing 1 -> 2 -> 4 cost two allocations and moves per request.
  if (items_.capacity() == 0) items_.reserve(4);
  items_.push_back(std::move(item));
  if (wake && !wake_pending_) {
    wake_pending_ = true;
    const bool done = item_kind == OutItem::Kind::kFull || item_kind == OutItem::Kind::kEnd;
    wake_unlocked(lock, done ? Wake::kDone : Wake::kMore);
  }
  return true;
}

void Exchange::wake_unlocked(std::unique_lock<std::mutex>& lock, Wake why) {
  // A copy: once the lock is released, finish() or fail() on the connection's thread may drop wake_.
  std::shared_ptr<const Waker> wake = wake_;
  lock.unlock();
  if (auto hook = wake_test_hook.load(std::memory_order_relaxed)) hook();
  (*wake)(why);
}

bool Exchange::respond(int status, std::string body, std::string_view content_type,
                       const Headers& extra) {
  std::unique_lock lock(mu_);
  if (!attached_ || abort_ || state_ != State::kNone || status < 100 || status > 999) return false;
  if (!status_allows_body(status)) body.clear();
  state_ = State::kFull;
  std::string head = make_head(status, content_type, extra, false, body.size());
  if (head_only_) body.clear();
  std::size_t n = body.size();
  return push(lock, OutItem{OutItem::Kind::kFull, std::move(head), std::move(body)}, n);
}

bool Exchange::respond_error(int status, std::string_view message) {
  return respond(status, (*error_body_)(status, message), "application/json", {});
}

bool Exchange::start_stream(int status, std::string_view content_type, const Headers& extra) {
  std::unique_lock lock(mu_);
  if (!may_start_stream(status)) return false;
  state_ = State::kStreaming;
  return push(lock, stream_head(status, content_type, extra), 0);
}

bool Exchange::send_chunk(std::string data) {
  std::unique_lock lock(mu_);
  if (!attached_ || abort_ || state_ != State::kStreaming) return false;
  if (data.empty() || head_only_) return true;
  if (queued_.load(std::memory_order_relaxed) + data.size() > max_queued_) return abort_response(lock);
  std::size_t n = data.size();
  return push(lock, chunk_item(std::move(data)), n);
}

bool Exchange::respond_stream(int status, std::string_view content_type, const Headers& extra, std::string data) {
  std::unique_lock lock(mu_);
  if (!may_start_stream(status)) return false;
  state_ = State::kEnded;
  const std::size_t n = head_only_ ? 0 : data.size();
  if (queued_.load(std::memory_order_relaxed) + n > max_queued_) return abort_response(lock);  // as send_chunk
  // One wake-up, with the last item: the connection writes the three at once.
  push(lock, stream_head(status, content_type, extra), 0, false);
  if (n > 0) push(lock, chunk_item(std::move(data)), n, false);
  return push(lock, end_item(), 0);
}

bool Exchange::end_stream() {
  std::unique_lock lock(mu_);
  if (!attached_ || abort_ || state_ != State::kStreaming) return false;
  state_ = State::kEnded;
  return push(lock, end_item(), 0);
}

bool Exchange::may_start_stream(int status) const {
  return attached_ && !abort_ && state_ == State::kNone && status_allows_body(status) && status <= 999;
}

OutItem Exchange::stream_head(int status, std::string_view content_type, const Headers& extra) {
  if (!chunked_) keep_alive_ = false;  // the end of a raw stream is the end of the connection
  return OutItem{OutItem::Kind::kHead, make_head(status, content_type, extra, true, 0), {}};
}

OutItem Exchange::chunk_item(std::string data) const {
  std::string size_line;
  if (chunked_) {
    append_number(size_line, data.size(), 16);
    size_line.append("\r\n");
  }
  return OutItem{OutItem::Kind::kChunk, std::move(size_line), std::move(data), chunked_};
}

OutItem Exchange::end_item() const { return OutItem{OutItem::Kind::kEnd, chunked_ && !head_only_ ? "0\r\n\r\n" : "", {}}; }

bool Exchange::abort_response(std::unique_lock<std::mutex>& lock) {
  // The client reads slower than we produce: closing is the only bound that cannot be defeated
  // by a stalled reader; on_close tells the producer to stop.
  abort_ = true;
  // Always wake, even if a wake-up is pending: the connection may be stuck in a write and only
  // this wake-up closes the socket under it.
  wake_pending_ = true;
  wake_unlocked(lock, Wake::kAbort);
  return false;
}

void Exchange::set_on_close(std::function<void()> callback) {
  std::unique_lock lock(mu_);
  if (completed_) return;
  if (!attached_) {
    // Already gone: run it now, so a handler that registers late still learns of it.
    lock.unlock();
    if (callback) callback();
    return;
  }
  on_close_ = std::move(callback);
}

bool Exchange::is_open() const {
  std::lock_guard lock(mu_);
  return attached_ && !abort_ && !completed_;
}

void Exchange::abandon() {
  std::unique_lock lock(mu_);
  if (!attached_) return;
  if (state_ == State::kNone) {
    std::string body = (*error_body_)(500, "the request handler did not produce a response");
    std::size_t n = body.size();
    state_ = State::kFull;
    push(lock, OutItem{OutItem::Kind::kFull, make_head(500, "application/json", {}, false, n),
                        std::move(body)},
                n);
  } else if (state_ == State::kStreaming) {
    abort_response(lock);  // ending the stream cleanly would present a truncated stream as complete
  }
}

Exchange::Taken Exchange::take() {
  std::lock_guard lock(mu_);
  wake_pending_ = false;
  Taken t;
  t.items.swap(items_);
  t.abort = abort_;
  return t;
}

void Exchange::set_keep_alive(bool keep_alive) {
  std::lock_guard lock(mu_);
  keep_alive_ = keep_alive;
}

bool Exchange::keep_alive() const {
  std::lock_guard lock(mu_);
  return keep_alive_;
}

void Exchange::finish() {
  std::lock_guard lock(mu_);
  completed_ = true;
  attached_ = false;
  on_close_ = nullptr;  // may hold references the handler wants released
  // Nothing more to write: a Responder that outlives the connection never wakes anything.
  wake_ = nullptr;
}

void Exchange::fail() {
  std::function<void()> callback;
  {
    std::lock_guard lock(mu_);
    if (!attached_) return;
    attached_ = false;
    callback.swap(on_close_);
    wake_ = nullptr;  // see finish()
    items_.clear();
    queued_.store(0, std::memory_order_relaxed);
  }
  if (callback) {
    try {
      callback();
    } catch (const std::exception& e) {
      log::error("http: on_close callback threw: {}", e.what());
    }
  }
}

}  // namespace pdserve::http::detail
