#include "tokenizer/tokenizer.h"

#include <exception>
#include <optional>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "base/json.h"
#include "base/logging.h"
#include "base/thread_pool.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {
namespace {

enum Kind : uint8_t { kNone = 0, kModel = 1, kAdded = 2, kAddedSpecial = 3 };

// One word cache per thread, tied to the tokenizer that last used it (WordCache::bind). Kept per
// thread so that encoding never takes a lock; the cost is one cache per (thread, tokenizer).
WordCache& thread_word_cache(const std::shared_ptr<int>& owner) {
  thread_local WordCache cache;
  cache.bind(owner);
  return cache;
}

// tokenizer_config.json names tokens as a string or as {"__type": "AddedToken", "content": ...}.
std::optional<std::string> config_token(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

Error invalid_utf8(std::string_view text, size_t offset) {
  return make_error(ErrorCode::kInvalidArgument, "invalid UTF-8 at byte {} of {} (byte 0x{:02X})", offset, text.size(),
                    static_cast<unsigned>(static_cast<uint8_t>(text[offset])));
}

}  // namespace

std::filesystem::path resolve_tokenizer_dir(const std::filesystem::path& model_path,
                                            const std::filesystem::path& tokenizer_path) {
  if (!tokenizer_path.empty()) return tokenizer_path;
  if (model_path.filename() == "config.json") return model_path.parent_path();
  return model_path;
}

Tokenizer::Tokenizer() : cache_key_(std::make_shared<int>(0)) {}
Tokenizer::~Tokenizer() = default;

// A function-try-block: the readers below use nlohmann's value()/operator[], which throw
// type_error when a field has another type than the file format says ("special": "yes", a
// normalizer that is a number); a malformed file must be an error value, not an exception.
Result<std::shared_ptr<Tokenizer>> Tokenizer::load(const std::filesystem::path& dir) try {
  const auto json_path = dir / "tokenizer.json";
  auto doc = read_json_file(json_path);
  if (!doc) return doc.error();
  const nlohmann::json& j = *doc;
  auto where = [&](const Error& e) { return e.with_context(json_path.string()); };
  if (!j.is_object() || !j.contains("model")) return where(make_error(ErrorCode::kCorrupt, "no \"model\" object"));

  auto tok = std::shared_ptr<Tokenizer>(new Tokenizer());
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const auto& n = j["normalizer"];
    const bool empty_sequence = n.value("type", std::string()) == "Sequence" && n.contains("normalizers") &&
                                n["normalizers"].is_array() && n["normalizers"].empty();
    if (!empty_sequence) return where(make_error(ErrorCode::kUnsupported, "only an empty normalizer is supported"));
  }
  if (j.contains("decoder") && !j["decoder"].is_null() && j["decoder"].value("type", std::string()) != "ByteLevel")
    return where(make_error(ErrorCode::kUnsupported, "only the ByteLevel decoder is supported"));

  auto bpe = BpeModel::from_json(j["model"], tok->id_bytes_);
  if (!bpe) return where(bpe.error());
  tok->bpe_ = std::move(*bpe);
  tok->id_kind_.assign(tok->id_bytes_.size(), kModel);
  auto pre = PreTokenizer::from_json(j.value("pre_tokenizer", nlohmann::json()));
  if (!pre) return where(pre.error());
  tok->pre_ = std::move(*pre);

  std::vector<AddedToken> added;
  if (j.contains("added_tokens")) {
    if (!j["added_tokens"].is_array()) return where(make_error(ErrorCode::kCorrupt, "added_tokens must be an array"));
    for (size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const auto& a = j["added_tokens"][i];
      const std::string src = fmt::format("added_tokens[{}]", i);
      AddedToken t;
      auto id = get_field<int32_t>(a, "id", src);
      auto content = get_field<std::string>(a, "content", src);
      if (!id) return where(id.error());
      if (!content) return where(content.error());
      if (*id < 0 || *id >= kMaxTokenIds)
        return where(make_error(ErrorCode::kCorrupt, "{}: id {} is not in [0, {})", src, *id, kMaxTokenIds));
      if (find_invalid_utf8(*content) != std::string_view::npos || content->empty())
        return where(make_error(ErrorCode::kCorrupt, "{}: content must be non-empty UTF-8", src));
      t.id = *id;
      t.content = *content;
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.normalized = a.value("normalized", !t.special);
      t.single_word = a.value("single_word", false);
      const auto uid = static_cast<size_t>(t.id);
      if (uid >= tok->id_bytes_.size()) {
        tok->id_bytes_.resize(uid + 1);
        tok->id_kind_.resize(uid + 1, kNone);
      }
      tok->id_bytes_[uid] = t.content;
      tok->id_kind_[uid] = t.special ? kAddedSpecial : kAdded;
      tok->added_by_content_[t.content] = t.id;
      added.push_back(std::move(t));
    }
  }
  tok->added_ = std::make_unique<AddedTokenMatcher>(added);
  tok->vocab_size_ = static_cast<int64_t>(tok->id_bytes_.size());

