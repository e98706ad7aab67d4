#include "router/body_scan.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace pdserve::router {

using json = nlohmann::json;

namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The top-level members the proxy reads.
enum class Key { kOther, kStream, kRid, kText, kInputIds };

Key key_of(std::string_view name) {
  if (name == "stream") return Key::kStream;
  if (name == "rid") return Key::kRid;
  if (name == "text") return Key::kText;
  if (name == "input_ids") return Key::kInputIds;
  return Key::kOther;
}

// A validating scanner over the text. Containers are tracked on an explicit stack, so deep
// nesting costs memory, not the thread's stack.
class Scanner {
 public:
  Scanner(std::string_view text, RouteKind route) : p_(text.data()), end_(text.data() + text.size()), route_(route) {}

  std::optional<BodyScan> run() {
    // nlohmann skips a UTF-8 byte order mark at the start.
    if (end_ - p_ >= 3 && std::string_view(p_, 3) == "\xEF\xBB\xBF") p_ += 3;
    std::string stack;  // '{' or '[' per open container
    Key key = Key::kOther;
    const char* member_value = nullptr;
    for (;;) {
      // A value is expected here.
      skip_ws();
      if (p_ == end_) return std::nullopt;
      const char c = *p_;
      if (stack.empty() && c != '{') return std::nullopt;  // the body must be an object
      if (stack.size() == 1) {
        member_value = p_;
        begin_member(key, c);
      } else if (stack.size() == 2 && stack[1] == '[') {
        item_of_member(key, c);
      }
      bool opened = false;
      if (c == '{' || c == '[') {
        ++p_;
        skip_ws();
        if (p_ < end_ && *p_ == (c == '{' ? '}' : ']')) {
          ++p_;  // empty container: a complete value
        } else {
          stack.push_back(c);
          opened = true;
        }
      } else if (!scalar()) {
        return std::nullopt;
      }
      if (opened && c == '[') continue;  // its first item
      bool need_key = opened;            // an object's first member
      // After a complete value: close containers, or go on with the next item or member.
      while (!need_key) {
        if (stack.size() == 1 && member_value != nullptr) {
          end_member(key, member_value);
          member_value = nullptr;
        }
        skip_ws();
        if (stack.empty()) return p_ == end_ ? std::optional<BodyScan>(finish()) : std::nullopt;
        if (p_ == end_) return std::nullopt;
        const char top = stack.back();
        if (*p_ == ',') {
          ++p_;
          if (top == '{') need_key = true;
          break;
        }
        if (*p_ != (top == '{' ? '}' : ']')) return std::nullopt;
        ++p_;
        stack.pop_back();
      }
      if (!need_key) continue;
      skip_ws();
      if (p_ == end_ || *p_ != '"') return std::nullopt;
      const char* name = p_;
      bool escaped = false;
      if (!string(escaped)) return std::nullopt;
      if (stack.size() == 1) key = escaped ? key_of(unescaped(name, p_)) : key_of(std::string_view(name + 1, p_ - name - 2));
      skip_ws();
      if (p_ == end_ || *p_ != ':') return std::nullopt;
      ++p_;
    }
  }

 private:
  void skip_ws() {
    while (p_ < end_ && is_ws(*p_)) ++p_;
  }

  bool literal(std::string_view word) {
    if (static_cast<std::size_t>(end_ - p_) < word.size() || std::string_view(p_, word.size()) != word) return false;
    p_ += word.size();
    return true;
  }

