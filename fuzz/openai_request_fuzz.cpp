// JSON -> request validation of the OpenAI routes (/v1/completions and /v1/chat/completions):
// server::parse_json_body, then parse_openai_completion and parse_openai_chat on the same body,
// as the routes run them. Every input must end in a value or an error, never an exception.
#include <cstdlib>
#include <string>

#include "fuzz/request_body.h"
#include "server/request_parsing.h"

namespace {

void check(const pdserve::Result<pdserve::server::OpenAIRequest>& r, const pdserve::server::ParseLimits& limits,
           bool chat) {
  if (!r) {
    if (r.error().message().empty()) std::abort();  // the 400 must say why
    return;
  }
  if (r->chat != chat || r->n < 1) std::abort();
  // items are already expanded by n (one per generation): chat has n, completions prompts x n.
  const auto items = static_cast<int64_t>(r->items.size());
  if (chat && (r->messages.empty() || items != r->n)) std::abort();
  if (items == 0 || items % r->n != 0 || items > limits.max_batch) std::abort();
  for (const auto& item : r->items)
    for (int32_t id : item.input_ids)
      if (id < 0 || id >= limits.vocab_size) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pdserve::server;
  auto body = pdserve::fuzz::request_body(data, size);
  if (!body) return 0;
  for (ParseLimits limits : {ParseLimits{129280, 1024}, ParseLimits{16, 4}}) {
    check(parse_openai_completion(*body, limits), limits, false);
    check(parse_openai_chat(*body, limits), limits, true);
  }
  return 0;
}