  // tokenizer_config.json: BOS/EOS and whether encode(add_special_tokens) adds them; the template.
  const auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    auto cfg = read_json_file(config_path);
    if (!cfg) return cfg.error();
    auto cwhere = [&](const Error& e) { return e.with_context(config_path.string()); };
    auto resolve = [&](const char* key, std::string& text, int32_t& id) -> Status {
      auto name = config_token(*cfg, key);
      if (!name) return ok_status();
      auto found = tok->token_to_id(*name);
      if (!found) return make_error(ErrorCode::kCorrupt, "{} \"{}\" is not a token of tokenizer.json", key, *name);
      text = *name;
      id = *found;
      return ok_status();
    };
    if (auto s = resolve("bos_token", tok->bos_token_, tok->bos_id_); !s) return cwhere(s.error());
    if (auto s = resolve("eos_token", tok->eos_token_, tok->eos_id_); !s) return cwhere(s.error());
    tok->add_bos_ = cfg->value("add_bos_token", false) == true;
    tok->add_eos_ = cfg->value("add_eos_token", false) == true;
    if (tok->add_bos_ && tok->bos_id_ < 0) return cwhere(make_error(ErrorCode::kCorrupt, "add_bos_token without bos_token"));
    if (tok->add_eos_ && tok->eos_id_ < 0) return cwhere(make_error(ErrorCode::kCorrupt, "add_eos_token without eos_token"));
    if (cfg->contains("chat_template")) {
      const auto& t = (*cfg)["chat_template"];
      if (t.is_string()) {
        tok->chat_template_ = t.get<std::string>();
      } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
        for (const auto& e : t)
          if (e.value("name", std::string()) == "default") tok->chat_template_ = e.value("template", std::string());
      }
      if (!tok->chat_template_.empty() && !is_deepseek_v3_template(tok->chat_template_))
        log::warning("{}: chat_template differs from DeepSeek-V3's; apply_chat_template renders DeepSeek-V3's format",
                     config_path.string());
    }
  }
  return tok;
} catch (const nlohmann::json::exception& e) {
  std::string_view what = e.what();  // drop nlohmann's "[json.exception.type_error.302] " tag
  if (auto close = what.find("] "); what.starts_with("[json.exception") && close != std::string_view::npos)
    what.remove_prefix(close + 2);
  return make_error(ErrorCode::kCorrupt, "{}: a field has the wrong type: {}",
                    (dir / "tokenizer.json").string() + " or tokenizer_config.json", what);
}

void Tokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  WordCache& cache = thread_word_cache(cache_key_);
  MatchScratch scratch;
  auto emit = [&](std::string_view piece) { bpe_->encode_word(piece, out, cache); };
  if (added_->empty()) {
    pre_->split(text, scratch, emit);
    return;
  }
  std::vector<Segment> segments;
  added_->split(text, segments);
  for (const Segment& s : segments) {
    if (s.id >= 0)
      out.push_back(s.id);
    else
      pre_->split(text.substr(s.begin, s.end - s.begin), scratch, emit);
  }
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (const size_t bad = find_invalid_utf8(text); bad != std::string_view::npos) return invalid_utf8(text, bad);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens && add_bos_) ids.push_back(bos_id_);
  try {
    encode_text(text, ids);
  } catch (const std::exception& e) {  // a regex engine failure (resource limit): not the caller's fault
    return make_error(ErrorCode::kInternal, "encoding {} bytes failed: {}", text.size(), e.what());
  }
  if (add_special_tokens && add_eos_) ids.push_back(eos_id_);
  return ids;
}

namespace {

template <class S>
Result<std::vector<std::vector<int32_t>>> batch_encode_impl(const Tokenizer& tok, std::span<const S> texts,
                                                            bool add_special_tokens, ThreadPool& pool) {
  std::vector<std::vector<int32_t>> out(texts.size());
  std::vector<std::optional<Error>> errors(texts.size());
  pool.parallel_for(0, static_cast<int64_t>(texts.size()), [&](int64_t i) {
    const auto k = static_cast<size_t>(i);
    auto r = tok.encode(texts[k], add_special_tokens);
    if (r)
      out[k] = std::move(*r);
    else
      errors[k] = r.error();
  });
  for (size_t k = 0; k < errors.size(); ++k)
    if (errors[k]) return errors[k]->with_context(fmt::format("text {}", k));
  return out;
}

}  // namespace

Result<std::vector<std::vector<int32_t>>> Tokenizer::batch_encode(std::span<const std::string> texts,
                                                                  bool add_special_tokens, ThreadPool& pool) const {
  return batch_encode_impl(*this, texts, add_special_tokens, pool);
}

Result<std::vector<std::vector<int32_t>>> Tokenizer::batch_encode(std::span<const std::string_view> texts,
                                                                  bool add_special_tokens, ThreadPool& pool) const {
  return batch_encode_impl(*this, texts, add_special_tokens, pool);
}

const std::string* Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size_ || id_kind_[static_cast<size_t>(id)] == kNone) return nullptr;
  return &id_bytes_[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size_ && id_kind_[static_cast<size_t>(id)] == kAddedSpecial;
}

Result<std::string> Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string* b = token_bytes(ids[i]);
    if (!b)
      return make_error(ErrorCode::kInvalidArgument, "token id {} at position {} is not in the vocabulary [0, {})", ids[i],
                        i, vocab_size_);
    if (skip_special_tokens && is_special(ids[i])) continue;
    bytes += *b;
  }
  std::string text;
  append_utf8_lossy(bytes, text);
  return text;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end()) return it->second;
  return bpe_->id_of_spelling(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const std::string* b = token_bytes(id);
  if (!b) return std::nullopt;
  if (id_kind_[static_cast<size_t>(id)] != kModel || bpe_->id_of_bytes(*b) != id) return *b;
  return bpe_->alphabet().to_spelled(*b);
}

Result<std::string> Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                                   bool add_generation_prompt) const {
  return render_deepseek_v3_chat(messages, add_generation_prompt, bos_token_);
}

}  // namespace pdserve::tokenizer
