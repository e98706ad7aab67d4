#include "bench/one_batch.h"

#include <cstdio>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "base/clock.h"
#include "bench/bench_command.h"
#include "http/client.h"

namespace pdserve::bench {

using nlohmann::json;

namespace {

struct OneBatchArgs {
  std::string base_url, run_name = "default", result_filename = "result.jsonl";
  std::vector<int64_t> batch_size{1}, input_len{1024}, output_len{16};
  double temperature = 0;
  bool return_logprob = false, skip_warmup = false, profile = false, profile_by_stage = false, show_report = false;
  int64_t client_stream_interval = 1, profile_steps = 3;
  uint64_t seed = 42;
  std::string dataset_name = "random", dataset_path, model_path, tokenizer_path;
};

// Ids of exact length per prompt: uniform over the tokenizer's ordinary tokens when one is found
// (as SGLang's random ids from ShareGPT text, minus the text), else over a range every
// DeepSeek-style vocabulary has.
class IdSource {
 public:
  IdSource(const tokenizer::Tokenizer* tok, uint64_t seed) : rng_(seed) {
    if (tok)
      for (int32_t id = 0; id < tok->vocab_size(); ++id)
        if (tok->token_bytes(id) && !tok->is_special(id)) ids_.push_back(id);
    if (ids_.empty())
      for (int32_t id = 1000; id < 30000; ++id) ids_.push_back(id);
  }
  std::vector<int32_t> make(int64_t n) {
    std::uniform_int_distribution<size_t> pick(0, ids_.size() - 1);
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = ids_[pick(rng_)];
    return v;
  }

 private:
  std::mt19937_64 rng_;
  std::vector<int32_t> ids_;
};

Result<OneBatchResult> run_case(const OneBatchArgs& a, http::Client& c, IdSource& ids, int64_t bs, int64_t in,
                                int64_t out) {
  auto fl = c.post_json(a.base_url + "/flush_cache", "", std::chrono::seconds(60));
  if (!fl) return fl.error().with_context("POST /flush_cache");
  if (a.profile) {
    json p{{"num_steps", a.profile_steps}, {"profile_by_stage", a.profile_by_stage}, {"activities", {"CPU", "GPU"}}};
    auto r = c.post_json(a.base_url + "/start_profile", p.dump(), std::chrono::minutes(10));
    if (!r || r->status != 200)
      return make_error(ErrorCode::kIo, "POST /start_profile failed: {}", r ? r->body : r.error().message());
  }
  json input_ids = json::array();
  for (int64_t i = 0; i < bs; ++i) input_ids.push_back(ids.make(in));
  json body{{"input_ids", std::move(input_ids)},
            {"sampling_params", {{"temperature", a.temperature}, {"max_new_tokens", out}, {"ignore_eos", true},
                                 {"json_schema", nullptr}, {"stream_interval", a.client_stream_interval}}},
            {"return_logprob", a.return_logprob},
            {"stream", true}};
  const double t0 = Clock::monotonic();
  double ttft = 0;
  std::string error;
  auto resp = c.stream(
      http::ClientRequest("POST", a.base_url + "/generate", body.dump(), {{"Content-Type", "application/json"}},
                          std::chrono::hours(6)),
      http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent& e) {
        if (e.data == "[DONE]") return true;
        auto j = json::parse(e.data, nullptr, false);
        if (j.is_discarded() || !j.is_object()) return true;
        if (j.contains("error")) {
          error = j["error"].dump();
          return false;
        }
        const json& m = j.contains("meta_info") ? j["meta_info"] : json();
        if (m.is_object() && m.value("completion_tokens", int64_t{0}) == 1) ttft = Clock::monotonic() - t0;
        const json& fr = m.is_object() && m.contains("finish_reason") ? m["finish_reason"] : json();
        if (fr.is_object() && fr.value("type", "") != "length") {
          error = "unexpected finish reason " + fr.dump();
          return false;
        }
        return true;
      }));
  const double latency = Clock::monotonic() - t0;
  if (!resp) return resp.error().with_context("POST /generate");
  if (resp->status != 200) return make_error(ErrorCode::kIo, "POST /generate: HTTP {} {}", resp->status, resp->body);
  if (!error.empty()) return make_error(ErrorCode::kIo, "POST /generate: {}", error);
  OneBatchResult r{bs, in, out, latency, ttft, 0};
  for (const char* path : {"/server_info", "/get_server_info"}) {
    auto si = c.get(a.base_url + path, std::chrono::seconds(30));
    if (!si || si->status != 200) continue;
    auto j = json::parse(si->body, nullptr, false);
    if (j.is_object() && j.contains("decode") && j["decode"].is_array() && !j["decode"].empty()) j = j["decode"][0];
    if (j.is_object() && j.contains("internal_states") && j["internal_states"].is_array() && !j["internal_states"].empty())
      r.last_gen_throughput = j["internal_states"][0].value("last_gen_throughput", 0.0);
    break;
  }
  return r;
}

