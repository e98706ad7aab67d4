#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include "base/thread_pool.h"
#include "corpus.h"
#include "test_util.h"
#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {
namespace {

using testing::deepseek;

std::vector<int32_t> enc(std::string_view text, bool special = false) {
  auto r = deepseek()->encode(text, special);
  EXPECT_TRUE(r.has_value()) << r.error().message();
  return r ? *r : std::vector<int32_t>{};
}

std::string dec(const std::vector<int32_t>& ids, bool skip = false) {
  auto r = deepseek()->decode(ids, skip);
  EXPECT_TRUE(r.has_value()) << r.error().message();
  return r ? *r : std::string();
}

TEST(Tokenizer, LoadsDeepseekV3Facts) {
  auto tok = deepseek();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->vocab_size(), 128815);
  EXPECT_EQ(tok->token_to_id("<｜User｜>"), 128803);
  EXPECT_EQ(tok->token_to_id("<｜Assistant｜>"), 128804);
  EXPECT_EQ(tok->token_to_id("<｜tool▁sep｜>"), 128814);
  EXPECT_EQ(tok->token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_FALSE(tok->token_to_id("no such token here"));
  EXPECT_EQ(tok->id_to_token(128803), "<｜User｜>");
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_FALSE(tok->is_special(128803));  // chat markers are not flagged special in DeepSeek's files
  EXPECT_EQ(tok->bos_token(), "<｜begin▁of▁sentence｜>");
  EXPECT_FALSE(tok->chat_template().empty());
}

TEST(Tokenizer, EncodesKnownIds) {
  // Ids as the npm tokenizer and Hugging Face produce them.
  EXPECT_EQ(enc("Hello, my dog is cute"), (std::vector<int32_t>{19923, 14, 1026, 6397, 344, 33125}));
  EXPECT_EQ(enc("12345 你好世界 <｜User｜>hi<｜end▁of▁sentence｜>"),
            (std::vector<int32_t>{6895, 1883, 223, 30594, 3427, 223, 128803, 6366, 1}));
  EXPECT_TRUE(enc("").empty());
}

TEST(Tokenizer, AddSpecialTokensPrependsBosOnly) {
  auto plain = enc("Hello");
  auto with = enc("Hello", true);
  ASSERT_EQ(with.size(), plain.size() + 1);
  EXPECT_EQ(with[0], 0);
  EXPECT_EQ(std::vector<int32_t>(with.begin() + 1, with.end()), plain);
  EXPECT_EQ(enc("", true), (std::vector<int32_t>{0}));
}

TEST(Tokenizer, DigitsSplitInThrees) {
  auto ids = enc("1234567");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(dec({ids[0]}), "123");
  EXPECT_EQ(dec({ids[1]}), "456");
  EXPECT_EQ(dec({ids[2]}), "7");
}

TEST(Tokenizer, RoundTripsText) {
  for (std::string s : {"Hello world", "  leading and trailing  ", "中文和日本語のテキスト", "emoji 👩🏽‍💻 ok",
                        "tabs\tand\r\nnewlines\r", "<｜User｜>x<｜Assistant｜>"}) {
    EXPECT_EQ(dec(enc(s)), s);
  }
}

TEST(Tokenizer, SkipSpecialTokensDropsOnlySpecial) {
  auto ids = enc("<｜begin▁of▁sentence｜>a<｜User｜>b<｜end▁of▁sentence｜>");
  EXPECT_EQ(dec(ids, true), "a<｜User｜>b");
  EXPECT_EQ(dec(ids, false), "<｜begin▁of▁sentence｜>a<｜User｜>b<｜end▁of▁sentence｜>");
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  for (std::string bad : {std::string("abc\xff"), std::string("\xc3"), std::string("a\xed\xa0\x80"),
                          std::string("\xc0\xaf"), std::string("ok\xf4\x90\x80\x80")}) {
    auto r = deepseek()->encode(bad, false);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find("invalid UTF-8 at byte"), std::string::npos) << r.error().message();
  }
  auto r = deepseek()->encode(std::string("abc\xff", 4), false);
  EXPECT_NE(r.error().message().find("byte 3"), std::string::npos) << r.error().message();
}

