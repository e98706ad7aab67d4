// rank_wire: what node 0 and the other nodes' DP ranks send each other. Unit tests in the server
// suite: every field round-trips through the text the transport carries, and anything malformed
// is a kCorrupt error naming the field, never an exception.
#include "server/rank_wire.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>

#include <gtest/gtest.h>

namespace pdserve::server {
namespace {

using json = nlohmann::json;
using namespace scheduler;
constexpr float kInf = std::numeric_limits<float>::infinity();

// As the transport does it: to text and back.
json over_the_wire(const json& j) { return json::parse(j.dump()); }

// Equal as values, with -0 != +0 and NaN == NaN: the wire must not change a float at all.
bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || (a == b && std::signbit(a) == std::signbit(b)); }

void expect_same(const std::vector<TokenLogprob>& a, const std::vector<TokenLogprob>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(same(a[i].logprob, b[i].logprob)) << what << "[" << i << "]: " << a[i].logprob << " vs " << b[i].logprob;
    EXPECT_EQ(a[i].token_id, b[i].token_id) << what << "[" << i << "]";
    ASSERT_EQ(a[i].top.size(), b[i].top.size()) << what << "[" << i << "]";
    for (size_t k = 0; k < a[i].top.size(); ++k) {
      EXPECT_TRUE(same(a[i].top[k].first, b[i].top[k].first)) << what << "[" << i << "].top[" << k << "]";
      EXPECT_EQ(a[i].top[k].second, b[i].top[k].second) << what << "[" << i << "].top[" << k << "]";
    }
  }
}

void expect_same(const GenerateInput& a, const GenerateInput& b) {
  EXPECT_EQ(a.rid, b.rid);
  EXPECT_EQ(a.input_ids, b.input_ids);
  EXPECT_EQ(a.stream, b.stream);
  EXPECT_EQ(a.return_logprob, b.return_logprob);
  EXPECT_EQ(a.logprob_start_len, b.logprob_start_len);
  EXPECT_EQ(a.top_logprobs_num, b.top_logprobs_num);
  const SamplingParams &p = a.sampling, &q = b.sampling;
  EXPECT_EQ(p.max_new_tokens, q.max_new_tokens);
  EXPECT_EQ(p.min_new_tokens, q.min_new_tokens);
  EXPECT_TRUE(same(p.temperature, q.temperature)) << p.temperature << " vs " << q.temperature;
  EXPECT_TRUE(same(p.top_p, q.top_p));
  EXPECT_EQ(p.top_k, q.top_k);
  EXPECT_TRUE(same(p.min_p, q.min_p));
  EXPECT_TRUE(same(p.frequency_penalty, q.frequency_penalty));
  EXPECT_TRUE(same(p.presence_penalty, q.presence_penalty));
  EXPECT_TRUE(same(p.repetition_penalty, q.repetition_penalty));
  EXPECT_EQ(p.stop, q.stop);
  EXPECT_EQ(p.stop_token_ids, q.stop_token_ids);
  EXPECT_EQ(p.ignore_eos, q.ignore_eos);
  EXPECT_EQ(p.skip_special_tokens, q.skip_special_tokens);
  EXPECT_EQ(p.sampling_seed, q.sampling_seed);
  EXPECT_EQ(p.n, q.n);
  ASSERT_EQ(a.bootstrap.has_value(), b.bootstrap.has_value());
  if (a.bootstrap) {
    EXPECT_EQ(a.bootstrap->host, b.bootstrap->host);
    EXPECT_EQ(a.bootstrap->port, b.bootstrap->port);
    EXPECT_EQ(a.bootstrap->room, b.bootstrap->room);
  }
}

void expect_same(const RequestOutput& a, const RequestOutput& b) {
  EXPECT_EQ(a.rid, b.rid);
  EXPECT_EQ(a.new_ids, b.new_ids);
  expect_same(a.output_logprobs, b.output_logprobs, "output_logprobs");
  expect_same(a.input_logprobs, b.input_logprobs, "input_logprobs");
  EXPECT_EQ(a.finished, b.finished);
  EXPECT_EQ(a.prompt_tokens, b.prompt_tokens);
  EXPECT_EQ(a.completion_tokens, b.completion_tokens);
  EXPECT_EQ(a.cached_tokens, b.cached_tokens);
  EXPECT_EQ(a.total_retractions, b.total_retractions);
  EXPECT_EQ(a.dp_rank, b.dp_rank);
  ASSERT_EQ(a.finish_reason.has_value(), b.finish_reason.has_value());
  if (a.finish_reason) {
    const FinishReason &f = *a.finish_reason, &g = *b.finish_reason;
    EXPECT_EQ(f.type, g.type);
    EXPECT_EQ(f.length, g.length);
    EXPECT_EQ(f.matched_id, g.matched_id);
    EXPECT_EQ(f.matched_str, g.matched_str);
    EXPECT_EQ(f.message, g.message);
    EXPECT_EQ(f.status_code, g.status_code);
  }
}

