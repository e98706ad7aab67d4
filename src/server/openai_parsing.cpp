// OpenAI /v1/completions and /v1/chat/completions bodies -> PromptItems.
#include <set>

#include "server/request_parsing.h"

namespace pdserve::server {

using nlohmann::json;

namespace {

Error bad(const std::string& msg) { return Error(ErrorCode::kInvalidArgument, msg); }

// obj[key] when it is a string, `fallback` when absent or null; another type is the client's error
// (json::value would throw a type_error, which the route would turn into a 500).
Result<std::string> optional_string(const json& obj, const char* key, const char* fallback, const std::string& field) {
  if (!obj.contains(key) || obj[key].is_null()) return std::string(fallback);
  if (!obj[key].is_string()) return bad("field '" + field + "' must be a string");
  return obj[key].get<std::string>();
}

// Messages name fields as the client wrote them: OpenAI's names, not SGLang's sampling_params.
std::string openai_names(std::string m) {
  for (auto [ours, theirs] : {std::pair{"sampling_params.max_new_tokens", "max_tokens"},
                              std::pair{"sampling_params.sampling_seed", "seed"},
                              std::pair{"sampling_params.min_new_tokens", "min_tokens"}, std::pair{"sampling_params.", ""}}) {
    for (auto pos = m.find(ours); pos != std::string::npos; pos = m.find(ours))
      m.replace(pos, std::string(ours).size(), theirs);
  }
  return m;
}

// Fields both APIs share, mapped onto SGLang's sampling parameters. `max_tokens_default` is
// OpenAI's (16 for completions; chat has none: until the context is full).
Status parse_common(const json& body, OpenAIRequest& out, scheduler::SamplingParams& sp, int64_t max_tokens_default,
                    int64_t vocab) {
  json sampling = json::object();
  auto copy = [&](const char* from, const char* to) {
    if (body.contains(from) && !body[from].is_null()) sampling[to] = body[from];
  };
  copy("temperature", "temperature");
  copy("top_p", "top_p");
  copy("top_k", "top_k");
  copy("min_p", "min_p");
  copy("frequency_penalty", "frequency_penalty");
  copy("presence_penalty", "presence_penalty");
  copy("repetition_penalty", "repetition_penalty");
  copy("stop", "stop");
  copy("stop_token_ids", "stop_token_ids");
  copy("ignore_eos", "ignore_eos");
  copy("skip_special_tokens", "skip_special_tokens");
  copy("seed", "sampling_seed");
  copy("min_tokens", "min_new_tokens");
  copy("n", "n");
  if (body.contains("max_completion_tokens") && !body["max_completion_tokens"].is_null()) {
    sampling["max_new_tokens"] = body["max_completion_tokens"];
  } else if (body.contains("max_tokens") && !body["max_tokens"].is_null()) {
    sampling["max_new_tokens"] = body["max_tokens"];
  } else {
    sampling["max_new_tokens"] = max_tokens_default > 0 ? json(max_tokens_default) : json(nullptr);
  }
  auto parsed = parse_sampling_params(sampling, "sampling_params");
  if (!parsed) return Status(bad(openai_names(parsed.error().message())));
  sp = *parsed;
  if (auto st = sp.validate(vocab); !st) return Status(bad(openai_names(st.error().message())));
  out.n = sp.n;
  if (body.contains("model")) {
    if (!body["model"].is_string()) return Status(bad("field 'model' must be a string"));
    out.model = body["model"].get<std::string>();
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) return Status(bad("field 'stream' must be true or false"));
    out.stream = body["stream"].get<bool>();
  }
  if (body.contains("stream_options") && body["stream_options"].is_object()) {
    const auto& so = body["stream_options"];
    if (so.contains("include_usage")) {
      if (!so["include_usage"].is_boolean()) return Status(bad("field 'stream_options.include_usage' must be true or false"));
      out.include_usage = so["include_usage"].get<bool>();
    }
  }
  return ok_status();
}

std::vector<PromptItem> expand_n(std::vector<PromptItem> prompts, int64_t n) {
  std::vector<PromptItem> out;
  for (auto& p : prompts)
    for (int64_t c = 0; c < n; ++c) {
      PromptItem q = p;
      q.sampling.n = 1;
      out.push_back(std::move(q));
    }
  return out;
}

}  // namespace

