#include "tokenizer/utf8.h"

#include <cstring>

namespace pdserve::tokenizer {
namespace {

// Well-formed sequences (Unicode Table 3-7): the total length a lead byte announces and the range
// its second byte must fall in; 0 for bytes that cannot start a character.
struct Lead {
  uint8_t length, lo, hi;
};

inline Lead lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

inline bool all_ascii8(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return (w & 0x8080808080808080ull) == 0;
}

}  // namespace

size_t utf8_char_length(std::string_view s, size_t* maximal_subpart) {
  const Lead lead = lead_info(static_cast<uint8_t>(s[0]));
  if (lead.length == 0) {
    if (maximal_subpart) *maximal_subpart = 1;
    return 0;
  }
  for (size_t k = 1; k < lead.length; ++k) {
    if (k >= s.size()) {
      if (maximal_subpart) *maximal_subpart = k;
      return 0;
    }
    const auto b = static_cast<uint8_t>(s[k]);
    const uint8_t lo = k == 1 ? lead.lo : 0x80, hi = k == 1 ? lead.hi : 0xBF;
    if (b < lo || b > hi) {
      if (maximal_subpart) *maximal_subpart = k;
      return 0;
    }
  }
  return lead.length;
}

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    if (i + 8 <= n && all_ascii8(s.data() + i)) {
      i += 8;
      continue;
    }
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t len = utf8_char_length(s.substr(i), nullptr);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

void append_utf8_lossy(std::string_view bytes, std::string& out) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  size_t i = 0, run = 0;  // [run, i) is valid and not yet copied
  const size_t n = bytes.size();
  out.reserve(out.size() + n);
  while (i < n) {
    if (i + 8 <= n && all_ascii8(bytes.data() + i)) {
      i += 8;
      continue;
    }
    if (static_cast<uint8_t>(bytes[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t bad = 0;
    const size_t len = utf8_char_length(bytes.substr(i), &bad);
    if (len) {
      i += len;
      continue;
    }
    out.append(bytes.data() + run, i - run);
    out.append(kReplacement, 3);
    i += bad;
    run = i;
  }
  out.append(bytes.data() + run, n - run);
}

size_t incomplete_utf8_tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t i = n > 3 ? n - 3 : 0; i < n; ++i) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0xC2 || b > 0xF4) continue;
    size_t bad = 0;
    if (utf8_char_length(s.substr(i), &bad) == 0 && i + bad == n) return i;
  }
  return n;
}

void append_code_point(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace pdserve::tokenizer
