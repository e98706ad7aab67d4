// JSON shapes of SGLang's native and OpenAI responses, built from scheduler outputs.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "scheduler/request.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::server {

// {"type": "length", "length": N} | {"type": "stop", "matched": id|str} | {"type": "abort", ...}
nlohmann::json finish_reason_json(const std::optional<scheduler::FinishReason>& f);
// OpenAI's finish_reason string: "length" | "stop" | "abort".
nlohmann::json openai_finish_reason(const std::optional<scheduler::FinishReason>& f);
// OpenAI's matched_stop (SGLang extension): the stop id or string, or null.
nlohmann::json matched_stop(const std::optional<scheduler::FinishReason>& f);

// [logprob, token_id, text|null] triples (and top-k lists) as SGLang's meta_info carries them.
nlohmann::json logprob_triples(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok,
                               bool with_text);
nlohmann::json top_logprob_lists(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok,
                                 bool with_text);

// The text of one token for logprob displays ("" for ids the tokenizer cannot decode).
std::string token_text(const tokenizer::Tokenizer* tok, int32_t id);

// OpenAI completion logprobs {"tokens", "token_logprobs", "top_logprobs", "text_offset"}.
nlohmann::json completion_logprobs(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok,
                                   size_t text_offset);
// OpenAI chat logprobs {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}.
nlohmann::json chat_logprobs(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok);

}  // namespace pdserve::server
