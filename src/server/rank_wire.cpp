#include "server/rank_wire.h"

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "base/json.h"

namespace pdserve::server {

using json = nlohmann::json;
using namespace scheduler;

namespace {

// JSON has no NaN or infinity (dump() would write null): a -inf logprob (a token the model rules
// out) or a NaN from a broken model must still arrive, or a request's final output would be
// dropped as malformed and the client would wait forever. Non-finite values travel as strings.
json number_to_wire(double v) {
  if (std::isfinite(v)) return v;
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

std::optional<double> number_from_wire(const json& j) {
  if (j.is_number()) return j.get<double>();
  if (!j.is_string()) return std::nullopt;
  const auto& s = j.get_ref<const std::string&>();
  if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (s == "inf") return std::numeric_limits<double>::infinity();
  if (s == "-inf") return -std::numeric_limits<double>::infinity();
  return std::nullopt;
}

// Typed fields of one JSON object; every error is kCorrupt and reads "SOURCE: field 'KEY' ..."
// (base/json.h), SOURCE naming the message and the nesting ("request from another node, sampling").
class Reader {
 public:
  Reader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}
  const std::string& source() const { return source_; }

  template <class T>
  Status get(std::string_view key, T& out) const {
    if constexpr (std::is_floating_point_v<T>) {
      PDSERVE_ASSIGN_OR_RETURN(json v, get_field<json>(j_, key, source_, ErrorCode::kCorrupt));
      auto d = number_from_wire(v);
      if (!d) return json_detail::wrong_type(key, source_, "a number", ErrorCode::kCorrupt);
      out = static_cast<T>(*d);
    } else {
      PDSERVE_ASSIGN_OR_RETURN(out, get_field<T>(j_, key, source_, ErrorCode::kCorrupt));
    }
    return ok_status();
  }
  template <class T>
  Status get_optional(std::string_view key, std::optional<T>& out) const {
    PDSERVE_ASSIGN_OR_RETURN(out, get_optional_field<T>(j_, key, source_, ErrorCode::kCorrupt));
    return ok_status();
  }
  // The nested object `key` (read in place, not copied), or nullopt when it is absent and optional.
  Result<std::optional<Reader>> child(std::string_view key, bool required) const {
    if (!j_.is_object()) return json_detail::not_an_object(source_, ErrorCode::kCorrupt);
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (required) return json_detail::missing_field(key, source_, ErrorCode::kCorrupt);
      return std::optional<Reader>();
    }
    if (!it->is_object()) return json_detail::wrong_type(key, source_, "an object", ErrorCode::kCorrupt);
    return std::optional<Reader>(std::in_place, *it, source_ + ", " + std::string(key));
  }