  bool scalar() {
    switch (*p_) {
      case '"': {
        bool escaped = false;
        return string(escaped);
      }
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, and finite as a double (nlohmann refuses an
  // overflowing number).
  bool number() {
    const char* start = p_;
    if (*p_ == '-') ++p_;
    if (p_ == end_ || !is_digit(*p_)) return false;
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ < end_ && is_digit(*p_)) ++p_;
    }
    const std::size_t int_digits = static_cast<std::size_t>(p_ - start);
    if (p_ < end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !is_digit(*p_)) return false;
      while (p_ < end_ && is_digit(*p_)) ++p_;
    }
    bool exponent = false;
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      exponent = true;
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !is_digit(*p_)) return false;
      while (p_ < end_ && is_digit(*p_)) ++p_;
    }
    // Only an exponent or ~300 integer digits can leave the double range: check those exactly.
    if (exponent || int_digits > 300) {
      const std::string copy(start, p_);
      return std::isfinite(std::strtod(copy.c_str(), nullptr));
    }
    return true;
  }

  // A string from its opening quote; p_ ends after the closing quote. Checks escapes (with
  // surrogate pairs), control characters and UTF-8 (RFC 3629: no overlong forms, no encoded
  // surrogates, nothing above U+10FFFF).
  bool string(bool& escaped) {
    ++p_;
    for (;;) {
      if (p_ == end_) return false;
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        escaped = true;
        if (!escape()) return false;
        continue;
      }
      if (c < 0x80) {
        ++p_;
        continue;
      }
      if (!utf8()) return false;
    }
  }

  bool escape() {
    ++p_;
    if (p_ == end_) return false;
    const char e = *p_++;
    if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') return true;
    if (e != 'u') return false;
    int unit = hex4();
    if (unit < 0) return false;
    if (unit >= 0xDC00 && unit <= 0xDFFF) return false;  // a low surrogate without its high half
    if (unit >= 0xD800 && unit <= 0xDBFF) {
      if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return false;
      p_ += 2;
      int low = hex4();
      if (low < 0xDC00 || low > 0xDFFF) return false;
    }
    return true;
  }

  int hex4() {
    if (end_ - p_ < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; ++i) {
      int h = hex_value(p_[i]);
      if (h < 0) return -1;
      v = v * 16 + h;
    }
    p_ += 4;
    return v;
  }

  bool utf8() {
    const auto b = [&](std::ptrdiff_t i) { return static_cast<unsigned char>(p_[i]); };
    const auto in = [&](std::ptrdiff_t i, unsigned lo, unsigned hi) { return p_ + i < end_ && b(i) >= lo && b(i) <= hi; };
    const unsigned c = b(0);
    int n = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c == 0xE0) {
      if (!in(1, 0xA0, 0xBF)) return false;
      n = 2;
    } else if (c == 0xED) {
      if (!in(1, 0x80, 0x9F)) return false;
      n = 2;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      n = 2;
    } else if (c == 0xF0) {
      if (!in(1, 0x90, 0xBF)) return false;
      n = 3;
    } else if (c >= 0xF1 && c <= 0xF3) {
      n = 3;
    } else if (c == 0xF4) {
      if (!in(1, 0x80, 0x8F)) return false;
      n = 3;
    } else {
      return false;
    }
    for (int i = 1; i <= n; ++i)
      if (!in(i, 0x80, 0xBF)) return false;
    p_ += n + 1;
    return true;
  }

  // A member name with escapes, decoded (rare: clients do not escape plain names).
  static std::string unescaped(const char* from, const char* to) {
    json v = json::parse(std::string_view(from, static_cast<std::size_t>(to - from)), nullptr, false);
    return v.is_string() ? v.get<std::string>() : std::string();
  }

  // A top-level member's value starts with `c`; a repeated member starts over (the last counts).
  void begin_member(Key key, char c) {
    switch (key) {
      case Key::kStream: out_.stream = c == 't'; break;
      case Key::kRid: out_.rid = c == 'n' ? BodyScan::Rid::kNull : BodyScan::Rid::kPresent; break;
      case Key::kText:
        text_list_ = c == '[';
        text_items_ = 0;
        break;
      case Key::kInputIds:
        ids_list_ = c == '[';
        ids_items_ = 0;
        ids_nested_ = false;
        break;
      case Key::kOther: break;
    }
  }

  // An item of a top-level member's list starts with `c`.
  void item_of_member(Key key, char c) {
    if (key == Key::kText) ++text_items_;
    if (key == Key::kInputIds) {
      if (ids_items_ == 0) ids_nested_ = c == '[';
      ++ids_items_;
    }
  }

  void end_member(Key key, const char* value) {
    if (key == Key::kRid) rid_value_ = std::string_view(value, static_cast<std::size_t>(p_ - value));
  }

  BodyScan finish() {
    if (route_ == RouteKind::kGenerate) {
      if (text_list_) {
        out_.batch = text_items_;
      } else if (ids_list_ && ids_items_ > 0 && ids_nested_) {
        out_.batch = ids_items_;
      }
    }
    if (out_.rid == BodyScan::Rid::kPresent) {
      // The client chose its rids (rare): read them with the DOM parser.
      json probe = json::object({{"rid", json::parse(rid_value_, nullptr, false)}});
      out_.client_rids = scan_dom(probe, route_).client_rids;
    }
    return std::move(out_);
  }

  const char* p_;
  const char* const end_;
  const RouteKind route_;
  BodyScan out_;
  bool text_list_ = false, ids_list_ = false, ids_nested_ = false;
  std::size_t text_items_ = 0, ids_items_ = 0;
  std::string_view rid_value_;
};

}  // namespace

std::optional<BodyScan> scan_body(std::string_view text, RouteKind route) { return Scanner(text, route).run(); }

BodyScan scan_dom(const json& body, RouteKind route) {
  BodyScan out;
  if (auto s = body.find("stream"); s != body.end()) out.stream = s->is_boolean() && s->get<bool>();
  out.batch = batch_size(body, route);
  if (auto it = body.find("rid"); it != body.end()) {
    out.rid = it->is_null() ? BodyScan::Rid::kNull : BodyScan::Rid::kPresent;
    if (it->is_string()) out.client_rids.push_back(it->get<std::string>());
    if (it->is_array())
      for (const auto& r : *it)
        if (r.is_string()) out.client_rids.push_back(r.get<std::string>());
  }
  return out;
}

std::optional<std::vector<std::string>> ensure_rid_text(std::string& raw, const BodyScan& scan, std::size_t batch,
                                                       const std::vector<uint64_t>& rooms) {
  if (scan.rid == BodyScan::Rid::kNull) return std::nullopt;  // replacing a member's value needs the DOM
  if (scan.rid == BodyScan::Rid::kPresent) return scan.client_rids;  // the text stays as it is
  // The body is an object, so only whitespace (or a UTF-8 byte order mark, which the parser
  // skips) comes before its opening brace.
  const std::size_t open = raw.find('{');
  if (open == std::string::npos) return std::nullopt;
  // The same rids ensure_rid() makes, written as JSON directly (they need no escaping): this
  // runs once per request, and building them through a json value cost more than the insertion.
  std::vector<std::string> rids;
  std::string member = batch == 0 ? "\"rid\":" : "\"rid\":[";
  for (std::size_t i = 0; i < std::max<std::size_t>(batch, 1); ++i) {
    rids.push_back(generated_rid(rooms.at(i)));
    if (i > 0) member += ',';
    member.append("\"").append(rids.back()).append("\"");
  }
  if (batch > 0) member += ']';
  const std::size_t next = raw.find_first_not_of(" \t\r\n", open + 1);
  const bool empty_object = next != std::string::npos && raw[next] == '}';
  if (!empty_object) member += ',';
  raw.insert(open + 1, member);
  return rids;
}

}  // namespace pdserve::router