int run_one_batch(const OneBatchArgs& args) {
  OneBatchArgs a = args;
  while (!a.base_url.empty() && a.base_url.back() == '/') a.base_url.pop_back();
  for (auto v : {a.batch_size, a.input_len, a.output_len})
    for (int64_t x : v)
      if (x <= 0) return std::fprintf(stderr, "error: --batch-size, --input-len and --output-len must be > 0\n"), 2;
  http::Client c;
  auto tok = find_tokenizer(a.tokenizer_path, a.model_path, a.base_url, c);
  IdSource ids(tok ? tok->get() : nullptr, a.seed);
  if (!a.skip_warmup) {
    std::printf("Warmup: batch size 16, input_len 1024, output_len 16\n");
    std::fflush(stdout);
    OneBatchArgs w = a;
    w.profile = false;
    auto r = run_case(w, c, ids, 16, 1024, 16);
    if (!r) return std::fprintf(stderr, "error: warmup failed: %s\n", r.error().message().c_str()), 1;
  }
  for (int64_t bs : a.batch_size)
    for (int64_t in : a.input_len)
      for (int64_t out : a.output_len) {
        auto r = run_case(a, c, ids, bs, in, out);
        if (!r) return std::fprintf(stderr, "error: %s\n", r.error().message().c_str()), 1;
        std::fputs(format_one_batch(*r).c_str(), stdout);
        std::fflush(stdout);
        if (!a.result_filename.empty()) {
          std::ofstream f(a.result_filename, std::ios::app);
          if (!f) return std::fprintf(stderr, "error: cannot write %s\n", a.result_filename.c_str()), 1;
          f << one_batch_json(*r, a.run_name).dump() << "\n";
        }
      }
  return 0;
}

}  // namespace

std::string format_one_batch(const OneBatchResult& r) {
  std::string s = fmt::format("batch size: {}\ninput_len: {}\noutput_len: {}\n", r.batch_size, r.input_len, r.output_len);
  s += fmt::format("latency: {:.2f} s\nttft: {:.2f} s\n", r.latency, r.ttft);
  s += fmt::format("last generation throughput: {:.2f} tok/s\n", r.last_gen_throughput);
  s += fmt::format("input throughput: {:.2f} tok/s\n", r.input_throughput());
  if (r.output_len != 1) s += fmt::format("output throughput: {:.2f} tok/s\n", r.output_throughput());
  return s;
}

json one_batch_json(const OneBatchResult& r, const std::string& run_name) {
  return {{"run_name", run_name},
          {"batch_size", r.batch_size},
          {"input_len", r.input_len},
          {"output_len", r.output_len},
          {"latency", r.latency},
          {"ttft", r.ttft},
          {"input_throughput", r.input_throughput()},
          {"output_throughput", r.output_throughput()},
          {"overall_throughput", r.overall_throughput()},
          {"last_gen_throughput", r.last_gen_throughput}};
}

std::function<int()> add_bench_one_batch_command(CLI::App& root) {
  auto a = std::make_shared<OneBatchArgs>();
  CLI::App* app = root.add_subcommand("bench-one-batch", "One large batch against a running server (sglang.bench_one_batch_server)");
  app->add_option("--base-url", a->base_url, "Server (or router) URL")->required();
  app->add_option("--batch-size", a->batch_size, "One or more batch sizes")->capture_default_str();
  app->add_option("--input-len", a->input_len, "One or more input lengths")->capture_default_str();
  app->add_option("--output-len", a->output_len, "One or more output lengths")->capture_default_str();
  app->add_option("--temperature", a->temperature)->capture_default_str();
  app->add_flag("--return-logprob", a->return_logprob);
  app->add_option("--client-stream-interval", a->client_stream_interval)->capture_default_str();
  app->add_option("--result-filename", a->result_filename, "JSONL file the results are appended to")->capture_default_str();
  app->add_option("--run-name", a->run_name)->capture_default_str();
  app->add_option("--seed", a->seed)->capture_default_str();
  app->add_flag("--skip-warmup", a->skip_warmup);
  app->add_flag("--show-report", a->show_report, "Accepted for compatibility");
  app->add_flag("--profile", a->profile, "Profile each case with /start_profile");
  app->add_option("--profile-steps", a->profile_steps)->capture_default_str();
  app->add_flag("--profile-by-stage", a->profile_by_stage);
  app->add_option("--dataset-name", a->dataset_name, "random (ids of exact length)")->check(CLI::IsMember({"random"}));
  app->add_option("--dataset-path", a->dataset_path, "Accepted for compatibility (ids are drawn from the vocabulary)");
  app->add_option("--model-path", a->model_path, "Local model folder (for its tokenizer)");
  app->add_option("--tokenizer-path", a->tokenizer_path, "Tokenizer folder");
  return [a] { return run_one_batch(*a); };
}

}  // namespace pdserve::bench