GenerateInput full_input() {
  GenerateInput in;
  in.rid = "req-7f3a-ü";
  in.input_ids = {0, 1, 42, std::numeric_limits<int32_t>::max(), 129279};
  in.stream = true;
  in.return_logprob = true;
  in.logprob_start_len = 3;
  in.top_logprobs_num = 5;
  SamplingParams& p = in.sampling;
  p.max_new_tokens = 777;
  p.min_new_tokens = 4;
  p.temperature = 0.7f;  // not exact in binary: must come back bit for bit
  p.top_p = 0.95f;
  p.top_k = 40;
  p.min_p = 0.05f;
  p.frequency_penalty = -1.5f;
  p.presence_penalty = 0.3f;
  p.repetition_penalty = 1.1f;
  p.stop = {"</s>", "终止", "🙂 end", "line\nbreak\t\"quoted\" \\ back", "", std::string("nul\0byte", 8)};
  p.stop_token_ids = {1, 128001};
  p.ignore_eos = true;
  p.skip_special_tokens = false;
  p.sampling_seed = std::numeric_limits<uint64_t>::max();  // above int64's range
  p.n = 2;
  in.bootstrap = BootstrapInfo{"10.0.0.7", 8998, (uint64_t{1} << 63) + 12345};
  return in;
}

TEST(RankWire, GenerateInputRoundTripsEveryField) {
  const GenerateInput in = full_input();
  auto back = generate_input_from_wire(over_the_wire(to_wire(in)));
  ASSERT_TRUE(back) << back.error().message();
  expect_same(in, *back);
}

TEST(RankWire, GenerateInputWithoutBootstrapOrSeed) {
  GenerateInput in = full_input();
  in.bootstrap.reset();
  in.sampling.sampling_seed.reset();
  const json wire = to_wire(in);
  EXPECT_FALSE(wire.contains("bootstrap"));
  auto back = generate_input_from_wire(over_the_wire(wire));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_FALSE(back->bootstrap);
  EXPECT_FALSE(back->sampling.sampling_seed);
  expect_same(in, *back);

  in.sampling.sampling_seed = 0;  // a seed of 0 is a seed, not "none"
  back = generate_input_from_wire(over_the_wire(to_wire(in)));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->sampling.sampling_seed, std::optional<uint64_t>(0));

  const GenerateInput defaults;
  back = generate_input_from_wire(over_the_wire(to_wire(defaults)));
  ASSERT_TRUE(back) << back.error().message();
  expect_same(defaults, *back);
}

TEST(RankWire, UnicodeStopStringsKeepTheirBytes) {
  GenerateInput in;
  in.sampling.stop = {"\xe2\x80\x8b", "日本語のテキスト", "👩‍👩‍👧", "\xc3\xa9\xcc\x81"};  // zero-width space, emoji ZWJ, combining
  auto back = generate_input_from_wire(over_the_wire(to_wire(in)));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(back->sampling.stop, in.sampling.stop);
}

RequestOutput full_output() {
  RequestOutput out;
  out.rid = "req-9";
  out.new_ids = {5, 6, 7};
  out.output_logprobs = {{-0.125f, 5, {{-0.125f, 5}, {-2.5f, 9}, {-3.75e-7f, 11}}},
                         {-kInf, 6, {{-0.01f, 3}, {-kInf, 6}}},  // a ruled-out token: JSON has no -inf
                         {std::numeric_limits<float>::denorm_min(), 7, {}},
                         {-0.0f, 8, {{std::numeric_limits<float>::lowest(), 8}}}};
  out.input_logprobs = {{-1.0f / 3.0f, 100, {{-0.5f, 101}}}, {-7.25f, 102, {}}};
  out.finished = true;
  out.prompt_tokens = 1234;
  out.completion_tokens = 3;
  out.cached_tokens = 1024;
  out.total_retractions = 2;
  out.dp_rank = 13;
  return out;
}

