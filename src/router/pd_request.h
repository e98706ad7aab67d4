// The request rewriting of PD mode (sglang-spec §3.1, §3.2), as pure functions on JSON so that
// they are tested without servers: bootstrap fields, batch detection, request ids for aborts,
// the text cache_aware routes on, and the input-logprob merge of prefill into decode answers.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace pdserve::router {

enum class RouteKind { kGenerate, kCompletions, kChat };

// Number of items of a batch request, or 0 for a single request. Like MiniLB: /generate with a
// `text` list or an `input_ids` list of lists. OpenAI routes are single (MiniLB's behaviour).
std::size_t batch_size(const nlohmann::json& body, RouteKind route);

// bootstrap_host/port/room: scalars, or lists of `batch` items each with its own room.
// `rooms` holds max(batch, 1) values; port nullopt is JSON null.
void inject_bootstrap(nlohmann::json& body, const std::string& host, std::optional<int> port,
                      const std::vector<uint64_t>& rooms, std::size_t batch);

// Random 63-bit rooms (bootstrap_room = rand_u64 & i64::MAX, as the Rust router).
std::vector<uint64_t> make_rooms(std::size_t batch);

// "router-<room as 16 hex digits>": the room is already random and unique enough, and deriving
// the rid from it ties logs together.
std::string generated_rid(uint64_t room);

// Makes sure the request has a `rid` (one per item for a batch) so that the router can abort it
// on the workers when the client leaves; keeps rids the client chose. Returns the rids.
std::vector<std::string> ensure_rid(nlohmann::json& body, std::size_t batch, const std::vector<uint64_t>& rooms);

// The text cache_aware matches on: `text`/`prompt` (first item of a list), chat messages' contents,
// or input ids written as text.
std::string request_text(const nlohmann::json& body, RouteKind route);

// True when the request asks for logprobs (`"return_logprob": true`), so that the answer needs
// the prefill's input logprobs in front of the decode's.
bool wants_logprob(const nlohmann::json& body);

// Non-streamed: decode JSON (object or batch list) with meta_info.input_token_logprobs =
// prefill's + decode's, per item. An error if either body is not the JSON we expect.
Result<std::string> merge_logprobs(std::string_view prefill_body, std::string_view decode_body);

// Streamed: the first `data:` JSON per item index from the prefill's stream...
class PrefillLogprobs {
 public:
  // Feeds one data payload of the prefill's stream (non-JSON and [DONE] are ignored).
  void add_event(std::string_view data);
  // ...prepended into a decode data payload; payloads that are not JSON objects pass unchanged.
  std::string apply(std::string_view decode_data) const;

 private:
  std::map<int64_t, nlohmann::json> first_;  // index -> input_token_logprobs
};

}  // namespace pdserve::router
