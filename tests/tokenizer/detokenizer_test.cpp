// IncrementalDetokenizer properties: pieces never contain a broken character, and their
// concatenation (plus finish()) equals decode(all ids), for random ids and multi-byte text.
#include <gtest/gtest.h>

#include "corpus.h"
#include "test_util.h"
#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {
namespace {

using testing::deepseek;

// Feeds `ids` in random chunk sizes and checks every piece and the total.
void check_stream(const std::vector<int32_t>& ids, bool skip, testing::SplitMix64& rng) {
  IncrementalDetokenizer detok(deepseek(), skip);
  std::string streamed;
  for (size_t i = 0; i < ids.size();) {
    const size_t n = std::min(ids.size() - i, static_cast<size_t>(1 + rng.below(3)));
    auto piece = detok.feed(std::span<const int32_t>(ids.data() + i, n));
    ASSERT_TRUE(piece.has_value()) << piece.error().message();
    ASSERT_EQ(find_invalid_utf8(*piece), std::string_view::npos) << "piece is not valid UTF-8";
    EXPECT_LE(detok.pending_bytes(), 3u);
    streamed += *piece;
    i += n;
  }
  streamed += detok.finish();
  auto all = deepseek()->decode(ids, skip);
  ASSERT_TRUE(all.has_value());
  EXPECT_EQ(streamed, *all);
}

TEST(Detokenizer, MultiByteTextStreamsWithoutBrokenCharacters) {
  ASSERT_TRUE(deepseek());
  testing::SplitMix64 rng(1);
  for (const std::string& text : testing::seed_texts()) {
    auto ids = *deepseek()->encode(text, false);
    IncrementalDetokenizer detok(deepseek(), false);
    std::string streamed;
    for (int32_t id : ids) {
      auto piece = detok.feed(id);
      ASSERT_TRUE(piece.has_value());
      ASSERT_EQ(find_invalid_utf8(*piece), std::string_view::npos);
      // Decoding valid text never needs a replacement character.
      EXPECT_EQ(piece->find("\xEF\xBF\xBD"), std::string::npos);
      streamed += *piece;
    }
    EXPECT_EQ(detok.finish(), "");
    EXPECT_EQ(streamed, text);
    check_stream(ids, false, rng);
  }
}

TEST(Detokenizer, EmojiIsHeldUntilComplete) {
  ASSERT_TRUE(deepseek());
  auto ids = *deepseek()->encode("😀", false);  // one character, several byte-level tokens
  ASSERT_GE(ids.size(), 2u);
  IncrementalDetokenizer detok(deepseek(), false);
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(*detok.feed(ids[i]), "");
  EXPECT_GT(detok.pending_bytes(), 0u);
  EXPECT_EQ(*detok.feed(ids.back()), "😀");
  EXPECT_EQ(detok.pending_bytes(), 0u);
}

TEST(Detokenizer, RandomIdsConcatenateToDecode) {
  ASSERT_TRUE(deepseek());
  testing::SplitMix64 rng(99);
  // Byte-level tokens of multi-byte characters, random vocab ids and special tokens.
  auto pieces = *deepseek()->encode("😀👩🏽‍💻中文ไทย한국어 ñ", false);
  for (int round = 0; round < 500; ++round) {
    std::vector<int32_t> ids;
    const size_t n = 1 + rng.below(40);
    for (size_t k = 0; k < n; ++k) {
      const uint64_t r = rng.below(10);
      if (r < 4)
        ids.push_back(static_cast<int32_t>(rng.below(128000)));
      else if (r < 7)
        ids.push_back(static_cast<int32_t>(94 + rng.below(256)));
      else if (r < 9)
        ids.push_back(pieces[rng.below(pieces.size())]);
      else
        ids.push_back(static_cast<int32_t>(rng.below(3)));  // BOS / EOS / pad (special)
    }
    check_stream(ids, round % 2 == 0, rng);
  }
}

TEST(Detokenizer, OutOfVocabIdIsAnErrorAndKeepsState) {
  ASSERT_TRUE(deepseek());
  auto ids = *deepseek()->encode("é", false);
  IncrementalDetokenizer detok(deepseek(), false);
  ASSERT_EQ(ids.size(), 1u);
  auto bytes = *deepseek()->encode("😀", false);
  EXPECT_EQ(*detok.feed(bytes[0]), "");
  const size_t pending = detok.pending_bytes();
  auto bad = detok.feed(std::vector<int32_t>{bytes[1], 128815});
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(detok.pending_bytes(), pending);
  std::string rest;
  for (size_t i = 1; i < bytes.size(); ++i) rest += *detok.feed(bytes[i]);
  EXPECT_EQ(rest, "😀");
}

TEST(Detokenizer, FinishFlushesAnUnfinishedCharacterAsReplacement) {
  ASSERT_TRUE(deepseek());
  auto bytes = *deepseek()->encode("😀", false);
  IncrementalDetokenizer detok(deepseek(), false);
  EXPECT_EQ(*detok.feed(bytes[0]), "");
  EXPECT_EQ(detok.finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(detok.pending_bytes(), 0u);
}

}  // namespace
}  // namespace pdserve::tokenizer