Result<OpenAIRequest> parse_openai_completion(const json& body, const ParseLimits& limits) {
  if (!body.is_object()) return bad("the request body must be a JSON object");
  static const std::set<std::string> kKnown = {
      "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stream_options",
      "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "seed", "user",
      "best_of", "logit_bias", "suffix", "ignore_eos", "skip_special_tokens", "stop_token_ids", "min_tokens",
      "bootstrap_host", "bootstrap_port", "bootstrap_room", "rid", "max_completion_tokens"};
  for (const auto& [key, v] : body.items())
    if (!kKnown.count(key)) return bad("unknown field '" + key + "'");
  if (body.contains("suffix") && !body["suffix"].is_null()) return bad("field 'suffix' is not supported");
  if (body.contains("logit_bias") && !body["logit_bias"].is_null()) return bad("field 'logit_bias' is not supported");
  if (body.contains("best_of") && !body["best_of"].is_null() && body["best_of"] != 1) return bad("field 'best_of' must be 1");
  OpenAIRequest out;
  scheduler::SamplingParams sp;
  PDSERVE_RETURN_IF_ERROR(parse_common(body, out, sp, 16, limits.vocab_size));
  if (!body.contains("prompt")) return bad("field 'prompt' is required");
  const json& p = body["prompt"];
  std::vector<PromptItem> prompts;
  auto ids_of = [&](const json& arr, const std::string& f) -> Result<std::vector<int32_t>> {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < arr.size(); ++i) {
      if (!arr[i].is_number_integer()) return bad("field '" + f + "[" + std::to_string(i) + "]' must be a token id");
      const int64_t id = arr[i].get<int64_t>();
      if (id < 0 || id >= limits.vocab_size) return bad("field '" + f + "[" + std::to_string(i) + "]' is outside the vocabulary");
      ids.push_back(static_cast<int32_t>(id));
    }
    return ids;
  };
  if (p.is_string()) {
    prompts.push_back(make_prompt(p.get<std::string>(), {}, sp));
  } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
    PDSERVE_ASSIGN_OR_RETURN(auto ids, ids_of(p, "prompt"));
    prompts.push_back(make_prompt(std::nullopt, std::move(ids), sp));
  } else if (p.is_array() && !p.empty()) {
    for (size_t i = 0; i < p.size(); ++i) {
      const std::string f = "prompt[" + std::to_string(i) + "]";
      if (p[i].is_string()) {
        prompts.push_back(make_prompt(p[i].get<std::string>(), {}, sp));
      } else if (p[i].is_array()) {
        PDSERVE_ASSIGN_OR_RETURN(auto ids, ids_of(p[i], f));
        prompts.push_back(make_prompt(std::nullopt, std::move(ids), sp));
      } else {
        return bad("field '" + f + "' must be a string or a list of token ids");
      }
    }
  } else {
    return bad("field 'prompt' must be a non-empty string, list of strings, or list of token ids");
  }
  for (size_t i = 0; i < prompts.size(); ++i)
    if (prompts[i].text ? prompts[i].text->empty() : prompts[i].input_ids.empty())
      return bad(prompts.size() > 1 ? "prompt " + std::to_string(i) + " is empty" : std::string("the prompt is empty"));
  if (body.contains("logprobs") && !body["logprobs"].is_null()) {
    if (!body["logprobs"].is_number_integer() || body["logprobs"].get<int64_t>() < 0 ||
        body["logprobs"].get<int64_t>() > kMaxTopLogprobs)
      return bad("field 'logprobs' must be an integer in [0, " + std::to_string(kMaxTopLogprobs) + "]");
    out.logprobs = true;
    out.top_logprobs = body["logprobs"].get<int64_t>();
    for (auto& q : prompts) {
      q.return_logprob = true;
      q.top_logprobs_num = out.top_logprobs;
    }
  }
  if (body.contains("echo") && !body["echo"].is_null()) {
    if (!body["echo"].is_boolean()) return bad("field 'echo' must be true or false");
    out.echo = body["echo"].get<bool>();
  }
  if (static_cast<int64_t>(prompts.size()) * out.n > limits.max_batch)
    return bad("the request asks for " + std::to_string(static_cast<int64_t>(prompts.size()) * out.n) +
               " generations (prompts x n); the limit is " + std::to_string(limits.max_batch));
  out.items = expand_n(std::move(prompts), out.n);
  PDSERVE_RETURN_IF_ERROR(parse_bootstrap_fields(body, out.items));
  return out;
}

