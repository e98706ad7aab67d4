#include "server/response_format.h"

#include "server/response_channel.h"

namespace pdserve::server {

using nlohmann::json;
using scheduler::FinishReason;

json error_body(int status, const std::string& message) {
  const char* type = status == 400   ? "BadRequestError"
                     : status == 401 ? "AuthenticationError"
                     : status == 404 ? "NotFoundError"
                     : status == 405 ? "MethodNotAllowed"
                     : status == 413 ? "RequestTooLarge"
                     : status == 503 ? "ServiceUnavailableError"
                                     : "InternalServerError";
  return {{"object", "error"}, {"message", message}, {"type", type}, {"param", nullptr}, {"code", status}};
}

json finish_reason_json(const std::optional<FinishReason>& f) {
  if (!f) return nullptr;
  switch (f->type) {
    case FinishReason::Type::kLength: return {{"type", "length"}, {"length", f->length}};
    case FinishReason::Type::kStop:
      if (f->matched_str) return {{"type", "stop"}, {"matched", *f->matched_str}};
      return {{"type", "stop"}, {"matched", f->matched_id ? json(*f->matched_id) : json(nullptr)}};
    case FinishReason::Type::kAbort:
      return {{"type", "abort"}, {"message", f->message}, {"status_code", f->status_code}, {"err_type", nullptr}};
  }
  return nullptr;
}

json openai_finish_reason(const std::optional<FinishReason>& f) {
  if (!f) return nullptr;
  switch (f->type) {
    case FinishReason::Type::kLength: return "length";
    case FinishReason::Type::kStop: return "stop";
    case FinishReason::Type::kAbort: return "abort";
  }
  return nullptr;
}

json matched_stop(const std::optional<FinishReason>& f) {
  if (!f || f->type != FinishReason::Type::kStop) return nullptr;
  if (f->matched_str) return *f->matched_str;
  if (f->matched_id) return *f->matched_id;
  return nullptr;
}

std::string token_text(const tokenizer::Tokenizer* tok, int32_t id) {
  if (!tok) return "";
  auto s = tok->decode(std::span<const int32_t>(&id, 1), false);
  return s ? *s : std::string();
}

json logprob_triples(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok, bool with_text) {
  json out = json::array();
  for (const auto& lp : lps)
    out.push_back({lp.logprob, lp.token_id, with_text ? json(token_text(tok, lp.token_id)) : json(nullptr)});
  return out;
}

json top_logprob_lists(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok, bool with_text) {
  json out = json::array();
  for (const auto& lp : lps) {
    json row = json::array();
    for (const auto& [l, id] : lp.top) row.push_back({l, id, with_text ? json(token_text(tok, id)) : json(nullptr)});
    out.push_back(std::move(row));
  }
  return out;
}

json completion_logprobs(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok,
                         size_t text_offset) {
  json tokens = json::array(), token_lps = json::array(), tops = json::array(), offsets = json::array();
  size_t off = text_offset;
  for (const auto& lp : lps) {
    const std::string t = token_text(tok, lp.token_id);
    tokens.push_back(t);
    token_lps.push_back(lp.logprob);
    json top = json::object();
    for (const auto& [l, id] : lp.top) top[token_text(tok, id)] = l;
    tops.push_back(lp.top.empty() ? json(nullptr) : top);
    offsets.push_back(off);
    off += t.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json chat_logprobs(const std::vector<scheduler::TokenLogprob>& lps, const tokenizer::Tokenizer* tok) {
  auto bytes_of = [](const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(static_cast<int>(c));
    return b;
  };
  json content = json::array();
  for (const auto& lp : lps) {
    const std::string t = token_text(tok, lp.token_id);
    json top = json::array();
    for (const auto& [l, id] : lp.top) {
      const std::string tt = token_text(tok, id);
      top.push_back({{"token", tt}, {"logprob", l}, {"bytes", bytes_of(tt)}});
    }
    content.push_back({{"token", t}, {"logprob", lp.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

}  // namespace pdserve::server
