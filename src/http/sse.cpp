#include "http/sse.h"

#include <charconv>

namespace pdserve::http {

namespace {
constexpr std::string_view kBom = "\xEF\xBB\xBF";
}

bool SseParser::feed(std::string_view bytes, const std::function<void(const SseEvent&)>& on_event) {
  std::size_t i = 0;
  while (i < bytes.size() && !failed_) {
    if (skip_lf_) {
      // "\r\n" split across two feeds: the '\n' ends no second line.
      skip_lf_ = false;
      if (bytes[i] == '\n') {
        ++i;
        continue;
      }
    }
    std::size_t end = bytes.find_first_of("\r\n", i);
    std::size_t stop = end == std::string_view::npos ? bytes.size() : end;
    line_.append(bytes.data() + i, stop - i);
    if (line_.size() + event_bytes_ > max_event_bytes_) {
      failed_ = true;
      break;
    }
    if (end == std::string_view::npos) break;
    skip_lf_ = bytes[end] == '\r';
    i = end + 1;
    process_line(on_event);
  }
  return !failed_;
}

std::vector<SseEvent> SseParser::feed(std::string_view bytes) {
  std::vector<SseEvent> out;
  feed(bytes, [&](const SseEvent& e) { out.push_back(e); });
  return out;
}

void SseParser::process_line(const std::function<void(const SseEvent&)>& on_event) {
  if (at_stream_start_) {
    at_stream_start_ = false;
    if (std::string_view(line_).substr(0, kBom.size()) == kBom) line_.erase(0, kBom.size());
  }
  if (line_.empty()) {
    // Blank line: dispatch. Per spec an event without data lines is dropped, and the event type
    // resets either way.
    if (has_data_) {
      pending_.id = last_id_;
      on_event(pending_);
    }
    pending_ = SseEvent{};
    has_data_ = false;
    has_fields_ = false;
    event_bytes_ = 0;
    return;
  }
  event_bytes_ += line_.size();
  has_fields_ = true;
  if (line_[0] == ':') {  // comment
    line_.clear();
    return;
  }
  std::string_view line(line_);
  std::string_view field = line, value;
  if (auto colon = line.find(':'); colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) pending_.data.push_back('\n');
    pending_.data.append(value);
    has_data_ = true;
  } else if (field == "event") {
    pending_.event.assign(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) last_id_.assign(value);
  } else if (field == "retry") {
    int ms = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), ms);
    bool digits_only = !value.empty() && value.find_first_not_of("0123456789") == std::string_view::npos;
    if (digits_only && ec == std::errc() && p == value.data() + value.size()) pending_.retry = ms;
  }
  // Unknown fields are ignored, as the spec says.
  line_.clear();
}

std::string sse_event(std::string_view data, std::string_view event, std::string_view id) {
  std::string out;
  out.reserve(data.size() + 16);
  if (!event.empty()) out.append("event: ").append(event).push_back('\n');
  if (!id.empty()) out.append("id: ").append(id).push_back('\n');
  // Each line of the payload becomes its own data line (any of \r\n, \r, \n ends a line on the
  // wire); the parser joins them back with '\n'.
  std::size_t start = 0;
  while (true) {
    std::size_t end = data.find_first_of("\r\n", start);
    out.append("data: ").append(data.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    out.push_back('\n');
    if (end == std::string_view::npos) break;
    start = end + 1;
    if (data[end] == '\r' && start < data.size() && data[start] == '\n') ++start;
  }
  out.push_back('\n');
  return out;
}

std::string sse_comment(std::string_view text) {
  std::string out(": ");
  for (char c : text) out.push_back(c == '\n' || c == '\r' ? ' ' : c);
  out.append("\n\n");
  return out;
}

}  // namespace pdserve::http
