// Server-sent events (text/event-stream): an incremental parser for clients and a formatter for
// servers.
//
// The parser follows the WHATWG "event stream interpretation" rules, because the peers we talk to
// (SGLang, OpenAI-compatible servers, the npm OpenAI client) are written against them:
// lines end in "\r\n", "\n" or "\r"; a line starting with ':' is a comment; "field: value" drops
// one space after the colon; several "data" lines join with '\n'; an empty line dispatches the
// event; an event with no data lines is not dispatched. "[DONE]" is ordinary data: the caller
// decides what it means.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pdserve::http {

struct SseEvent {
  std::string event;  // the "event:" field; empty means the default type ("message")
  std::string data;   // data lines joined by '\n' (no trailing newline)
  std::string id;     // the last "id:" seen on the stream (it persists across events, per spec)
  std::optional<int> retry;  // "retry:" of this event, if it had a valid one
};

class SseParser {
 public:
  // An event (or a single line) larger than this puts the parser in the failed state: a peer that
  // never sends a newline must not make us buffer without limit.
  explicit SseParser(std::size_t max_event_bytes = 64u << 20) : max_event_bytes_(max_event_bytes) {}

  // Feeds the next bytes of the stream, in any split; calls on_event for every complete event in
  // order. Returns false (and ignores all further input) once the size limit was exceeded.
  bool feed(std::string_view bytes, const std::function<void(const SseEvent&)>& on_event);
  // Convenience: returns the completed events.
  std::vector<SseEvent> feed(std::string_view bytes);

  // True if bytes of an unfinished event are buffered (at end of stream they are dropped, as the
  // spec says; a caller may report a truncated stream).
  bool has_partial() const { return !line_.empty() || has_fields_; }
  bool failed() const { return failed_; }
  const std::string& last_event_id() const { return last_id_; }

 private:
  void process_line(const std::function<void(const SseEvent&)>& on_event);

  std::size_t max_event_bytes_;
  std::string line_;         // current line without its terminator
  bool skip_lf_ = false;     // the previous chunk ended in '\r': a leading '\n' belongs to it
  bool at_stream_start_ = true;  // a UTF-8 BOM may start the stream
  bool has_fields_ = false;  // any field line since the last dispatch
  bool has_data_ = false;
  std::size_t event_bytes_ = 0;
  SseEvent pending_;
  std::string last_id_;
  bool failed_ = false;
};

// Formats one event for the wire: "data: <line>\n" per line of `data` (so a payload containing
// newlines survives), optional "event:"/"id:" lines, and the blank line. SGLang sends exactly
// "data: <json>\n\n", which is what sse_event("<json>") gives.
std::string sse_event(std::string_view data, std::string_view event = {}, std::string_view id = {});
// A comment line (": text\n\n"); useful as a keep-alive ping that parsers ignore.
std::string sse_comment(std::string_view text);

}  // namespace pdserve::http