 private:
  const json& j_;
  std::string source_;
};

json logprobs_to_wire(const std::vector<TokenLogprob>& v) {
  json a = json::array();
  for (const auto& t : v) {
    json top = json::array();
    for (const auto& [lp, id] : t.top) top.push_back({number_to_wire(lp), id});
    a.push_back({number_to_wire(t.logprob), t.token_id, std::move(top)});
  }
  return a;
}

// [logprob, token_id] with the logprob possibly non-finite.
bool pair_from_wire(const json& e, float& lp, int32_t& id) {
  if (!e.is_array() || e.size() < 2) return false;
  auto d = number_from_wire(e[0]);
  auto i = json_detail::convert<int32_t>(e[1]);
  if (!d || !i) return false;
  lp = static_cast<float>(*d);
  id = *i;
  return true;
}

Status logprobs_from_wire(const Reader& r, std::string_view key, std::vector<TokenLogprob>& v) {
  json a;
  PDSERVE_RETURN_IF_ERROR(r.get(key, a));
  if (!a.is_array()) return json_detail::wrong_type(key, r.source(), "an array", ErrorCode::kCorrupt);
  v.clear();
  v.reserve(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const json& e = a[i];
    TokenLogprob t;
    bool ok = e.is_array() && e.size() == 3 && pair_from_wire(e, t.logprob, t.token_id) && e[2].is_array();
    for (size_t k = 0; ok && k < e[2].size(); ++k) {
      float lp = 0;
      int32_t id = 0;
      ok = pair_from_wire(e[2][k], lp, id);
      if (ok) t.top.emplace_back(lp, id);
    }
    if (!ok)
      return make_error(ErrorCode::kCorrupt, "{}: field '{}' entry {} must be [logprob, token_id, [[logprob, token_id], ...]]",
                        r.source(), key, i);
    v.push_back(std::move(t));
  }
  return ok_status();
}

json sampling_to_wire(const SamplingParams& p) {
  json j = {{"max_new_tokens", p.max_new_tokens},
            {"min_new_tokens", p.min_new_tokens},
            {"temperature", number_to_wire(p.temperature)},
            {"top_p", number_to_wire(p.top_p)},
            {"top_k", p.top_k},
            {"min_p", number_to_wire(p.min_p)},
            {"frequency_penalty", number_to_wire(p.frequency_penalty)},
            {"presence_penalty", number_to_wire(p.presence_penalty)},
            {"repetition_penalty", number_to_wire(p.repetition_penalty)},
            {"stop", p.stop},
            {"stop_token_ids", p.stop_token_ids},
            {"ignore_eos", p.ignore_eos},
            {"skip_special_tokens", p.skip_special_tokens},
            {"n", p.n}};
  if (p.sampling_seed) j["sampling_seed"] = *p.sampling_seed;
  return j;
}

Status sampling_from_wire(const Reader& r, SamplingParams& p) {
  PDSERVE_RETURN_IF_ERROR(r.get("max_new_tokens", p.max_new_tokens));
  PDSERVE_RETURN_IF_ERROR(r.get("min_new_tokens", p.min_new_tokens));
  PDSERVE_RETURN_IF_ERROR(r.get("temperature", p.temperature));
  PDSERVE_RETURN_IF_ERROR(r.get("top_p", p.top_p));
  PDSERVE_RETURN_IF_ERROR(r.get("top_k", p.top_k));
  PDSERVE_RETURN_IF_ERROR(r.get("min_p", p.min_p));
  PDSERVE_RETURN_IF_ERROR(r.get("frequency_penalty", p.frequency_penalty));
  PDSERVE_RETURN_IF_ERROR(r.get("presence_penalty", p.presence_penalty));
  PDSERVE_RETURN_IF_ERROR(r.get("repetition_penalty", p.repetition_penalty));
  PDSERVE_RETURN_IF_ERROR(r.get("stop", p.stop));
  PDSERVE_RETURN_IF_ERROR(r.get("stop_token_ids", p.stop_token_ids));
  PDSERVE_RETURN_IF_ERROR(r.get("ignore_eos", p.ignore_eos));
  PDSERVE_RETURN_IF_ERROR(r.get("skip_special_tokens", p.skip_special_tokens));
  PDSERVE_RETURN_IF_ERROR(r.get("n", p.n));
  return r.get_optional("sampling_seed", p.sampling_seed);
}

json finish_to_wire(const FinishReason& f) {
  json j = {{"type", static_cast<int>(f.type)}, {"length", f.length}, {"message", f.message}, {"status_code", f.status_code}};
  if (f.matched_id) j["matched_id"] = *f.matched_id;
  if (f.matched_str) j["matched_str"] = *f.matched_str;
  return j;
}

Status finish_from_wire(const Reader& r, FinishReason& f) {
  int type = 0;
  PDSERVE_RETURN_IF_ERROR(r.get("type", type));
  if (type < 0 || type > static_cast<int>(FinishReason::Type::kAbort))
    return make_error(ErrorCode::kCorrupt, "{}: field 'type' must be 0 (length), 1 (stop) or 2 (abort), got {}", r.source(),
                      type);
  f.type = static_cast<FinishReason::Type>(type);
  PDSERVE_RETURN_IF_ERROR(r.get("length", f.length));
  PDSERVE_RETURN_IF_ERROR(r.get("message", f.message));
  PDSERVE_RETURN_IF_ERROR(r.get("status_code", f.status_code));
  PDSERVE_RETURN_IF_ERROR(r.get_optional("matched_id", f.matched_id));
  return r.get_optional("matched_str", f.matched_str);
}

// The decoders use no throwing accessors; this is the backstop that keeps the module boundary
// exception-free even so (an allocation failure on a huge message).
template <class T, class F>
Result<T> decode(const char* what, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kCorrupt, "malformed {} from another node: {}", what, e.what());
  }
}

}  // namespace

