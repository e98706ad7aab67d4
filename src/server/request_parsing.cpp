#include "server/request_parsing.h"

#include <cmath>
#include <set>

namespace pdserve::server {

using nlohmann::json;

namespace {

Error bad(const std::string& msg) { return Error(ErrorCode::kInvalidArgument, msg); }

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "a list";
    case json::value_t::object: return "an object";
    default: return "an unknown type";
  }
}

Result<int64_t> get_int(const json& v, const std::string& field) {
  if (v.is_number_integer() || v.is_number_unsigned()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      return bad("field '" + field + "' is too large");
    return v.get<int64_t>();
  }
  // 16.0 is an integer to a Python server too.
  if (v.is_number_float()) {
    // Range first: converting a double outside int64's range is undefined behaviour (found by
    // fuzz/openai_request with 3.3e55).
    const double d = v.get<double>();
    if (std::abs(d) < 9e15 && d == std::trunc(d)) return static_cast<int64_t>(d);
  }
  return bad("field '" + field + "' must be an integer, got " + type_name(v));
}

Result<double> get_number(const json& v, const std::string& field) {
  if (v.is_number()) return v.get<double>();
  return bad("field '" + field + "' must be a number, got " + type_name(v));
}

Result<bool> get_bool(const json& v, const std::string& field) {
  if (v.is_boolean()) return v.get<bool>();
  return bad("field '" + field + "' must be true or false, got " + type_name(v));
}

Result<std::string> get_string(const json& v, const std::string& field) {
  if (v.is_string()) return v.get<std::string>();
  return bad("field '" + field + "' must be a string, got " + type_name(v));
}

Result<std::vector<int32_t>> get_ids(const json& v, const std::string& field, int64_t vocab) {
  if (!v.is_array()) return bad("field '" + field + "' must be a list of token ids, got " + type_name(v));
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string f = field + "[" + std::to_string(i) + "]";
    PDSERVE_ASSIGN_OR_RETURN(int64_t id, get_int(v[i], f));
    if (id < 0 || id >= vocab)
      return bad("field '" + f + "' = " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

Result<std::vector<std::string>> get_stop(const json& v, const std::string& field) {
  if (v.is_null()) return std::vector<std::string>{};
  if (v.is_string()) return std::vector<std::string>{v.get<std::string>()};
  if (!v.is_array()) return bad("field '" + field + "' must be a string or a list of strings, got " + type_name(v));
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    PDSERVE_ASSIGN_OR_RETURN(std::string s, get_string(v[i], field + "[" + std::to_string(i) + "]"));
    out.push_back(std::move(s));
  }
  return out;
}

// token_ids_logprob (one id list for every prompt, or a list of them, one per prompt): accepted
// for SGLang clients but not computed here (docs/server.md); still checked and capped so that it
// cannot carry unbounded or out-of-vocabulary data.
Status check_token_ids_logprob(const json& body, size_t prompts, int64_t vocab) {
  if (!body.contains("token_ids_logprob") || body["token_ids_logprob"].is_null()) return ok_status();
  const json& v = body["token_ids_logprob"];
  if (!v.is_array()) return Status(bad("field 'token_ids_logprob' must be a list of token ids, got " + type_name(v)));
  const bool per_prompt = !v.empty() && v[0].is_array();
  if (per_prompt && v.size() != prompts)
    return Status(bad("field 'token_ids_logprob' has " + std::to_string(v.size()) + " lists for " + std::to_string(prompts) +
                      " prompts"));
  for (size_t i = 0; i < (per_prompt ? v.size() : 1); ++i) {
    const json& ids = per_prompt ? v[i] : v;
    const std::string f = per_prompt ? "token_ids_logprob[" + std::to_string(i) + "]" : "token_ids_logprob";
    if (ids.is_array() && static_cast<int64_t>(ids.size()) > kMaxTokenIdsLogprob)
      return Status(bad("field '" + f + "' has " + std::to_string(ids.size()) + " ids; the limit is " +
                        std::to_string(kMaxTokenIdsLogprob)));
    if (auto parsed = get_ids(ids, f, vocab); !parsed) return Status(parsed.error());
  }
  return ok_status();
}

// `v` is either one value for all items or a list with one value per item.
const json& per_item(const json& v, size_t i, bool is_list) { return is_list ? v[i] : v; }

}  // namespace

Result<json> parse_json_body(const std::string& body) {
  if (body.empty()) return bad("the request body is empty; expected a JSON object");
  try {
    return json::parse(body);
  } catch (const json::parse_error& e) {
    return bad("the request body is not valid JSON (byte " + std::to_string(e.byte) + ")");
  } catch (const json::out_of_range&) {
    // nlohmann reports a number beyond double's range (1e999) this way, not as a parse error.
    return bad("the request body holds a number outside the range of a double");
  }
}