TEST(RankWire, RequestOutputRoundTripsLogprobsAndEveryFinishReason) {
  std::vector<std::optional<FinishReason>> reasons;
  reasons.emplace_back();  // a streaming chunk: no finish reason
  FinishReason length;
  length.type = FinishReason::Type::kLength;
  length.length = 128;
  reasons.push_back(length);
  FinishReason eos;
  eos.type = FinishReason::Type::kStop;
  eos.matched_id = 1;
  reasons.push_back(eos);
  FinishReason stop_str;
  stop_str.type = FinishReason::Type::kStop;
  stop_str.matched_str = "终止 🙂";
  reasons.push_back(stop_str);
  reasons.push_back(abort_reason("The request was aborted: KV transfer failed (node 2 lost)", 503));
  reasons.push_back(abort_reason("aborted by client", 0));
  for (const auto& reason : reasons) {
    RequestOutput out = full_output();
    out.finish_reason = reason;
    out.finished = reason.has_value();
    const json wire = to_wire(out);
    EXPECT_EQ(wire.contains("finish_reason"), reason.has_value());
    auto back = request_output_from_wire(over_the_wire(wire));
    ASSERT_TRUE(back) << back.error().message();
    expect_same(out, *back);
  }
}

TEST(RankWire, NanLogprobSurvivesTheWire) {
  RequestOutput out;
  out.rid = "r";
  out.output_logprobs = {{std::nanf(""), 3, {{std::nanf(""), 3}, {kInf, 4}}}};
  auto back = request_output_from_wire(over_the_wire(to_wire(out)));
  ASSERT_TRUE(back) << back.error().message();
  expect_same(out.output_logprobs, back->output_logprobs, "output_logprobs");
}

SchedulerStats full_stats() {
  SchedulerStats s;
  int64_t v = 1;
  for (int64_t* f : {&s.num_running, &s.num_waiting, &s.num_tokens, &s.num_retracted_total, &s.max_total_num_tokens,
                     &s.prompt_tokens_total, &s.generation_tokens_total, &s.cached_tokens_total, &s.num_requests_total,
                     &s.num_aborted_total, &s.forward_ct, &s.num_prealloc, &s.num_inflight, &s.num_transfer,
                     &s.num_retracted_waiting, &s.num_bootstrap_failed_total, &s.num_transfer_failed_total})
    *f = (v += 1000003);  // distinct, so a swapped pair of fields would show
  s.max_total_num_tokens = int64_t{1} << 40;
  s.token_usage = 0.8123456789012345;
  s.last_gen_throughput = 12345.678;
  s.cache_hit_rate = std::nan("");  // 0/0 before the first request
  s.new_token_ratio = 0.098;
  s.kv = cache::KvAccounting{4096, 1000, 2000, 1096, 500};
  return s;
}

TEST(RankWire, SchedulerStatsRoundTripsEveryField) {
  const SchedulerStats s = full_stats();
  auto back = scheduler_stats_from_wire(over_the_wire(to_wire(s)));
  ASSERT_TRUE(back) << back.error().message();
  const SchedulerStats& b = *back;
  EXPECT_EQ(b.num_running, s.num_running);
  EXPECT_EQ(b.num_waiting, s.num_waiting);
  EXPECT_EQ(b.num_tokens, s.num_tokens);
  EXPECT_EQ(b.num_retracted_total, s.num_retracted_total);
  EXPECT_EQ(b.max_total_num_tokens, s.max_total_num_tokens);
  EXPECT_TRUE(same(b.token_usage, s.token_usage));
  EXPECT_TRUE(same(b.last_gen_throughput, s.last_gen_throughput));
  EXPECT_TRUE(same(b.cache_hit_rate, s.cache_hit_rate));
  EXPECT_TRUE(same(b.new_token_ratio, s.new_token_ratio));
  EXPECT_EQ(b.prompt_tokens_total, s.prompt_tokens_total);
  EXPECT_EQ(b.generation_tokens_total, s.generation_tokens_total);
  EXPECT_EQ(b.cached_tokens_total, s.cached_tokens_total);
  EXPECT_EQ(b.num_requests_total, s.num_requests_total);
  EXPECT_EQ(b.num_aborted_total, s.num_aborted_total);
  EXPECT_EQ(b.forward_ct, s.forward_ct);
  EXPECT_EQ(b.num_prealloc, s.num_prealloc);
  EXPECT_EQ(b.num_inflight, s.num_inflight);
  EXPECT_EQ(b.num_transfer, s.num_transfer);
  EXPECT_EQ(b.num_retracted_waiting, s.num_retracted_waiting);
  EXPECT_EQ(b.num_bootstrap_failed_total, s.num_bootstrap_failed_total);
  EXPECT_EQ(b.num_transfer_failed_total, s.num_transfer_failed_total);
  EXPECT_EQ(b.kv.total, s.kv.total);
  EXPECT_EQ(b.kv.free, s.kv.free);
  EXPECT_EQ(b.kv.in_requests, s.kv.in_requests);
  EXPECT_EQ(b.kv.cached, s.kv.cached);
  EXPECT_EQ(b.kv.evictable, s.kv.evictable);
}

