#include "bench/backend.h"

namespace pdserve::bench {

using nlohmann::json;

Result<Backend> parse_backend(std::string_view name) {
  if (name == "sglang" || name == "sglang-native") return Backend::kSglang;
  if (name == "sglang-oai") return Backend::kOai;
  if (name == "sglang-oai-chat") return Backend::kOaiChat;
  return make_error(ErrorCode::kInvalidArgument, "unknown --backend '{}' (sglang, sglang-oai, sglang-oai-chat)", name);
}

const char* backend_path(Backend b) {
  switch (b) {
    case Backend::kSglang: return "/generate";
    case Backend::kOai: return "/v1/completions";
    case Backend::kOaiChat: return "/v1/chat/completions";
  }
  return "/generate";
}

json request_body(const DatasetRequest& r, int64_t output_len, const RequestOptions& o) {
  json body;
  if (o.backend == Backend::kSglang) {
    if (r.prompt_ids.empty()) body["text"] = r.prompt;
    else body["input_ids"] = r.prompt_ids;
    body["sampling_params"] = {{"temperature", 0.0}, {"max_new_tokens", output_len}, {"ignore_eos", o.ignore_eos}};
    body["stream"] = o.stream;
    if (o.return_logprob) {
      body["return_logprob"] = true;
      body["logprob_start_len"] = -1;
    }
  } else {
    body["model"] = o.model;
    if (o.backend == Backend::kOai) {
      if (r.prompt_ids.empty()) body["prompt"] = r.prompt;
      else body["prompt"] = r.prompt_ids;
      if (o.return_logprob) body["logprobs"] = 1;
    } else {
      body["messages"] = json::array({{{"role", "user"}, {"content", r.prompt}}});
      if (o.return_logprob) body["logprobs"] = true;
    }
    body["temperature"] = 0.0;
    body["max_tokens"] = output_len;
    body["ignore_eos"] = o.ignore_eos;  // SGLang's extension of the OpenAI schema
    body["stream"] = o.stream;
    if (o.stream) body["stream_options"] = {{"include_usage", true}};
  }
  for (const auto& [k, v] : o.extra_body.items()) body[k] = v;
  return body;
}

void ResponseReader::add_tokens(int64_t n, double t) {
  if (n <= 0) return;
  if (!got_first_) {
    got_first_ = true;
    result_.ttft = t;
  } else {
    const double gap = (t - last_t_) / static_cast<double>(n);
    result_.itl.insert(result_.itl.end(), static_cast<size_t>(n), gap);
  }
  last_t_ = t;
  tokens_ += n;
  result_.token_times.emplace_back(result_.start + t, n);
}

bool ResponseReader::on_data(std::string_view data, double t) {
  if (data == "[DONE]") return true;
  json j = json::parse(data, nullptr, false);
  if (j.is_discarded()) {
    result_.error = "unparsable chunk: " + std::string(data.substr(0, 200));
    return false;
  }
  if (j.is_object() && j.contains("error")) {
    const auto& e = j["error"];
    result_.error = e.is_object() && e.contains("message") ? e["message"].dump() : e.dump();
    return false;
  }
  if (j.is_object() && j.contains("object") && j["object"] == "error") {
    result_.error = j.value("message", j.dump());
    return false;
  }
  if (backend_ == Backend::kSglang) {
    const json& m = j.contains("meta_info") ? j["meta_info"] : json();
    const auto& fr = m.is_object() && m.contains("finish_reason") ? m["finish_reason"] : json();
    if (fr.is_object() && fr.value("type", "") == "abort") {
      result_.error = "aborted: " + fr.value("message", std::string());
      return false;
    }
    if (j.contains("text") && j["text"].is_string()) result_.generated_text = j["text"].get<std::string>();
    int64_t n = tokens_;
    if (m.is_object() && m.contains("completion_tokens") && m["completion_tokens"].is_number_integer())
      n = m["completion_tokens"].get<int64_t>();
    else if (!result_.generated_text.empty() && tokens_ == 0)
      n = 1;
    add_tokens(n - tokens_, t);
    return true;
  }
  // OpenAI: a chunk per piece of text; the final usage chunk gives the true token count.
  if (j.contains("usage") && j["usage"].is_object() && j["usage"].contains("completion_tokens")) {
    result_.output_len = j["usage"]["completion_tokens"].get<int64_t>();
    saw_usage_ = true;
  }
  if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return true;
  const json& c = j["choices"][0];
  std::string piece;
  if (c.contains("text") && c["text"].is_string()) piece = c["text"].get<std::string>();
  else if (c.contains("delta") && c["delta"].is_object() && c["delta"].contains("content") && c["delta"]["content"].is_string())
    piece = c["delta"]["content"].get<std::string>();
  else if (c.contains("message") && c["message"].is_object() && c["message"].contains("content") &&
           c["message"]["content"].is_string())
    piece = c["message"]["content"].get<std::string>();
  if (c.contains("finish_reason") && c["finish_reason"] == "abort") {
    result_.error = "aborted";
    return false;
  }
  if (!piece.empty()) {
    result_.generated_text += piece;
    add_tokens(1, t);
  }
  return true;
}

RequestResult ResponseReader::finish(double latency, int status, std::string_view body) {
  result_.latency = latency;
  if (status < 200 || status >= 300) {
    result_.error = "HTTP " + std::to_string(status) + ": " + std::string(body.substr(0, 500));
  } else if (result_.error.empty() && !got_first_) {
    result_.error = "no output in the response";
  }
  if (backend_ == Backend::kSglang || !saw_usage_) result_.output_len = tokens_;
  // Tokens that came in the last chunk beyond what the chunks showed (OpenAI usage): no ITL for them.
  result_.success = result_.error.empty();
  return std::move(result_);
}

}  // namespace pdserve::bench