Result<scheduler::SamplingParams> parse_sampling_params(const json& obj, const std::string& where) {
  scheduler::SamplingParams sp;
  if (obj.is_null()) return sp;
  if (!obj.is_object()) return bad("field '" + where + "' must be an object, got " + type_name(obj));
  // Accepted for compatibility but without effect here (documented in docs/server.md).
  static const std::set<std::string> kIgnored = {"spaces_between_special_tokens", "no_stop_trim", "stream_interval",
                                                 "custom_params"};
  static const std::set<std::string> kUnsupported = {"json_schema", "regex", "ebnf", "structural_tag", "logit_bias",
                                                     "stop_regex"};
  for (const auto& [key, v] : obj.items()) {
    const std::string f = where + "." + key;
    if (key == "max_new_tokens") {
      if (v.is_null()) {
        sp.max_new_tokens = INT32_MAX;  // until the context is full, as SGLang's None
      } else {
        PDSERVE_ASSIGN_OR_RETURN(sp.max_new_tokens, get_int(v, f));
      }
    } else if (key == "min_new_tokens") {
      PDSERVE_ASSIGN_OR_RETURN(sp.min_new_tokens, get_int(v, f));
    } else if (key == "temperature") {
      PDSERVE_ASSIGN_OR_RETURN(double d, get_number(v, f));
      sp.temperature = static_cast<float>(d);
    } else if (key == "top_p") {
      PDSERVE_ASSIGN_OR_RETURN(double d, get_number(v, f));
      sp.top_p = static_cast<float>(d);
    } else if (key == "top_k") {
      PDSERVE_ASSIGN_OR_RETURN(sp.top_k, get_int(v, f));
    } else if (key == "min_p") {
      PDSERVE_ASSIGN_OR_RETURN(double d, get_number(v, f));
      sp.min_p = static_cast<float>(d);
    } else if (key == "frequency_penalty") {
      PDSERVE_ASSIGN_OR_RETURN(double d, get_number(v, f));
      sp.frequency_penalty = static_cast<float>(d);
    } else if (key == "presence_penalty") {
      PDSERVE_ASSIGN_OR_RETURN(double d, get_number(v, f));
      sp.presence_penalty = static_cast<float>(d);
    } else if (key == "repetition_penalty") {
      PDSERVE_ASSIGN_OR_RETURN(double d, get_number(v, f));
      sp.repetition_penalty = static_cast<float>(d);
    } else if (key == "stop") {
      PDSERVE_ASSIGN_OR_RETURN(sp.stop, get_stop(v, f));
    } else if (key == "stop_token_ids") {
      if (!v.is_null()) {
        if (!v.is_array()) return bad("field '" + f + "' must be a list of token ids, got " + type_name(v));
        for (size_t i = 0; i < v.size(); ++i) {
          PDSERVE_ASSIGN_OR_RETURN(int64_t id, get_int(v[i], f + "[" + std::to_string(i) + "]"));
          sp.stop_token_ids.push_back(static_cast<int32_t>(std::clamp<int64_t>(id, -1, INT32_MAX)));
        }
      }
    } else if (key == "ignore_eos") {
      PDSERVE_ASSIGN_OR_RETURN(sp.ignore_eos, get_bool(v, f));
    } else if (key == "skip_special_tokens") {
      PDSERVE_ASSIGN_OR_RETURN(sp.skip_special_tokens, get_bool(v, f));
    } else if (key == "n") {
      PDSERVE_ASSIGN_OR_RETURN(sp.n, get_int(v, f));
    } else if (key == "sampling_seed" || key == "seed") {
      if (!v.is_null()) {
        PDSERVE_ASSIGN_OR_RETURN(int64_t s, get_int(v, f));
        sp.sampling_seed = static_cast<uint64_t>(s);
      }
    } else if (kIgnored.count(key)) {
      continue;
    } else if (kUnsupported.count(key)) {
      if (!v.is_null()) return bad("field '" + f + "' is not supported by pdserve (constrained decoding and logit_bias are not implemented)");
    } else {
      return bad("unknown sampling parameter '" + f + "'");
    }
  }
  return sp;
}

