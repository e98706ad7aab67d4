#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pretokenizer.h"

#include <stdexcept>

#include <pcre2.h>

#include <nlohmann/json.hpp>

namespace pdserve::tokenizer {
namespace {

// Unicode White_Space, the set Oniguruma's \s matches in UTF-8 mode.
constexpr std::string_view kWhiteSpaceRanges =
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

Result<std::string> translate_pattern(std::string_view p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      ++i;
      if (n == 's') {
        if (in_class) {
          out += kWhiteSpaceRanges;
        } else {
          out += "[";
          out += kWhiteSpaceRanges;
          out += "]";
        }
      } else if (n == 'S') {
        if (in_class) return make_error(ErrorCode::kUnsupported, "\\S inside a character class is not supported");
        out += "[^";
        out += kWhiteSpaceRanges;
        out += "]";
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      return make_error(ErrorCode::kUnsupported, "POSIX classes ([:name:]) are not supported");
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  if (in_class) return make_error(ErrorCode::kCorrupt, "unterminated character class in regex");
  return out;
}

Result<std::unique_ptr<Regex>> Regex::compile(std::string_view onig_pattern) {
  PDSERVE_ASSIGN_OR_RETURN(std::string pattern, translate_pattern(onig_pattern));
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF, &err,
                                   &offset, nullptr);
  if (!code)
    return make_error(ErrorCode::kUnsupported, "regex /{}/ does not compile at offset {}: {}", onig_pattern, offset,
                      pcre2_message(err));
  auto re = std::unique_ptr<Regex>(new Regex());
  re->code_ = code;
  // Without JIT (a PCRE2 built without it) matching still works, only slower.
  const int jrc = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  if (jrc != 0 && jrc != PCRE2_ERROR_JIT_BADOPTION)
    return make_error(ErrorCode::kInternal, "PCRE2 JIT failed for /{}/: {}", onig_pattern, pcre2_message(jrc));
  re->jit_ = jrc == 0;
  return re;
}

Regex::~Regex() { pcre2_code_free(code_); }

MatchScratch::MatchScratch() : md_(pcre2_match_data_create(1, nullptr)) {
  if (!md_) throw std::bad_alloc();
}

MatchScratch::~MatchScratch() {
  pcre2_match_data_free(md_);
  pcre2_match_context_free(ctx_);
  pcre2_jit_stack_free(stack_);
}

bool MatchScratch::find(const Regex& re, std::string_view subject, size_t start, size_t* begin, size_t* end) {
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  for (;;) {
    // The JIT fast path skips pcre2_match's option checks; NO_UTF_CHECK because encode() validated
    // the whole text once.
    const int rc = re.jit() ? pcre2_jit_match(re.code(), s, subject.size(), start, 0, md_, ctx_)
                            : pcre2_match(re.code(), s, subject.size(), start, PCRE2_NO_UTF_CHECK, md_, ctx_);
    if (rc > 0) {
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md_);
      *begin = ov[0];
      *end = ov[1];
      return true;
    }
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !stack_) {
      // The default 32 KiB machine stack ran out (very long pieces): retry once on 16 MiB.
      stack_ = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
      ctx_ = pcre2_match_context_create(nullptr);
      if (!stack_ || !ctx_) throw std::bad_alloc();
      pcre2_jit_stack_assign(ctx_, nullptr, stack_);
      continue;
    }
    throw std::runtime_error("regex match failed: " + pcre2_message(rc));
  }
}

Result<std::unique_ptr<PreTokenizer>> PreTokenizer::from_json(const nlohmann::json& j) {
  auto pre = std::unique_ptr<PreTokenizer>(new PreTokenizer());
  if (j.is_null()) return pre;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return make_error(ErrorCode::kCorrupt, "pre_tokenizer must be an object with a \"type\"");
  std::vector<nlohmann::json> steps;
  if (j["type"] == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      return make_error(ErrorCode::kCorrupt, "pre_tokenizer.pretokenizers must be an array");
    for (const auto& s : j["pretokenizers"]) steps.push_back(s);
  } else {
    steps.push_back(j);
  }
  bool byte_level_seen = false;
  for (size_t k = 0; k < steps.size(); ++k) {
    const auto& s = steps[k];
    const std::string type = s.is_object() ? s.value("type", std::string()) : std::string();
    if (byte_level_seen) return make_error(ErrorCode::kUnsupported, "pre_tokenizer: steps after ByteLevel are not supported");
    if (type == "Split") {
      const auto& pat = s.value("pattern", nlohmann::json());
      if (!pat.is_object() || !pat.contains("Regex") || !pat["Regex"].is_string())
        return make_error(ErrorCode::kUnsupported, "pre_tokenizer step {}: only Split with a Regex pattern is supported", k);
      if (s.value("behavior", std::string()) != "Isolated" || s.value("invert", false))
        return make_error(ErrorCode::kUnsupported, "pre_tokenizer step {}: only behavior Isolated without invert is supported",
                          k);
      auto re = Regex::compile(pat["Regex"].get<std::string>());
      if (!re) return re.error().with_context(fmt::format("pre_tokenizer step {}", k));
      pre->regexes_.push_back(std::move(*re));
    } else if (type == "ByteLevel") {
      if (s.value("use_regex", true))
        return make_error(ErrorCode::kUnsupported, "pre_tokenizer step {}: ByteLevel with use_regex = true is not supported", k);
      if (s.value("add_prefix_space", false))
        return make_error(ErrorCode::kUnsupported, "pre_tokenizer step {}: ByteLevel add_prefix_space is not supported", k);
      byte_level_seen = true;
    } else {
      return make_error(ErrorCode::kUnsupported, "pre_tokenizer step {}: type \"{}\" is not supported", k, type);
    }
  }
  if (!byte_level_seen) return make_error(ErrorCode::kUnsupported, "pre_tokenizer must end with ByteLevel");
  return pre;
}

}  // namespace pdserve::tokenizer