json to_wire(const GenerateInput& in) {
  json j = {{"rid", in.rid},
            {"input_ids", in.input_ids},
            {"sampling", sampling_to_wire(in.sampling)},
            {"stream", in.stream},
            {"return_logprob", in.return_logprob},
            {"logprob_start_len", in.logprob_start_len},
            {"top_logprobs_num", in.top_logprobs_num}};
  if (in.bootstrap) j["bootstrap"] = {{"host", in.bootstrap->host}, {"port", in.bootstrap->port}, {"room", in.bootstrap->room}};
  return j;
}

Result<GenerateInput> generate_input_from_wire(const json& j) {
  return decode<GenerateInput>("request", [&]() -> Result<GenerateInput> {
    const Reader r(j, "request from another node");
    GenerateInput in;
    PDSERVE_RETURN_IF_ERROR(r.get("rid", in.rid));
    PDSERVE_RETURN_IF_ERROR(r.get("input_ids", in.input_ids));
    PDSERVE_ASSIGN_OR_RETURN(auto sampling, r.child("sampling", true));
    PDSERVE_RETURN_IF_ERROR(sampling_from_wire(*sampling, in.sampling));
    PDSERVE_RETURN_IF_ERROR(r.get("stream", in.stream));
    PDSERVE_RETURN_IF_ERROR(r.get("return_logprob", in.return_logprob));
    PDSERVE_RETURN_IF_ERROR(r.get("logprob_start_len", in.logprob_start_len));
    PDSERVE_RETURN_IF_ERROR(r.get("top_logprobs_num", in.top_logprobs_num));
    PDSERVE_ASSIGN_OR_RETURN(auto boot, r.child("bootstrap", false));
    if (boot) {
      BootstrapInfo b;
      PDSERVE_RETURN_IF_ERROR(boot->get("host", b.host));
      PDSERVE_RETURN_IF_ERROR(boot->get("port", b.port));
      PDSERVE_RETURN_IF_ERROR(boot->get("room", b.room));
      in.bootstrap = std::move(b);
    }
    return in;
  });
}

json to_wire(const RequestOutput& out) {
  json j = {{"rid", out.rid},
            {"new_ids", out.new_ids},
            {"output_logprobs", logprobs_to_wire(out.output_logprobs)},
            {"input_logprobs", logprobs_to_wire(out.input_logprobs)},
            {"finished", out.finished},
            {"prompt_tokens", out.prompt_tokens},
            {"completion_tokens", out.completion_tokens},
            {"cached_tokens", out.cached_tokens},
            {"total_retractions", out.total_retractions},
            {"dp_rank", out.dp_rank}};
  if (out.finish_reason) j["finish_reason"] = finish_to_wire(*out.finish_reason);
  return j;
}

Result<RequestOutput> request_output_from_wire(const json& j) {
  return decode<RequestOutput>("output", [&]() -> Result<RequestOutput> {
    const Reader r(j, "output from another node");
    RequestOutput out;
    PDSERVE_RETURN_IF_ERROR(r.get("rid", out.rid));
    PDSERVE_RETURN_IF_ERROR(r.get("new_ids", out.new_ids));
    PDSERVE_RETURN_IF_ERROR(logprobs_from_wire(r, "output_logprobs", out.output_logprobs));
    PDSERVE_RETURN_IF_ERROR(logprobs_from_wire(r, "input_logprobs", out.input_logprobs));
    PDSERVE_RETURN_IF_ERROR(r.get("finished", out.finished));
    PDSERVE_RETURN_IF_ERROR(r.get("prompt_tokens", out.prompt_tokens));
    PDSERVE_RETURN_IF_ERROR(r.get("completion_tokens", out.completion_tokens));
    PDSERVE_RETURN_IF_ERROR(r.get("cached_tokens", out.cached_tokens));
    PDSERVE_RETURN_IF_ERROR(r.get("total_retractions", out.total_retractions));
    PDSERVE_RETURN_IF_ERROR(r.get("dp_rank", out.dp_rank));
    PDSERVE_ASSIGN_OR_RETURN(auto finish, r.child("finish_reason", false));
    if (finish) {
      FinishReason f;
      PDSERVE_RETURN_IF_ERROR(finish_from_wire(*finish, f));
      out.finish_reason = std::move(f);
    }
    return out;
  });
}