// ---- malformed input -------------------------------------------------------------------------

template <class T>
void expect_corrupt(const Result<T>& r, const std::vector<std::string>& needles, const std::string& case_name) {
  ASSERT_FALSE(r) << case_name << ": accepted";
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt) << case_name;
  for (const auto& n : needles)
    EXPECT_NE(r.error().message().find(n), std::string::npos) << case_name << ": '" << n << "' not in: " << r.error().message();
}

using Decoder = std::function<Status(const json&)>;

template <class F>
Decoder as_status(F f) {
  return [f](const json& j) -> Status {
    auto r = f(j);
    if (!r) return r.error();
    return ok_status();
  };
}

// Every field of `wire` (and of the nested objects named in `nested`), removed and mistyped in
// turn: the decoder must say which field, as a value. `optional` fields may be absent.
void check_every_field(const json& wire, const Decoder& decode, const std::vector<std::string>& nested,
                       const std::vector<std::string>& optional) {
  auto check = [&](const json& bad, const std::string& key, bool may_be_absent, bool removed, const std::string& where) {
    Status st = ok_status();
    ASSERT_NO_THROW(st = decode(bad)) << where << key;
    const std::string case_name = (removed ? "without " : "mistyped ") + where + key;
    if (removed && may_be_absent) {
      EXPECT_TRUE(st) << case_name << ": " << st.error().message();
      return;
    }
    expect_corrupt(st, {"'" + key + "'"}, case_name);
    if (!where.empty() && !st) {  // a nested field's message names its parent too
      EXPECT_NE(st.error().message().find(where.substr(0, where.size() - 1)), std::string::npos) << st.error().message();
    }
  };
  auto is_optional = [&](const std::string& k) { return std::find(optional.begin(), optional.end(), k) != optional.end(); };
  for (const auto& [key, value] : wire.items()) {
    const bool is_nested = std::find(nested.begin(), nested.end(), key) != nested.end();
    json removed = wire;
    removed.erase(key);
    check(removed, key, is_optional(key), true, "");
    json mistyped = wire;
    mistyped[key] = is_nested ? json("an object was expected") : json{{"x", 1}};
    check(mistyped, key, false, false, "");
    if (!is_nested) continue;
    for (const auto& [inner, inner_value] : value.items()) {
      json r = wire;
      r[key].erase(inner);
      check(r, inner, is_optional(inner), true, key + ".");
      json m = wire;
      m[key][inner] = json{{"x", 1}};
      check(m, inner, false, false, key + ".");
    }
  }
}

TEST(RankWire, EveryMissingOrMistypedGenerateInputFieldIsNamed) {
  check_every_field(to_wire(full_input()), as_status(generate_input_from_wire), {"sampling", "bootstrap"},
                    {"bootstrap", "sampling_seed"});
}

TEST(RankWire, EveryMissingOrMistypedRequestOutputFieldIsNamed) {
  RequestOutput out = full_output();
  FinishReason f = abort_reason("x", 400);
  f.matched_id = 3;
  f.matched_str = "s";
  out.finish_reason = f;
  check_every_field(to_wire(out), as_status(request_output_from_wire), {"finish_reason"},
                    {"finish_reason", "matched_id", "matched_str"});
}

TEST(RankWire, EveryMissingOrMistypedStatsFieldIsNamed) {
  check_every_field(to_wire(full_stats()), as_status(scheduler_stats_from_wire), {}, {});
}

