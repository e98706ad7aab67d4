// IncrementalDetokenizer: streaming decode that never splits a UTF-8 character.
//
// Why this equals decode(all ids): decode() lossily converts the concatenated bytes, and the
// lossy conversion works left to right, deciding each character (or each maximal ill-formed
// subpart, which becomes one U+FFFD) from the bytes at its start. Only a trailing run that is a
// proper prefix of a well-formed character can still change meaning when more bytes arrive; it
// starts at a boundary of the conversion, so converting everything before it now and the rest
// later gives the same text as converting all at once.
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {

IncrementalDetokenizer::IncrementalDetokenizer(std::shared_ptr<const Tokenizer> tokenizer, bool skip_special_tokens)
    : tok_(std::move(tokenizer)), skip_special_(skip_special_tokens) {}

Result<std::string> IncrementalDetokenizer::feed(std::span<const int32_t> ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!tok_->token_bytes(ids[i]))
      return make_error(ErrorCode::kInvalidArgument, "token id {} is not in the vocabulary [0, {})", ids[i],
                        tok_->vocab_size());
  }
  std::string bytes = pending_;
  for (int32_t id : ids) {
    if (skip_special_ && tok_->is_special(id)) continue;
    bytes += *tok_->token_bytes(id);
  }
  const size_t keep = incomplete_utf8_tail(bytes);
  std::string text;
  append_utf8_lossy(std::string_view(bytes).substr(0, keep), text);
  pending_.assign(bytes, keep, std::string::npos);
  return text;
}

std::string IncrementalDetokenizer::finish() {
  std::string text;
  append_utf8_lossy(pending_, text);
  pending_.clear();
  return text;
}

}  // namespace pdserve::tokenizer