json to_wire(const SchedulerStats& s) {
  return {{"num_running", s.num_running},
          {"num_waiting", s.num_waiting},
          {"num_tokens", s.num_tokens},
          {"num_retracted_total", s.num_retracted_total},
          {"max_total_num_tokens", s.max_total_num_tokens},
          {"token_usage", number_to_wire(s.token_usage)},
          {"last_gen_throughput", number_to_wire(s.last_gen_throughput)},
          {"cache_hit_rate", number_to_wire(s.cache_hit_rate)},
          {"new_token_ratio", number_to_wire(s.new_token_ratio)},
          {"prompt_tokens_total", s.prompt_tokens_total},
          {"generation_tokens_total", s.generation_tokens_total},
          {"cached_tokens_total", s.cached_tokens_total},
          {"num_requests_total", s.num_requests_total},
          {"num_aborted_total", s.num_aborted_total},
          {"forward_ct", s.forward_ct},
          {"num_prealloc", s.num_prealloc},
          {"num_inflight", s.num_inflight},
          {"num_transfer", s.num_transfer},
          {"num_retracted_waiting", s.num_retracted_waiting},
          {"num_bootstrap_failed_total", s.num_bootstrap_failed_total},
          {"num_transfer_failed_total", s.num_transfer_failed_total},
          {"kv", {s.kv.total, s.kv.free, s.kv.in_requests, s.kv.cached, s.kv.evictable}}};
}

Result<SchedulerStats> scheduler_stats_from_wire(const json& j) {
  return decode<SchedulerStats>("statistics", [&]() -> Result<SchedulerStats> {
    const Reader r(j, "statistics from another node");
    SchedulerStats s;
    PDSERVE_RETURN_IF_ERROR(r.get("num_running", s.num_running));
    PDSERVE_RETURN_IF_ERROR(r.get("num_waiting", s.num_waiting));
    PDSERVE_RETURN_IF_ERROR(r.get("num_tokens", s.num_tokens));
    PDSERVE_RETURN_IF_ERROR(r.get("num_retracted_total", s.num_retracted_total));
    PDSERVE_RETURN_IF_ERROR(r.get("max_total_num_tokens", s.max_total_num_tokens));
    PDSERVE_RETURN_IF_ERROR(r.get("token_usage", s.token_usage));
    PDSERVE_RETURN_IF_ERROR(r.get("last_gen_throughput", s.last_gen_throughput));
    PDSERVE_RETURN_IF_ERROR(r.get("cache_hit_rate", s.cache_hit_rate));
    PDSERVE_RETURN_IF_ERROR(r.get("new_token_ratio", s.new_token_ratio));
    PDSERVE_RETURN_IF_ERROR(r.get("prompt_tokens_total", s.prompt_tokens_total));
    PDSERVE_RETURN_IF_ERROR(r.get("generation_tokens_total", s.generation_tokens_total));
    PDSERVE_RETURN_IF_ERROR(r.get("cached_tokens_total", s.cached_tokens_total));
    PDSERVE_RETURN_IF_ERROR(r.get("num_requests_total", s.num_requests_total));
    PDSERVE_RETURN_IF_ERROR(r.get("num_aborted_total", s.num_aborted_total));
    PDSERVE_RETURN_IF_ERROR(r.get("forward_ct", s.forward_ct));
    PDSERVE_RETURN_IF_ERROR(r.get("num_prealloc", s.num_prealloc));
    PDSERVE_RETURN_IF_ERROR(r.get("num_inflight", s.num_inflight));
    PDSERVE_RETURN_IF_ERROR(r.get("num_transfer", s.num_transfer));
    PDSERVE_RETURN_IF_ERROR(r.get("num_retracted_waiting", s.num_retracted_waiting));
    PDSERVE_RETURN_IF_ERROR(r.get("num_bootstrap_failed_total", s.num_bootstrap_failed_total));
    PDSERVE_RETURN_IF_ERROR(r.get("num_transfer_failed_total", s.num_transfer_failed_total));
    std::vector<int64_t> kv;
    PDSERVE_RETURN_IF_ERROR(r.get("kv", kv));
    if (kv.size() != 5)
      return make_error(ErrorCode::kCorrupt, "{}: field 'kv' must be [total, free, in_requests, cached, evictable], got {} numbers",
                        r.source(), kv.size());
    s.kv = cache::KvAccounting{kv[0], kv[1], kv[2], kv[3], kv[4]};
    return s;
  });
}

}  // namespace pdserve::server