TEST(Tokenizer, OutOfVocabIdIsAnError) {
  for (int32_t bad : {-1, 128815, 129279, 1 << 30}) {
    std::vector<int32_t> ids{19923, bad};
    auto r = deepseek()->decode(ids, false);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find(std::to_string(bad)), std::string::npos) << r.error().message();
  }
}

TEST(Tokenizer, DecodeOfCutCharacterIsReplacement) {
  auto ids = enc("😀");  // 4 bytes, more than one token
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(dec({ids[0]}), "\xEF\xBF\xBD");
}

TEST(Tokenizer, LongRunsDoNotFail) {
  const std::string spaces(100000, ' ');
  auto ids = enc(spaces);
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(dec(ids), spaces);
  std::string thai;
  while (thai.size() < 100000) thai += "ภาษาไทยเป็นภาษาที่มีวรรณยุกต์";
  EXPECT_EQ(dec(enc(thai)), thai);
  const std::string letters(100000, 'a');
  EXPECT_EQ(dec(enc(letters)), letters);
}

TEST(Tokenizer, RandomTextRoundTripsAndRandomBytesNeverCrash) {
  testing::SplitMix64 rng(5);
  for (int i = 0; i < 300; ++i) {
    std::string text;  // any scalar value, assigned or not
    const size_t n = rng.below(60);
    for (size_t k = 0; k < n; ++k) {
      uint32_t cp = static_cast<uint32_t>(rng.below(4) ? rng.below(0x3000) : rng.below(0x110000));
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0x20;
      append_code_point(cp, text);
    }
    EXPECT_EQ(dec(enc(text)), text) << i;
    std::string bytes;  // random bytes: valid or not, never a crash, and an error exactly when invalid
    for (size_t k = 0; k < n; ++k) bytes.push_back(static_cast<char>(rng.below(256)));
    auto r = deepseek()->encode(bytes, false);
    EXPECT_EQ(r.has_value(), find_invalid_utf8(bytes) == std::string_view::npos);
    if (r) {
      EXPECT_EQ(dec(*r), bytes);
    }
  }
}

TEST(Tokenizer, BatchEncodeEqualsEncode) {
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back("text number " + std::to_string(i * 7919) + " 你好 " + std::string(i, 'x'));
  ThreadPool pool(2);
  auto batch = deepseek()->batch_encode(std::span<const std::string>(texts), true, pool);
  ASSERT_TRUE(batch.has_value());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ((*batch)[i], enc(texts[i], true)) << i;
  texts[5] = "bad \xff";
  auto err = deepseek()->batch_encode(std::span<const std::string>(texts), true, pool);
  ASSERT_FALSE(err.has_value());
  EXPECT_NE(err.error().message().find("text 5"), std::string::npos) << err.error().message();
}

TEST(Tokenizer, LoadErrorsNameTheFile) {
  auto missing = Tokenizer::load("/nonexistent/dir");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message().find("tokenizer.json"), std::string::npos);

  const auto dir = testing::temp_path("bad_tok");
  std::filesystem::create_directories(dir);
  testing::write_file(dir / "tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
  auto bad = Tokenizer::load(dir);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(bad.error().message().find("BPE"), std::string::npos) << bad.error().message();
}

TEST(Tokenizer, ResolvesTokenizerDir) {
  EXPECT_EQ(resolve_tokenizer_dir("/m/x", ""), std::filesystem::path("/m/x"));
  EXPECT_EQ(resolve_tokenizer_dir("/m/x/config.json", ""), std::filesystem::path("/m/x"));
  EXPECT_EQ(resolve_tokenizer_dir("/m/x", "/t"), std::filesystem::path("/t"));
}

}  // namespace
}  // namespace pdserve::tokenizer
