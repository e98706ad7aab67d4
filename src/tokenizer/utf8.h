// UTF-8 validation and Hugging Face–compatible lossy decoding.
//
// Lossy decoding replaces each "maximal subpart" of an ill-formed sequence with one U+FFFD (the
// Unicode recommendation that Rust's String::from_utf8_lossy and WHATWG's TextDecoder follow), so
// decode() output equals the reference byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pdserve::tokenizer {

// Offset of the first byte that starts an ill-formed sequence (overlong forms, surrogates and
// code points above U+10FFFF are ill-formed), or npos if `s` is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);

// The length of the well-formed character starting at s[0] (1..4), or 0 if none starts there.
// `maximal_subpart` gets the length of the maximal ill-formed subpart when 0 is returned (>= 1;
// it may reach the end of `s` when the sequence is only truncated).
size_t utf8_char_length(std::string_view s, size_t* maximal_subpart);

// Appends `bytes` to `out` with U+FFFD for every maximal ill-formed subpart.
void append_utf8_lossy(std::string_view bytes, std::string& out);

// The start of the trailing bytes of `s` that are a proper prefix of a well-formed character (a
// character that more bytes could still complete), or s.size() if there are none.
size_t incomplete_utf8_tail(std::string_view s);

// Decodes one code point of valid UTF-8 at s[i] and advances i.
inline uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  if (b0 < 0xE0) {
    uint32_t cp = ((b0 & 0x1Fu) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3Fu);
    i += 2;
    return cp;
  }
  if (b0 < 0xF0) {
    uint32_t cp = ((b0 & 0x0Fu) << 12) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 6) |
                  (static_cast<uint8_t>(s[i + 2]) & 0x3Fu);
    i += 3;
    return cp;
  }
  uint32_t cp = ((b0 & 0x07u) << 18) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 12) |
                ((static_cast<uint8_t>(s[i + 2]) & 0x3Fu) << 6) | (static_cast<uint8_t>(s[i + 3]) & 0x3Fu);
  i += 4;
  return cp;
}

// Appends the UTF-8 encoding of a code point (assumed valid).
void append_code_point(uint32_t cp, std::string& out);

}  // namespace pdserve::tokenizer
