// Parity with the real peer: the npm DeepSeek-V3 tokenizer (@lenml/tokenizers, the transformers.js
// code), run by Node on the same corpus. Ids must be equal id for id, decoding must give the same
// text, and decode(encode(s)) == s.
#include <gtest/gtest.h>

#include "corpus.h"
#include "test_util.h"

namespace pdserve::tokenizer {
namespace {

using testing::deepseek;

std::string excerpt(const std::string& s) {
  std::string e = s.substr(0, 60);
  for (char& c : e)
    if (c == '\n' || c == '\r') c = ' ';
  return e + (s.size() > 60 ? "..." : "");
}

TEST(Parity, CorpusHasWhatTheIssueAsksFor) {
  const auto corpus = testing::parity_corpus();
  EXPECT_GE(corpus.size(), 200u);
  size_t long_docs = 0, empty = 0, special = 0;
  for (const auto& s : corpus) {
    long_docs += s.size() >= 100000;
    empty += s.empty();
    special += s.find("<｜User｜>") != std::string::npos;
    EXPECT_EQ(find_invalid_utf8(s), std::string_view::npos);
  }
  EXPECT_GE(long_docs, 3u);
  EXPECT_GE(empty, 1u);
  EXPECT_GE(special, 2u);
}

TEST(Parity, EncodeMatchesNpmTokenizer) {
  auto tok = deepseek();
  ASSERT_TRUE(tok);
  const auto corpus = testing::parity_corpus();
  const nlohmann::json peer = testing::run_peer("encode", corpus);
  ASSERT_FALSE(peer.is_null());
  ASSERT_EQ(peer["ids"].size(), corpus.size());
  size_t mismatches = 0, tokens = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    auto ours = tok->encode(corpus[i], false);
    ASSERT_TRUE(ours.has_value()) << ours.error().message();
    const auto theirs = peer["ids"][i].get<std::vector<int32_t>>();
    tokens += ours->size();
    if (*ours != theirs) {
      size_t k = 0;
      while (k < ours->size() && k < theirs.size() && (*ours)[k] == theirs[k]) ++k;
      if (++mismatches <= 10)
        ADD_FAILURE() << "string " << i << " \"" << excerpt(corpus[i]) << "\": ids differ at position " << k << " (ours "
                      << (k < ours->size() ? std::to_string((*ours)[k]) : "end") << ", npm "
                      << (k < theirs.size() ? std::to_string(theirs[k]) : "end") << ")";
    }
    auto text = tok->decode(*ours, false);
    ASSERT_TRUE(text.has_value());
    EXPECT_EQ(*text, corpus[i]) << "round trip of string " << i;
    EXPECT_EQ(*text, peer["decoded"][i].get<std::string>()) << "decode of string " << i;
  }
  EXPECT_EQ(mismatches, 0u) << "of " << corpus.size() << " strings";
  EXPECT_GT(tokens, 50000u);
}

TEST(Parity, DecodeOfArbitraryIdsMatchesNpmTokenizer) {
  // Random ids cut characters anywhere and mix special tokens in: the lossy UTF-8 handling
  // (one U+FFFD per maximal ill-formed subpart) and skip_special_tokens must match.
  auto tok = deepseek();
  ASSERT_TRUE(tok);
  testing::SplitMix64 rng(7);
  std::vector<std::vector<int32_t>> lists;
  auto emoji = *tok->encode("😀👩‍💻中文한국어ไทย", false);
  for (int i = 0; i < 300; ++i) {
    std::vector<int32_t> ids;
    const size_t n = 1 + rng.below(24);
    for (size_t k = 0; k < n; ++k) {
      const uint64_t r = rng.below(10);
      if (r < 5)
        ids.push_back(static_cast<int32_t>(rng.below(128000)));
      else if (r < 7)
        ids.push_back(static_cast<int32_t>(rng.below(256)) + 94);  // mostly single-byte tokens
      else if (r < 9)
        ids.push_back(emoji[rng.below(emoji.size())]);
      else
        ids.push_back(static_cast<int32_t>(128000 + rng.below(815)));
    }
    lists.push_back(ids);
  }
  const nlohmann::json peer = testing::run_peer("decode", lists);
  ASSERT_FALSE(peer.is_null());
  size_t mismatches = 0;
  for (size_t i = 0; i < lists.size(); ++i) {
    for (bool skip : {false, true}) {
      auto ours = tok->decode(lists[i], skip);
      ASSERT_TRUE(ours.has_value()) << ours.error().message();
      const auto theirs = peer[skip ? "texts_skip" : "texts"][i].get<std::string>();
      if (*ours != theirs && ++mismatches <= 10)
        ADD_FAILURE() << "id list " << i << " skip=" << skip << ": \"" << *ours << "\" vs npm \"" << theirs << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

}  // namespace
}  // namespace pdserve::tokenizer