Status parse_bootstrap_fields(const json& body, std::vector<PromptItem>& items) {
  const size_t n = items.size();
  for (const char* key : {"bootstrap_host", "bootstrap_port", "bootstrap_room", "data_parallel_rank"}) {
    if (!body.contains(key) || body[key].is_null()) continue;
    const json& v = body[key];
    const bool list = v.is_array();
    if (list && v.size() != n)
      return Status(bad(std::string("field '") + key + "' has " + std::to_string(v.size()) + " entries for " +
                        std::to_string(n) + " prompts"));
    for (size_t i = 0; i < n; ++i) {
      const json& e = per_item(v, i, list);
      if (e.is_null()) continue;
      const std::string f = list ? std::string(key) + "[" + std::to_string(i) + "]" : std::string(key);
      PromptItem& p = items[i];
      if (std::string(key) == "bootstrap_host") {
        PDSERVE_ASSIGN_OR_RETURN(p.bootstrap_host, get_string(e, f));
        continue;
      }
      PDSERVE_ASSIGN_OR_RETURN(int64_t x, get_int(e, f));
      if (std::string(key) == "bootstrap_port") {
        if (x <= 0 || x > 65535) return Status(bad("field '" + f + "' must be a port number (1..65535)"));
        p.bootstrap_port = x;
      } else if (std::string(key) == "bootstrap_room") {
        if (x < 0) return Status(bad("field '" + f + "' must be a non-negative integer"));
        p.bootstrap_room = x;
      } else {
        if (x < 0) return Status(bad("field '" + f + "' must be a non-negative integer"));
        p.data_parallel_rank = x;
      }
    }
  }
  return ok_status();
}

