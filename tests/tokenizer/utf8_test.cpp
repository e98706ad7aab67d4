#include "tokenizer/utf8.h"

#include <gtest/gtest.h>

namespace pdserve::tokenizer {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

std::string lossy(std::string_view s) {
  std::string out;
  append_utf8_lossy(s, out);
  return out;
}

TEST(Utf8, FindsTheFirstInvalidByte) {
  EXPECT_EQ(find_invalid_utf8("plain ascii text, long enough for the fast path"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("中文 😀 ñ"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("abcdefghij\xff"), 10u);
  EXPECT_EQ(find_invalid_utf8("\xc0\x80"), 0u);               // overlong
  EXPECT_EQ(find_invalid_utf8("a\xed\xa0\x80"), 1u);          // surrogate
  EXPECT_EQ(find_invalid_utf8("ab\xf4\x90\x80\x80"), 2u);     // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("abc\xe4\xb8"), 3u);            // truncated
  EXPECT_EQ(find_invalid_utf8(std::string("a\0b", 3)), std::string_view::npos);
}

TEST(Utf8, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(lossy("ok"), "ok");
  EXPECT_EQ(lossy("\xff"), kFffd);
  EXPECT_EQ(lossy("a\xe4\xb8z"), "a" + kFffd + "z");          // truncated 3-byte: one U+FFFD
  EXPECT_EQ(lossy("\xe0\x80"), kFffd + kFffd);                 // E0 80 is not a prefix: two
  EXPECT_EQ(lossy("\xf0\x9f\x98"), kFffd);                     // truncated 4-byte: one
  EXPECT_EQ(lossy("\xed\xa0\x80"), kFffd + kFffd + kFffd);     // surrogate: three
  EXPECT_EQ(lossy("\x80\x80"), kFffd + kFffd);
}

TEST(Utf8, IncompleteTailOnlyForCompletablePrefixes) {
  EXPECT_EQ(incomplete_utf8_tail("abc"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("ab\xf0\x9f\x98"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("ab\xe4"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("ab\xe0\x80"), 4u);  // cannot complete
  EXPECT_EQ(incomplete_utf8_tail("ab\x80"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("\xf0\x9f\x98\x80"), 4u);  // complete
}

TEST(Utf8, EncodesCodePoints) {
  std::string s;
  for (uint32_t cp : {0x41u, 0xE9u, 0x4E2Du, 0x1F600u}) append_code_point(cp, s);
  EXPECT_EQ(s, "Aé中😀");
  size_t i = 0;
  EXPECT_EQ(next_code_point(s, i), 0x41u);
  EXPECT_EQ(next_code_point(s, i), 0xE9u);
  EXPECT_EQ(next_code_point(s, i), 0x4E2Du);
  EXPECT_EQ(next_code_point(s, i), 0x1F600u);
  EXPECT_EQ(i, s.size());
}

}  // namespace
}  // namespace pdserve::tokenizer
