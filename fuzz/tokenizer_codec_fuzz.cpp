// Tokenizer encode/decode on arbitrary bytes, with the real DeepSeek-V3 tokenizer
// (models/deepseek-v3, put there by scripts/setup.sh). Input: one flag byte, then the text.
// Checked besides "no crash":
//   - encode() accepts exactly the valid UTF-8 texts, and decode(encode(t)) == t;
//   - the same bytes read as token ids: decode() fails only for ids outside the vocabulary, and
//     the streaming detokenizer gives the same text (its documented contract);
//   - the chat template renders any valid text as a user message, and the result encodes.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

using pdserve::tokenizer::Tokenizer;

std::shared_ptr<const Tokenizer>& tokenizer() {
  static std::shared_ptr<const Tokenizer> tok = [] {
    const auto dir = pdserve::fuzz::source_dir() / "models" / "deepseek-v3";
    auto r = Tokenizer::load(dir);
    if (!r) {
      std::fprintf(stderr, "tokenizer_codec_fuzz: %s (run scripts/setup.sh)\n", r.error().message().c_str());
      std::abort();
    }
    return std::shared_ptr<const Tokenizer>(std::move(*r));
  }();
  return tok;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Tokenizer& tok = *tokenizer();
  const bool add_special = data[0] & 1, skip_special = data[0] & 2;
  const std::string_view text = pdserve::fuzz::as_view(data + 1, size - 1);
  const bool valid = pdserve::tokenizer::find_invalid_utf8(text) == std::string_view::npos;

  auto ids = tok.encode(text, add_special);
  if (ids.has_value() != valid) std::abort();
  if (ids) {
    for (int32_t id : *ids)
      if (id < 0 || id >= tok.vocab_size()) std::abort();
    if (!add_special) {
      auto back = tok.decode(*ids, false);
      if (!back || *back != text) std::abort();
    }
  }

  // The bytes as little-endian ids, spread a little past the vocabulary's end.
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 3 < text.size(); i += 3) {
    uint32_t v = 0;
    std::memcpy(&v, text.data() + i, 3);
    raw.push_back(static_cast<int32_t>(v % static_cast<uint32_t>(tok.vocab_size() + 600)));
  }
  auto decoded = tok.decode(raw, skip_special);
  pdserve::tokenizer::IncrementalDetokenizer detok(tokenizer(), skip_special);
  std::string streamed;
  bool stream_ok = true;
  for (int32_t id : raw) {
    auto piece = detok.feed(id);
    if (!piece) {
      stream_ok = false;
      break;
    }
    streamed += *piece;
  }
  if (stream_ok) streamed += detok.finish();
  if (decoded.has_value() != stream_ok) std::abort();
  if (decoded && *decoded != streamed) std::abort();

  if (valid) {
    std::vector<pdserve::tokenizer::ChatMessage> messages{{"system", "be brief", {}},
                                                          {"user", std::string(text), {}}};
    auto prompt = tok.apply_chat_template(messages, true);
    if (!prompt || !tok.encode(*prompt, false)) std::abort();
  }
  return 0;
}