Result<GenerateRequestBody> parse_generate(const json& body, const ParseLimits& limits) {
  if (!body.is_object()) return bad("the request body must be a JSON object, got " + type_name(body));
  static const std::set<std::string> kKnown = {
      "text", "input_ids", "sampling_params", "stream", "return_logprob", "logprob_start_len", "top_logprobs_num",
      "rid", "return_text_in_logprobs", "bootstrap_host", "bootstrap_port", "bootstrap_room", "bootstrap_pair_key",
      "data_parallel_rank", "priority", "log_metrics", "custom_labels", "lora_path", "input_embeds", "image_data",
      "audio_data", "video_data", "token_ids_logprob", "modalities", "session_params", "routed_dp_rank",
      "return_hidden_states"};
  for (const auto& [key, v] : body.items())
    if (!kKnown.count(key)) return bad("unknown field '" + key + "'");
  for (const char* key : {"input_embeds", "image_data", "audio_data", "video_data", "lora_path", "session_params"})
    if (body.contains(key) && !body[key].is_null()) return bad(std::string("field '") + key + "' is not supported by pdserve");

  const bool has_text = body.contains("text") && !body["text"].is_null();
  const bool has_ids = body.contains("input_ids") && !body["input_ids"].is_null();
  if (has_text == has_ids) return bad("exactly one of 'text' and 'input_ids' must be given");

  GenerateRequestBody out;
  std::vector<PromptItem> prompts;
  if (has_text) {
    const json& t = body["text"];
    if (t.is_string()) {
      prompts.push_back(make_prompt(t.get<std::string>(), {}));
    } else if (t.is_array()) {
      out.is_batch = true;
      for (size_t i = 0; i < t.size(); ++i) {
        PDSERVE_ASSIGN_OR_RETURN(std::string s, get_string(t[i], "text[" + std::to_string(i) + "]"));
        prompts.push_back(make_prompt(std::move(s), {}));
      }
    } else {
      return bad("field 'text' must be a string or a list of strings, got " + type_name(t));
    }
  } else {
    const json& ids = body["input_ids"];
    if (!ids.is_array()) return bad("field 'input_ids' must be a list of token ids or a list of such lists");
    if (!ids.empty() && ids[0].is_array()) {
      out.is_batch = true;
      for (size_t i = 0; i < ids.size(); ++i) {
        PDSERVE_ASSIGN_OR_RETURN(auto v, get_ids(ids[i], "input_ids[" + std::to_string(i) + "]", limits.vocab_size));
        prompts.push_back(make_prompt(std::nullopt, std::move(v)));
      }
    } else {
      PDSERVE_ASSIGN_OR_RETURN(auto v, get_ids(ids, "input_ids", limits.vocab_size));
      prompts.push_back(make_prompt(std::nullopt, std::move(v)));
    }
  }
  if (prompts.empty()) return bad("the batch is empty");
  for (size_t i = 0; i < prompts.size(); ++i) {
    const bool empty = prompts[i].text ? prompts[i].text->empty() : prompts[i].input_ids.empty();
    if (empty) return bad(out.is_batch ? "prompt " + std::to_string(i) + " is empty" : std::string("the prompt is empty"));
  }

  const size_t n = prompts.size();
  // Per-item fields: one value for all, or (for a batch) a list with one per prompt.
  auto item_field = [&](const char* key, size_t i, auto&& parse) -> Status {
    if (!body.contains(key) || body[key].is_null()) return ok_status();
    const json& v = body[key];
    const bool is_list = out.is_batch && v.is_array() && std::string(key) != "sampling_params_list";
    if (is_list && v.size() != n)
      return Status(bad(std::string("field '") + key + "' has " + std::to_string(v.size()) + " entries for " + std::to_string(n) + " prompts"));
    return parse(per_item(v, i, is_list), is_list ? std::string(key) + "[" + std::to_string(i) + "]" : std::string(key));
  };
  for (size_t i = 0; i < n; ++i) {
    PromptItem& p = prompts[i];
    // sampling_params is an object, or for a batch possibly a list of objects.
    if (body.contains("sampling_params")) {
      const json& sp = body["sampling_params"];
      const bool list = sp.is_array();
      if (list && (!out.is_batch || sp.size() != n))
        return bad("field 'sampling_params' is a list of " + std::to_string(sp.size()) + " for " + std::to_string(n) + " prompts");
      PDSERVE_ASSIGN_OR_RETURN(p.sampling, parse_sampling_params(per_item(sp, i, list),
                                                                  list ? "sampling_params[" + std::to_string(i) + "]" : "sampling_params"));
    }
    PDSERVE_RETURN_IF_ERROR(item_field("return_logprob", i, [&](const json& v, const std::string& f) -> Status {
      PDSERVE_ASSIGN_OR_RETURN(p.return_logprob, get_bool(v, f));
      return ok_status();
    }));
    PDSERVE_RETURN_IF_ERROR(item_field("logprob_start_len", i, [&](const json& v, const std::string& f) -> Status {
      PDSERVE_ASSIGN_OR_RETURN(p.logprob_start_len, get_int(v, f));
      if (p.logprob_start_len < -1) return Status(bad("field '" + f + "' must be >= -1"));
      return ok_status();
    }));
    PDSERVE_RETURN_IF_ERROR(item_field("top_logprobs_num", i, [&](const json& v, const std::string& f) -> Status {
      PDSERVE_ASSIGN_OR_RETURN(p.top_logprobs_num, get_int(v, f));
      if (p.top_logprobs_num < 0 || p.top_logprobs_num > kMaxTopLogprobs)
        return Status(bad("field '" + f + "' must be in [0, " + std::to_string(kMaxTopLogprobs) + "]"));
      return ok_status();
    }));
    PDSERVE_RETURN_IF_ERROR(item_field("rid", i, [&](const json& v, const std::string& f) -> Status {
      PDSERVE_ASSIGN_OR_RETURN(p.rid, get_string(v, f));
      return ok_status();
    }));
    PDSERVE_RETURN_IF_ERROR(p.sampling.validate(limits.vocab_size));
  }
  PDSERVE_RETURN_IF_ERROR(check_token_ids_logprob(body, n, limits.vocab_size));
  if (body.contains("stream") && !body["stream"].is_null()) {
    PDSERVE_ASSIGN_OR_RETURN(out.stream, get_bool(body["stream"], "stream"));
  }
  if (body.contains("return_text_in_logprobs") && !body["return_text_in_logprobs"].is_null()) {
    PDSERVE_ASSIGN_OR_RETURN(out.return_text_in_logprobs, get_bool(body["return_text_in_logprobs"], "return_text_in_logprobs"));
  }
  // n > 1: each prompt is sampled n times, as n requests (SGLang's parallel sampling).
  int64_t total = 0;
  for (const auto& p : prompts) total += p.sampling.n;
  if (total > limits.max_batch)
    return bad("the request asks for " + std::to_string(total) + " generations; the limit is " + std::to_string(limits.max_batch));
  for (auto& p : prompts) {
    const int64_t copies = p.sampling.n;
    if (copies > 1) out.is_batch = true;
    for (int64_t c = 0; c < copies; ++c) {
      PromptItem q = p;
      q.sampling.n = 1;
      if (!q.rid.empty() && copies > 1) q.rid += "-" + std::to_string(c);
      out.items.push_back(std::move(q));
    }
  }
  PDSERVE_RETURN_IF_ERROR(parse_bootstrap_fields(body, out.items));
  std::set<std::string> rids;
  for (const auto& p : out.items)
    if (!p.rid.empty() && !rids.insert(p.rid).second) return bad("duplicate rid '" + p.rid + "' in one request");
  return out;
}

}  // namespace pdserve::server