Result<OpenAIRequest> parse_openai_chat(const json& body, const ParseLimits& limits) {
  if (!body.is_object()) return bad("the request body must be a JSON object");
  static const std::set<std::string> kKnown = {
      "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n",
      "stream", "stream_options", "logprobs", "top_logprobs", "stop", "presence_penalty", "frequency_penalty",
      "repetition_penalty", "seed", "user", "tools", "tool_choice", "response_format", "logit_bias",
      "ignore_eos", "skip_special_tokens", "stop_token_ids", "min_tokens", "bootstrap_host", "bootstrap_port",
      "bootstrap_room", "rid", "chat_template_kwargs", "continue_final_message", "parallel_tool_calls"};
  for (const auto& [key, v] : body.items())
    if (!kKnown.count(key)) return bad("unknown field '" + key + "'");
  if (body.contains("logit_bias") && !body["logit_bias"].is_null()) return bad("field 'logit_bias' is not supported");
  // json == "text" rather than value("type", ...): a non-string type must be a 400, not an exception.
  if (body.contains("response_format") && body["response_format"].is_object() &&
      body["response_format"].contains("type") && body["response_format"]["type"] != "text")
    return bad("field 'response_format' other than {\"type\": \"text\"} is not supported");
  OpenAIRequest out;
  out.chat = true;
  scheduler::SamplingParams sp;
  PDSERVE_RETURN_IF_ERROR(parse_common(body, out, sp, 0, limits.vocab_size));
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
    return bad("field 'messages' must be a non-empty list");
  const json& msgs = body["messages"];
  for (size_t i = 0; i < msgs.size(); ++i) {
    const std::string f = "messages[" + std::to_string(i) + "]";
    const json& m = msgs[i];
    if (!m.is_object()) return bad("field '" + f + "' must be an object");
    if (!m.contains("role") || !m["role"].is_string()) return bad("field '" + f + ".role' must be a string");
    tokenizer::ChatMessage cm;
    cm.role = m["role"].get<std::string>();
    static const std::set<std::string> kRoles = {"system", "user", "assistant", "tool", "developer"};
    if (!kRoles.count(cm.role)) return bad("field '" + f + ".role' must be system, user, assistant or tool");
    if (cm.role == "developer") cm.role = "system";
    if (m.contains("content") && !m["content"].is_null()) {
      const json& c = m["content"];
      if (c.is_string()) {
        cm.content = c.get<std::string>();
      } else if (c.is_array()) {
        // OpenAI content parts: only text parts can be served by a text model.
        std::string text;
        for (size_t k = 0; k < c.size(); ++k) {
          if (!c[k].is_object() || !c[k].contains("type") || c[k]["type"] != "text" || !c[k].contains("text") || !c[k]["text"].is_string())
            return bad("field '" + f + ".content[" + std::to_string(k) + "]' must be a {\"type\": \"text\"} part");
          text += c[k]["text"].get<std::string>();
        }
        cm.content = text;
      } else {
        return bad("field '" + f + ".content' must be a string or a list of text parts");
      }
    } else if (cm.role != "assistant") {
      return bad("field '" + f + ".content' is required for role " + cm.role);
    }
    if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
      for (const auto& tc : m["tool_calls"]) {
        tokenizer::ToolCall call;
        if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object())
          return bad("field '" + f + ".tool_calls' entries must have a 'function' object");
        PDSERVE_ASSIGN_OR_RETURN(call.id, optional_string(tc, "id", "", f + ".tool_calls[].id"));
        PDSERVE_ASSIGN_OR_RETURN(call.type, optional_string(tc, "type", "function", f + ".tool_calls[].type"));
        PDSERVE_ASSIGN_OR_RETURN(call.name, optional_string(tc["function"], "name", "", f + ".tool_calls[].function.name"));
        const auto& args = tc["function"].contains("arguments") ? tc["function"]["arguments"] : json("{}");
        call.arguments = args.is_string() ? args.get<std::string>() : args.dump();
        cm.tool_calls.push_back(std::move(call));
      }
    }
    out.messages.push_back(std::move(cm));
  }
  if (body.contains("logprobs") && !body["logprobs"].is_null()) {
    if (!body["logprobs"].is_boolean()) return bad("field 'logprobs' must be true or false");
    out.logprobs = body["logprobs"].get<bool>();
  }
  if (body.contains("top_logprobs") && !body["top_logprobs"].is_null()) {
    if (!body["top_logprobs"].is_number_integer() || body["top_logprobs"].get<int64_t>() < 0 ||
        body["top_logprobs"].get<int64_t>() > kMaxTopLogprobs)
      return bad("field 'top_logprobs' must be an integer in [0, " + std::to_string(kMaxTopLogprobs) + "]");
    out.top_logprobs = body["top_logprobs"].get<int64_t>();
  }
  if (out.n > limits.max_batch) return bad("field 'n' exceeds the limit of " + std::to_string(limits.max_batch));
  PromptItem item = make_prompt(std::string(), {}, sp);
  item.return_logprob = out.logprobs;
  item.top_logprobs_num = out.logprobs ? out.top_logprobs : 0;
  out.items = expand_n({item}, out.n);  // text is rendered from messages by the caller
  PDSERVE_RETURN_IF_ERROR(parse_bootstrap_fields(body, out.items));
  return out;
}

}  // namespace pdserve::server
