#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {
namespace {

bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Word characters for single_word: ASCII letters, digits and '_', and every non-ASCII character
// that is not white space (a close approximation of Unicode alphanumerics for this purpose).
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z') || cp == '_';
  return !is_white_space(cp);
}

// The code point that ends just before text[pos] (pos > 0) and where it starts.
uint32_t prev_code_point(std::string_view text, size_t pos, size_t* start) {
  size_t i = pos - 1;
  while (i > 0 && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) --i;
  *start = i;
  size_t j = i;
  return next_code_point(text, j);
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) : tokens_(tokens) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].content.empty()) continue;
    add(tries_[tokens_[i].normalized ? 1 : 0], static_cast<int32_t>(i));
  }
}

void AddedTokenMatcher::add(Trie& t, int32_t index) {
  const std::string& s = tokens_[static_cast<size_t>(index)].content;
  t.first_byte[static_cast<uint8_t>(s[0])] = true;
  int32_t node = 0;
  for (unsigned char c : s) {
    auto& ch = t.nodes[static_cast<size_t>(node)].children;
    auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, int32_t{-1}),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it != ch.end() && it->first == c) {
      node = it->second;
    } else {
      const auto child = static_cast<int32_t>(t.nodes.size());
      ch.insert(it, {c, child});
      t.nodes.emplace_back();
      node = child;
    }
  }
  // Two added tokens with the same content: the first one listed wins.
  if (t.nodes[static_cast<size_t>(node)].token < 0) t.nodes[static_cast<size_t>(node)].token = index;
}

std::pair<size_t, int32_t> AddedTokenMatcher::longest_at(const Trie& t, std::string_view text, size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& ch = t.nodes[static_cast<size_t>(node)].children;
    const auto c = static_cast<uint8_t>(text[i]);
    auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, int32_t{-1}),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it == ch.end() || it->first != c) break;
    node = it->second;
    if (t.nodes[static_cast<size_t>(node)].token >= 0) best = {i + 1 - pos, t.nodes[static_cast<size_t>(node)].token};
  }
  return best;
}

void AddedTokenMatcher::split_pass(int pass, std::string_view text, size_t begin, size_t end,
                                   std::vector<Segment>& out) const {
  auto emit_text = [&](size_t b, size_t e) {
    if (b >= e) return;
    if (pass == 0)
      split_pass(1, text, b, e, out);
    else
      out.push_back(Segment{b, e, -1});
  };
  const Trie& t = tries_[pass];
  if (t.nodes.size() <= 1) {
    emit_text(begin, end);
    return;
  }
  const std::string_view bounded = text.substr(0, end);
  size_t gap = begin, pos = begin;
  while (pos < end) {
    if (!t.first_byte[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    auto [len, index] = longest_at(t, bounded, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[static_cast<size_t>(index)];
    size_t b = pos, e = pos + len;
    if (tok.single_word) {
      size_t ps = 0, k = e;
      const bool left_ok = b == 0 || !is_word_char(prev_code_point(text, b, &ps));
      const bool right_ok = e >= text.size() || !is_word_char(next_code_point(text, k));
      if (!left_ok || !right_ok) {
        pos = e;  // the match is consumed without becoming a token, as Hugging Face does
        continue;
      }
    }
    if (tok.lstrip) {
      size_t start = 0;
      while (b > gap && is_white_space(prev_code_point(text, b, &start))) b = start;
    }
    if (tok.rstrip) {
      size_t k = e;
      while (k < end && is_white_space(next_code_point(text, k))) e = k;
    }
    emit_text(gap, b);
    out.push_back(Segment{b, e, tok.id});
    gap = pos = e;
  }
  emit_text(gap, end);
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  split_pass(0, text, 0, text.size(), out);
}

}  // namespace pdserve::tokenizer
