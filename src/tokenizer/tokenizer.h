// The DeepSeek-V3 tokenizer: byte-level BPE read from a Hugging Face `tokenizer.json`, equal id for
// id to Hugging Face `tokenizers` (and to the npm `@lenml/tokenizers` peer the tests run).
//
// This header is the module's whole public API; the server uses exactly this. Stability rules:
//   - Tokenizer is immutable after load(): every method is const and thread safe, so one
//     shared_ptr<const Tokenizer> serves all threads.
//   - Text in is UTF-8. Invalid UTF-8 is a kInvalidArgument error naming the byte offset (the
//     server answers 400), never a crash and never silently replaced.
//   - Ids out of the vocabulary ([0, vocab_size()) minus holes) are kInvalidArgument errors.
//   - decode() is lossy like Hugging Face's: byte sequences that are not valid UTF-8 (a token
//     sequence cut inside a character) become U+FFFD, one per maximal invalid subpart.
//
// What is supported of tokenizer.json (anything else is a kUnsupported error at load, never a
// silently different tokenization): model BPE (byte_fallback false, no dropout, no
// continuing_subword_prefix / end_of_word_suffix); normalizer null or an empty Sequence;
// pre_tokenizer a Sequence of Split{Regex, behavior Isolated, invert false} steps ending in
// ByteLevel{use_regex false} (or ByteLevel alone); decoder ByteLevel; added_tokens with their
// special / lstrip / rstrip / normalized / single_word flags.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"

namespace pdserve {
class ThreadPool;
}

namespace pdserve::tokenizer {

class BpeModel;
class PreTokenizer;
class AddedTokenMatcher;

// One tool call of an assistant message (OpenAI shape). `arguments` is the JSON text as the
// client sent it; it is inserted verbatim.
struct ToolCall {
  std::string id;
  std::string type = "function";
  std::string name;
  std::string arguments;
};

// One chat message. `content` is std::nullopt for JSON null (an assistant message that only
// carries tool_calls). Roles the template knows: system, user, assistant, tool; others are
// skipped, as the template skips them.
struct ChatMessage {
  std::string role;
  std::optional<std::string> content;
  std::vector<ToolCall> tool_calls;
};

// The folder to load the tokenizer from: `tokenizer_path` if given, else the model's folder
// (`model_path` itself, or its parent when it names a config.json file).
std::filesystem::path resolve_tokenizer_dir(const std::filesystem::path& model_path,
                                            const std::filesystem::path& tokenizer_path);

class Tokenizer {
 public:
  // Reads DIR/tokenizer.json and DIR/tokenizer_config.json (the latter optional: without it there
  // is no BOS/EOS default and no chat template). Errors name the file and the field. Takes 0.2-0.7 s
  // for DeepSeek-V3 (7.8 MB of JSON).
  static Result<std::shared_ptr<Tokenizer>> load(const std::filesystem::path& dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text -> ids. Added/special tokens written in the text are recognised (as Hugging Face does).
  // With add_special_tokens, BOS is prepended if tokenizer_config.json's add_bos_token is true and
  // EOS appended if add_eos_token is true (LlamaTokenizerFast behaviour); without it nothing is
  // added. Errors: invalid UTF-8 (kInvalidArgument, "invalid UTF-8 at byte N of M (byte 0xXX)"); kInternal
  // only if the regex engine fails (a resource limit), which no input is known to trigger.
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_special_tokens) const;

  // encode() of every text, spread over `pool` (the calling thread helps). The first failing
  // text's error is returned, prefixed with "text K". Output order equals input order.
  Result<std::vector<std::vector<int32_t>>> batch_encode(std::span<const std::string> texts, bool add_special_tokens,
                                                         ThreadPool& pool) const;
  Result<std::vector<std::vector<int32_t>>> batch_encode(std::span<const std::string_view> texts,
                                                         bool add_special_tokens, ThreadPool& pool) const;

  // Ids -> text. With skip_special_tokens, added tokens flagged special (BOS, EOS, pad,
  // placeholders) are left out; the chat markers (<｜User｜>, tool markers), which the DeepSeek
  // files do not flag special, are kept. Errors: an id outside the vocabulary.
  Result<std::string> decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  // Renders DeepSeek-V3's chat template (the one in tokenizer_config.json) for `messages`:
  // BOS + system prompts joined by "\n\n", then each message, and "<｜Assistant｜>" at the end
  // when add_generation_prompt is set (and the last message is not a tool result). Tokenize the
  // result with add_special_tokens = false: it already starts with BOS. Errors: a user, system or
  // tool message whose content is null (the template cannot concatenate it).
  Result<std::string> apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  int32_t bos_id() const { return bos_id_; }  // -1 if the config names no BOS token
  int32_t eos_id() const { return eos_id_; }  // -1 if the config names no EOS token
  // One past the largest id this tokenizer knows (model vocab and added tokens): 128815 for
  // DeepSeek-V3. The model's embedding (129280 rows) is larger; ids in between cannot be decoded.
  int64_t vocab_size() const { return vocab_size_; }
  // The id of a token given by its text: an added token's content ("<｜User｜>") or a model token
  // in tokenizer.json's byte-level spelling ("Ġthe").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The inverse of token_to_id (nullopt for an id out of range).
  std::optional<std::string> id_to_token(int32_t id) const;
  // True for added tokens flagged special.
  bool is_special(int32_t id) const;
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  // The raw Jinja template text from tokenizer_config.json ("" if none).
  const std::string& chat_template() const { return chat_template_; }

  // The bytes id stands for (a model token's bytes, which may be part of a UTF-8 character, or an
  // added token's content), or nullptr for an id with no token. Used by the streaming detokenizer.
  const std::string* token_bytes(int32_t id) const;

 private:
  Tokenizer();
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;

  std::unique_ptr<BpeModel> bpe_;
  std::unique_ptr<PreTokenizer> pre_;
  std::unique_ptr<AddedTokenMatcher> added_;
  std::vector<std::string> id_bytes_;     // id -> decoded bytes (model tokens) or content (added)
  std::vector<uint8_t> id_kind_;          // 0 none, 1 model token, 2 added, 3 added special
  int64_t vocab_size_ = 0;
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = false, add_eos_ = false;
  std::string bos_token_, eos_token_, chat_template_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  std::shared_ptr<int> cache_key_;  // identity for per-thread word caches (see bpe.h)
};

// Streaming detokenizer: feed the ids a request generates, get back only text that is final.
// Pieces never end inside a UTF-8 character: bytes of an unfinished character are held until
// the character completes (or is proven invalid, which emits U+FFFD). The contract, tested as a
// property: concat(feed(...) results) + finish() == tokenizer.decode(all ids, skip_special_tokens).
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(std::shared_ptr<const Tokenizer> tokenizer, bool skip_special_tokens);

  // Appends ids; returns the newly completed text (possibly empty). An id outside the vocabulary
  // is an error and leaves the state as it was before this call.
  Result<std::string> feed(std::span<const int32_t> ids);
  Result<std::string> feed(int32_t id) { return feed(std::span<const int32_t>(&id, 1)); }
  // End of stream: the held bytes of an unfinished character, as U+FFFD (empty if none). The
  // detokenizer can be fed again afterwards, as a fresh stream.
  std::string finish();
  // Bytes held back now (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  std::shared_ptr<const Tokenizer> tok_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace pdserve::tokenizer
