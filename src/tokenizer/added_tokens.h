// Added tokens (special tokens and the chat markers) found in raw text before pre-tokenization.
//
// As in Hugging Face's AddedVocabulary: tokens not marked `normalized` are matched first on the
// raw text, then the `normalized` ones on the gaps left (the DeepSeek normalizer is the identity,
// so both see the same text). Each pass is leftmost-longest: at the first position where some
// token matches, the longest matching token wins, and scanning resumes after it. `lstrip` /
// `rstrip` extend a match over the whitespace before / after it; `single_word` drops a match that
// touches a word character on either side.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pdserve::tokenizer {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, normalized = false, single_word = false;
};

// A run of the text: an added token (id >= 0) or plain text to pre-tokenize (id == -1).
struct Segment {
  size_t begin, end;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);
  // Appends the segments of `text` (valid UTF-8) to `out`, in order, covering the text.
  void split(std::string_view text, std::vector<Segment>& out) const;
  bool empty() const { return tries_[0].nodes.size() <= 1 && tries_[1].nodes.size() <= 1; }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                 // index into tokens_
  };
  struct Trie {
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
  };
  void add(Trie& t, int32_t index);
  // Longest token of `t` starting at text[pos]: its length and token index, or {0, -1}.
  std::pair<size_t, int32_t> longest_at(const Trie& t, std::string_view text, size_t pos) const;
  void split_pass(int pass, std::string_view text, size_t begin, size_t end, std::vector<Segment>& out) const;

  std::vector<AddedToken> tokens_;
  Trie tries_[2];  // [0] not normalized (matched first), [1] normalized
};

}  // namespace pdserve::tokenizer