TEST(RankWire, SpecificMalformedValues) {
  const json in = to_wire(full_input());
  auto with = [](json j, const json::json_pointer& p, json v) {
    j[p] = std::move(v);
    return j;
  };
  expect_corrupt(generate_input_from_wire(with(in, "/input_ids/1"_json_pointer, "x")), {"'input_ids'"}, "string id");
  expect_corrupt(generate_input_from_wire(with(in, "/input_ids/1"_json_pointer, 1.5)), {"'input_ids'"}, "float id");
  expect_corrupt(generate_input_from_wire(with(in, "/input_ids/1"_json_pointer, int64_t{1} << 40)), {"'input_ids'"}, "id overflow");
  expect_corrupt(generate_input_from_wire(with(in, "/sampling/sampling_seed"_json_pointer, -1)), {"'sampling_seed'", "sampling"},
                 "negative seed");
  expect_corrupt(generate_input_from_wire(with(in, "/sampling/top_p"_json_pointer, "0.9")), {"'top_p'", "sampling"}, "string top_p");
  expect_corrupt(generate_input_from_wire(with(in, "/sampling/stop/0"_json_pointer, 5)), {"'stop'"}, "number stop string");
  expect_corrupt(generate_input_from_wire(with(in, "/stream"_json_pointer, 1)), {"'stream'"}, "int for bool");
  expect_corrupt(generate_input_from_wire(with(in, "/bootstrap/port"_json_pointer, "8998")), {"'port'", "bootstrap"}, "string port");
  for (const json& not_object : {json(), json::array(), json(5), json("text")})
    expect_corrupt(generate_input_from_wire(not_object), {"request from another node"}, not_object.dump());

  RequestOutput o = full_output();
  o.finish_reason = abort_reason("x", 500);
  const json out = to_wire(o);
  for (const json& bad_type : {json(3), json(-1), json("abort"), json(1.5)})
    expect_corrupt(request_output_from_wire(with(out, "/finish_reason/type"_json_pointer, bad_type)), {"'type'", "finish_reason"},
                   "finish type " + bad_type.dump());
  expect_corrupt(request_output_from_wire(with(out, "/finish_reason/type"_json_pointer, 7)), {"got 7"}, "finish type 7");
  expect_corrupt(request_output_from_wire(with(out, "/output_logprobs/1"_json_pointer, json::array({-0.5, 6}))),
                 {"'output_logprobs'", "entry 1"}, "logprob entry without top list");
  expect_corrupt(request_output_from_wire(with(out, "/input_logprobs/0/2/0"_json_pointer, json::array({"a", 1}))),
                 {"'input_logprobs'", "entry 0"}, "top entry with a string logprob");
  expect_corrupt(request_output_from_wire(with(out, "/output_logprobs/0/0"_json_pointer, "-infinity")), {"'output_logprobs'"},
                 "unknown non-finite spelling");
  expect_corrupt(request_output_from_wire(with(out, "/dp_rank"_json_pointer, int64_t{1} << 40)), {"'dp_rank'"}, "dp_rank overflow");

  const json stats = to_wire(full_stats());
  expect_corrupt(scheduler_stats_from_wire(with(stats, "/kv"_json_pointer, json::array({1, 2, 3, 4}))), {"'kv'"}, "short kv");
  expect_corrupt(scheduler_stats_from_wire(with(stats, "/num_running"_json_pointer, 1.5)), {"'num_running'"}, "float count");
  expect_corrupt(scheduler_stats_from_wire(with(stats, "/token_usage"_json_pointer, "high")), {"'token_usage'"}, "string ratio");
}

// Random damage anywhere in a valid message: the decoders answer with a value every time.
void damage(json& j, std::mt19937& rng) {
  static const std::vector<json> kJunk = {json(),      json(true), json(-1),           json(1.5),   json("s"), json::array(),
                                          json::object(), json(1e300), json(UINT64_MAX), json("nan"), json::array({1, "x"})};
  if (j.is_structured() && !j.empty() && rng() % 3 != 0) {
    const size_t i = rng() % j.size();
    auto it = j.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(i));
    if (rng() % 5 == 0 && j.is_object()) j.erase(it);
    else damage(*it, rng);
    return;
  }
  j = kJunk[rng() % kJunk.size()];
}

TEST(RankWire, RandomDamageNeverThrows) {
  std::mt19937 rng(12345);
  RequestOutput o = full_output();
  o.finish_reason = abort_reason("x", 500);
  const json samples[] = {to_wire(full_input()), to_wire(o), to_wire(full_stats())};
  int rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    json j = samples[iter % 3];
    for (int k = 0; k <= static_cast<int>(rng() % 3); ++k) damage(j, rng);
    ASSERT_NO_THROW({
      switch (iter % 3) {
        case 0: rejected += !generate_input_from_wire(j); break;
        case 1: rejected += !request_output_from_wire(j); break;
        default: rejected += !scheduler_stats_from_wire(j); break;
      }
    }) << j.dump();
  }
  EXPECT_GT(rejected, 1000);  // the damage mostly matters; the point is that none of it threw
}

}  // namespace
}  // namespace pdserve::server
