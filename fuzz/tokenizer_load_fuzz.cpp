// tokenizer.json loading (tokenizer::Tokenizer::load): the input is the file, in a scratch folder
// without tokenizer_config.json. A file that loads must then encode and decode without failing
// on valid UTF-8 text and on every id it claims to know.
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using pdserve::ErrorCode;
  using pdserve::tokenizer::Tokenizer;
  const auto dir = pdserve::fuzz::scratch_dir() / "tokenizer";
  std::filesystem::create_directories(dir);
  pdserve::fuzz::write_file(dir / "tokenizer.json", pdserve::fuzz::as_view(data, size));
  auto tok = Tokenizer::load(dir);
  if (!tok) {
    if (tok.error().message().empty()) std::abort();
    return 0;
  }
  for (const char* text : {"Hello world", " 12345 héllo\n\n  wörld!? <|x|> 你好", ""}) {
    for (bool special : {false, true}) {
      auto ids = (*tok)->encode(text, special);
      // Only a regex engine limit may fail on valid UTF-8 (kInternal); never a crash.
      if (!ids) {
        if (ids.error().code() != ErrorCode::kInternal) std::abort();
        continue;
      }
      for (int32_t id : *ids)
        if (id < 0 || id >= (*tok)->vocab_size()) std::abort();
      if (!(*tok)->decode(*ids, special)) std::abort();
    }
  }
  const int64_t n = std::min<int64_t>((*tok)->vocab_size(), 512);
  for (int32_t id = 0; id < n; ++id) {
    const std::string* bytes = (*tok)->token_bytes(id);
    auto text = (*tok)->decode(std::vector<int32_t>{id}, false);
    if (bytes != nullptr && !text) std::abort();  // a known id decodes
    (void)(*tok)->id_to_token(id);
    (void)(*tok)->is_special(id);
  }
  return 0;
}
