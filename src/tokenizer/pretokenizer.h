// Pre-tokenization: cutting text (without added tokens) into the pieces BPE merges within.
//
// DeepSeek-V3 uses a Sequence of Split{Regex, Isolated} steps: each step cuts every piece of the
// previous step into its regex matches and the gaps between them (both kept), then ByteLevel maps
// bytes (use_regex false: no further cut). The regexes run on PCRE2 in UTF mode with JIT.
//
// Regex dialect: Hugging Face compiles these patterns with Oniguruma, where \s is Unicode
// White_Space (U+0009-000D, U+0020, U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F,
// U+205F, U+3000). PCRE2's \s differs (ASCII only, or without U+0085 under UCP), so \s and \S are
// rewritten into that explicit class before compiling. \p{..} classes need no rewriting.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "base/status.h"

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;
struct pcre2_real_jit_stack_8;
struct pcre2_real_match_context_8;

namespace pdserve::tokenizer {

// Rewrites Oniguruma's Unicode \s and \S into explicit classes PCRE2 reads the same way.
Result<std::string> translate_pattern(std::string_view onig_pattern);

class Regex {
 public:
  static Result<std::unique_ptr<Regex>> compile(std::string_view onig_pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  pcre2_real_code_8* code() const { return code_; }
  bool jit() const { return jit_; }

 private:
  Regex() = default;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

// Per-call match state (PCRE2 match data and, when a match needs it, a larger JIT stack). Not
// shared between threads; cheap to create.
class MatchScratch {
 public:
  MatchScratch();
  ~MatchScratch();
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
  // Finds the first match of `re` in subject[start, subject.size()): true with [*begin, *end).
  // Input must be valid UTF-8 (not re-checked).
  bool find(const Regex& re, std::string_view subject, size_t start, size_t* begin, size_t* end);

 private:
  pcre2_real_match_data_8* md_ = nullptr;
  pcre2_real_jit_stack_8* stack_ = nullptr;
  pcre2_real_match_context_8* ctx_ = nullptr;
};

class PreTokenizer {
 public:
  // Reads tokenizer.json's "pre_tokenizer" object.
  static Result<std::unique_ptr<PreTokenizer>> from_json(const nlohmann::json& pre_tokenizer);

  // Calls emit(piece) for every piece of `text`, in order; the pieces concatenate to `text`.
  template <class Emit>
  void split(std::string_view text, MatchScratch& scratch, Emit&& emit) const {
    split_level(0, text, scratch, emit);
  }
  size_t num_regexes() const { return regexes_.size(); }

 private:
  template <class Emit>
  void split_level(size_t level, std::string_view piece, MatchScratch& scratch, Emit& emit) const {
    if (piece.empty()) return;
    if (level == regexes_.size()) {
      emit(piece);
      return;
    }
    size_t pos = 0, b = 0, e = 0;
    while (pos < piece.size() && scratch.find(*regexes_[level], piece, pos, &b, &e)) {
      if (e == b) {  // an empty match cuts nothing; step over one character
        e = b + 1;
        while (e < piece.size() && (static_cast<unsigned char>(piece[e]) & 0xC0) == 0x80) ++e;
        split_level(level + 1, piece.substr(pos, e - pos), scratch, emit);
        pos = e;
        continue;
      }
      if (b > pos) split_level(level + 1, piece.substr(pos, b - pos), scratch, emit);
      split_level(level + 1, piece.substr(b, e - b), scratch, emit);
      pos = e;
    }
    if (pos < piece.size()) split_level(level + 1, piece.substr(pos), scratch, emit);
  }

  std::vector<std::unique_ptr<Regex>> regexes_;
};

}  // namespace pdserve::tokenizer
