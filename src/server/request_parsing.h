// HTTP JSON bodies -> validated requests. Every error is a one-line message naming the field as the
// client wrote it; the routes answer it with HTTP 400.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "scheduler/request.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::server {

// One prompt of a request (a batch has several; `n` > 1 is expanded by the caller).
struct PromptItem {
  std::optional<std::string> text;        // text to tokenize, or
  std::vector<int32_t> input_ids;         // ids as given
  std::string rid;                        // "" = generate one
  scheduler::SamplingParams sampling;
  bool return_logprob = false;
  int64_t logprob_start_len = -1;
  int64_t top_logprobs_num = 0;
  // PD disaggregation (GenerateReqInput.bootstrap_*): validated against the server's mode by the
  // tokenizer manager. A null port means the server's own --disaggregation-bootstrap-port.
  std::optional<std::string> bootstrap_host;
  std::optional<int64_t> bootstrap_port;
  std::optional<int64_t> bootstrap_room;
  std::optional<int64_t> data_parallel_rank;
};

// A prompt with the defaults for everything but its content and sampling parameters.
inline PromptItem make_prompt(std::optional<std::string> text, std::vector<int32_t> ids,
                              scheduler::SamplingParams sampling = {}) {
  PromptItem p;
  p.text = std::move(text);
  p.input_ids = std::move(ids);
  p.sampling = std::move(sampling);
  return p;
}

struct GenerateRequestBody {
  std::vector<PromptItem> items;
  bool is_batch = false;  // the client sent lists: answer with a list
  bool stream = false;
  bool return_text_in_logprobs = false;
};

// Caps on what one request may ask for (docs/reliability.md, "Access control and limits"); each
// breach is a 400 naming the field and the limit. n (64) and stop strings (64 of at most 1024 bytes)
// are checked by scheduler::SamplingParams::validate; max_new_tokens against the context length by
// the tokenizer manager (it needs the prompt's length).
inline constexpr int64_t kMaxGenerationsPerRequest = 1024;  // prompts x n
inline constexpr int64_t kMaxTopLogprobs = 20;              // top_logprobs_num, logprobs, top_logprobs (as OpenAI)
inline constexpr int64_t kMaxTokenIdsLogprob = 256;         // ids in token_ids_logprob (per prompt)

struct ParseLimits {
  int64_t vocab_size = 0;
  int64_t max_batch = kMaxGenerationsPerRequest;  // prompts per request (after n expansion)
};

// SGLang's /generate (GenerateReqInput).
Result<GenerateRequestBody> parse_generate(const nlohmann::json& body, const ParseLimits& limits);
// A sampling_params object; `where` prefixes field names in errors ("sampling_params").
Result<scheduler::SamplingParams> parse_sampling_params(const nlohmann::json& obj, const std::string& where);

// OpenAI /v1/completions and /v1/chat/completions, mapped onto the same items.
struct OpenAIRequest {
  std::string model;
  std::vector<PromptItem> items;  // completions: one per prompt; chat: one
  std::vector<tokenizer::ChatMessage> messages;  // chat only
  bool chat = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: prepend the prompt text
  int64_t n = 1;
  bool logprobs = false;
  int64_t top_logprobs = 0;
  bool add_generation_prompt = true;
};
Result<OpenAIRequest> parse_openai_completion(const nlohmann::json& body, const ParseLimits& limits);
Result<OpenAIRequest> parse_openai_chat(const nlohmann::json& body, const ParseLimits& limits);

// bootstrap_host/port/room and data_parallel_rank of `body` into items[i] (one value for all, or a
// list with one per item).
Status parse_bootstrap_fields(const nlohmann::json& body, std::vector<PromptItem>& items);

// Parses the body text: malformed JSON is an error with the byte position.
Result<nlohmann::json> parse_json_body(const std::string& body);

}  // namespace pdserve::server
