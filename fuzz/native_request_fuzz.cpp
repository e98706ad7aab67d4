// JSON -> request validation of SGLang's native /generate (server::parse_json_body, then
// parse_generate and the bootstrap fields), as the /generate route runs them on a request body.
// Every input must end in a value or an error: an exception escaping is a crash.
#include <cstdlib>
#include <string>

#include "fuzz/request_body.h"
#include "server/request_parsing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pdserve::server;
  auto body = pdserve::fuzz::request_body(data, size);
  if (!body) return 0;
  // The tiny model's and DeepSeek-V3's vocabularies, and a small batch cap to reach the limit.
  for (ParseLimits limits : {ParseLimits{129280, 1024}, ParseLimits{16, 4}}) {
    auto req = parse_generate(*body, limits);
    if (!req) {
      if (req.error().message().empty()) std::abort();  // the 400 must say why
      continue;
    }
    if (req->items.empty() || static_cast<int64_t>(req->items.size()) > limits.max_batch) std::abort();
    for (const PromptItem& item : req->items) {
      if (item.text.has_value() == !item.input_ids.empty()) std::abort();  // exactly one, non-empty
      for (int32_t id : item.input_ids)
        if (id < 0 || id >= limits.vocab_size) std::abort();
    }
  }
  return 0;
}
