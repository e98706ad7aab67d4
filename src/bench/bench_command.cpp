#include "bench/bench_command.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "base/json.h"
#include "bench/dataset.h"
#include "bench/metrics.h"
#include "bench/plot.h"
#include "bench/runner.h"

namespace pdserve::bench {

using nlohmann::json;

namespace {

struct BenchArgs {
  std::string backend = "sglang", base_url, host = "127.0.0.1";
  int port = 30000;
  std::string model, served_model_name, tokenizer;
  DatasetOptions ds;
  std::string request_rate = "inf";
  double burstiness = 1.0;
  int64_t max_concurrency = 0;
  int64_t warmup_requests = 1;
  bool disable_stream = false, disable_ignore_eos = false, return_logprob = false, flush_cache = false,
       profile = false, pd_separated = false, output_details = false, disable_tqdm = false;
  std::string extra_request_body, output_file, tag, plot;
  std::vector<std::string> profile_prefill_url, profile_decode_url;
  double request_timeout = 6 * 3600;  // aiohttp's 6 h in SGLang's client
  int64_t sharegpt_output_len = 0, sharegpt_context_len = 0;
};

int fail(const std::string& msg) {
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  return 1;
}

Result<double> parse_rate(const std::string& s) {
  if (s == "inf") return std::numeric_limits<double>::infinity();
  try {
    size_t pos = 0;
    const double v = std::stod(s, &pos);
    if (pos == s.size() && v > 0) return v;
  } catch (...) {
  }
  return make_error(ErrorCode::kInvalidArgument, "--request-rate must be a positive number or inf, got '{}'", s);
}

// POSTs a control request to each URL; the first failure is the error.
Status post_all(http::Client& c, const std::vector<std::string>& bases, const std::string& path, const std::string& body) {
  for (const auto& b : bases) {
    auto r = c.post_json(b + path, body, std::chrono::minutes(10));
    if (!r) return r.error().with_context(b + path);
    if (r->status != 200) return make_error(ErrorCode::kIo, "{}{}: HTTP {} {}", b, path, r->status, r->body);
  }
  return ok_status();
}

json fetch_server_info(http::Client& c, const std::string& base) {
  for (const char* path : {"/server_info", "/get_server_info"}) {
    auto r = c.get(base + path, std::chrono::seconds(30));
    if (r && r->status == 200) {
      auto j = json::parse(r->body, nullptr, false);
      if (!j.is_discarded()) return j;
    }
  }
  return nullptr;
}

std::optional<double> accept_length(const json& info, bool pd) {
  const json* s = &info;
  if (pd) {
    if (!info.is_object() || !info.contains("decode") || !info["decode"].is_array() || info["decode"].empty()) return std::nullopt;
    s = &info["decode"][0];
  }
  if (!s->is_object() || !s->contains("internal_states") || !(*s)["internal_states"].is_array() ||
      (*s)["internal_states"].empty())
    return std::nullopt;
  const json& st = (*s)["internal_states"][0];
  if (st.is_object() && st.contains("avg_spec_accept_length") && st["avg_spec_accept_length"].is_number())
    return st["avg_spec_accept_length"].get<double>();
  return std::nullopt;
}

std::string default_output_file(const BenchArgs& a) {
  char mmdd[8];
  const std::time_t t = std::time(nullptr);
  std::strftime(mmdd, sizeof(mmdd), "%m%d", std::localtime(&t));
  if (a.ds.name.rfind("random", 0) == 0)
    return fmt::format("{}_{}_{}_{}_{}.jsonl", a.backend, mmdd, a.ds.num_prompts, a.ds.random_input_len, a.ds.random_output_len);
  return fmt::format("{}_{}_{}_sharegpt.jsonl", a.backend, mmdd, a.ds.num_prompts);
}

std::string oai_model_name(const BenchArgs& a, http::Client& c, const std::string& base) {
  if (!a.served_model_name.empty()) return a.served_model_name;
  if (!a.model.empty()) return a.model;
  auto r = c.get(base + "/v1/models", std::chrono::seconds(30));
  if (r && r->status == 200) {
    auto j = json::parse(r->body, nullptr, false);
    if (j.is_object() && j.contains("data") && j["data"].is_array() && !j["data"].empty() && j["data"][0].contains("id"))
      return j["data"][0]["id"].get<std::string>();
  }
  return "default";
}

int run_bench(BenchArgs a, const CLI::App& app) {
  auto backend = parse_backend(a.backend);
  if (!backend) return fail(backend.error().message());
  auto rate = parse_rate(a.request_rate);
  if (!rate) return fail(rate.error().message());
  std::string base = a.base_url.empty() ? fmt::format("http://{}:{}", a.host, a.port) : a.base_url;
  while (!base.empty() && base.back() == '/') base.pop_back();
  if (app.count("--sharegpt-output-len")) a.ds.sharegpt_output_len = a.sharegpt_output_len;
  if (app.count("--sharegpt-context-len")) a.ds.sharegpt_context_len = a.sharegpt_context_len;
  if (app.count("--max-concurrency") && a.max_concurrency <= 0) return fail("--max-concurrency must be > 0");
  if (a.warmup_requests < 0) return fail("--warmup-requests must be >= 0");
  json extra = json::object();
  if (!a.extra_request_body.empty()) {
    auto e = parse_json(a.extra_request_body, "--extra-request-body");
    if (!e || !e->is_object()) return fail(e ? "--extra-request-body must be a JSON object" : e.error().message());
    extra = *e;
  }

  http::Client client;
  auto tok = find_tokenizer(a.tokenizer, a.model, base, client);
  if (!tok) return fail(tok.error().message());
  auto requests = build_dataset(a.ds, **tok);
  if (!requests) return fail(requests.error().message());
  int64_t in_tokens = 0, out_tokens = 0;
  for (const auto& r : *requests) {
    in_tokens += r.prompt_len;
    out_tokens += r.output_len;
  }
  std::printf("#Input tokens: %lld\n#Output tokens: %lld\n", static_cast<long long>(in_tokens),
              static_cast<long long>(out_tokens));

  RunOptions ro;
  ro.base_url = base;
  ro.request.backend = *backend;
  ro.request.stream = !a.disable_stream;
  ro.request.ignore_eos = !a.disable_ignore_eos;
  ro.request.return_logprob = a.return_logprob;
  ro.request.extra_body = extra;
  if (*backend != Backend::kSglang) ro.request.model = oai_model_name(a, client, base);
  ro.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.request_timeout * 1000));
  ro.seed = a.ds.seed;

  if (a.warmup_requests > 0) {
    std::printf("Starting warmup with %lld sequences...\n", static_cast<long long>(a.warmup_requests));
    std::fflush(stdout);
    std::vector<DatasetRequest> warm(static_cast<size_t>(a.warmup_requests), requests->front());
    RunOptions wo = ro;
    wo.output_len = std::min<int64_t>(requests->front().output_len, 32);
    wo.request_rate = 0;
    const auto w = run_requests(warm, wo);
    for (const auto& o : w.outputs)
      if (!o.success)
        return fail("Warmup failed - Please make sure benchmark arguments are correctly specified. Error: " + o.error);
    std::printf("Warmup completed with %lld sequences. Starting main benchmark run...\n",
                static_cast<long long>(a.warmup_requests));
  }
  if (a.flush_cache) {
    if (auto st = post_all(client, {base}, "/flush_cache", ""); !st) return fail(st.error().message());
    std::this_thread::sleep_for(std::chrono::seconds(1));  // as SGLang: let the flush settle
  }
  std::vector<std::string> profile_urls;
  if (a.pd_separated) {
    profile_urls = a.profile_prefill_url;
    profile_urls.insert(profile_urls.end(), a.profile_decode_url.begin(), a.profile_decode_url.end());
  }
  if (profile_urls.empty()) profile_urls = {base};
  if (a.profile) {
    std::printf("Starting profiler...\n");
    std::fflush(stdout);
    if (auto st = post_all(client, profile_urls, "/start_profile", ""); !st) return fail(st.error().message());
  }

  ro.request_rate = *rate;
  ro.burstiness = a.burstiness;
  if (a.max_concurrency > 0) ro.max_concurrency = a.max_concurrency;
  ro.progress = !a.disable_tqdm;
  std::fflush(stdout);
  const RunResult run = run_requests(*requests, ro);

  if (a.profile) {
    std::printf("Stopping profiler...\n");
    if (auto st = post_all(client, profile_urls, "/stop_profile", ""); !st)
      std::fprintf(stderr, "warning: %s\n", st.error().message().c_str());
  }
  const json server_info = fetch_server_info(client, base);
  const auto m = compute_metrics(run.outputs, run.duration, tok->get());
  ReportHeader h{a.backend, *rate, std::nullopt, accept_length(server_info, a.pd_separated)};
  if (a.max_concurrency > 0) h.max_concurrency = a.max_concurrency;
  std::fputs(format_results(m, h).c_str(), stdout);
  std::fflush(stdout);

  RunInfo info{a.tag, a.ds.name, a.ds.sharegpt_output_len, a.ds.random_input_len, a.ds.random_output_len,
               a.ds.random_range_ratio, server_info};
  const std::string out_file = a.output_file.empty() ? default_output_file(a) : a.output_file;
  {
    std::ofstream f(out_file, std::ios::app);
    if (!f) return fail("cannot write " + out_file);
    f << results_json(m, h, info, a.output_details ? &run.outputs : nullptr)
             .dump(-1, ' ', false, json::error_handler_t::replace)
      << "\n";
  }
  if (!a.plot.empty()) {
    std::ofstream f(a.plot);
    if (!f) return fail("cannot write " + a.plot);
    f << benchmark_plot_svg(run.outputs, run.duration);
  }
  const auto failed = static_cast<int64_t>(run.outputs.size()) - m.completed;
  if (failed > 0) {
    for (const auto& o : run.outputs)
      if (!o.success) {
        std::fprintf(stderr, "%lld of %zu requests failed; the first error: %s\n", static_cast<long long>(failed),
                     run.outputs.size(), o.error.c_str());
        break;
      }
  }
  return m.completed > 0 ? 0 : 1;
}

}  // namespace

Result<std::shared_ptr<tokenizer::Tokenizer>> find_tokenizer(const std::string& tokenizer, const std::string& model,
                                                             const std::string& base_url, http::Client& client) {
  namespace fs = std::filesystem;
  std::vector<std::string> tried;
  auto try_dir = [&](const std::string& path) -> std::optional<fs::path> {
    if (path.empty()) return std::nullopt;
    fs::path p = path;
    if (fs::is_regular_file(p)) p = p.parent_path();
    tried.push_back(p.string());
    if (fs::is_regular_file(p / "tokenizer.json")) return p;
    return std::nullopt;
  };
  std::optional<fs::path> dir = try_dir(tokenizer);
  if (!dir && tokenizer.empty()) dir = try_dir(model);
  if (!dir && tokenizer.empty() && !base_url.empty()) {
    auto r = client.get(base_url + "/model_info", std::chrono::seconds(30));
    if (r && r->status == 200) {
      auto j = json::parse(r->body, nullptr, false);
      if (j.is_object() && j.contains("tokenizer_path") && j["tokenizer_path"].is_string())
        dir = try_dir(j["tokenizer_path"].get<std::string>());
    }
  }
  if (!dir)
    return make_error(ErrorCode::kNotFound,
                      "no tokenizer found (tried: {}); give --tokenizer DIR with a tokenizer.json",
                      tried.empty() ? std::string("nothing; the server did not answer /model_info") : fmt::format("{}", fmt::join(tried, ", ")));
  return tokenizer::Tokenizer::load(*dir);
}

std::function<int()> add_bench_command(CLI::App& root) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* app = root.add_subcommand("bench", "Online serving benchmark (sglang.bench_serving)");
  app->add_option("--backend", a->backend, "sglang | sglang-native | sglang-oai | sglang-oai-chat")->capture_default_str();
  app->add_option("--base-url", a->base_url, "Server URL (default http://HOST:PORT)");
  app->add_option("--host", a->host)->capture_default_str();
  app->add_option("--port", a->port)->capture_default_str();
  app->add_option("--dataset-name", a->ds.name, "sharegpt | random | random-ids | generated-shared-prefix")->capture_default_str();
  app->add_option("--dataset-path", a->ds.path, "ShareGPT JSON file");
  app->add_option("--model", a->model, "Model name for OpenAI backends; a local folder also gives the tokenizer");
  app->add_option("--served-model-name", a->served_model_name, "The OpenAI 'model' field");
  app->add_option("--tokenizer", a->tokenizer, "Tokenizer folder (default: --model or the server's tokenizer_path)");
  app->add_option("--num-prompts", a->ds.num_prompts)->capture_default_str();
  app->add_option("--sharegpt-output-len", a->sharegpt_output_len, "Fixed output length for sharegpt");
  app->add_option("--sharegpt-context-len", a->sharegpt_context_len, "Skip sharegpt prompts longer than this in total");
  app->add_option("--random-input-len", a->ds.random_input_len)->capture_default_str();
  app->add_option("--random-output-len", a->ds.random_output_len)->capture_default_str();
  app->add_option("--random-range-ratio", a->ds.random_range_ratio)->capture_default_str();
  app->add_flag("--tokenize-prompt", a->ds.tokenize_prompt, "random: send token ids instead of text");
  app->add_option("--gsp-num-groups", a->ds.gsp_num_groups)->capture_default_str();
  app->add_option("--gsp-prompts-per-group", a->ds.gsp_prompts_per_group)->capture_default_str();
  app->add_option("--gsp-system-prompt-len", a->ds.gsp_system_prompt_len)->capture_default_str();
  app->add_option("--gsp-question-len", a->ds.gsp_question_len)->capture_default_str();
  app->add_option("--gsp-output-len", a->ds.gsp_output_len)->capture_default_str();
  app->add_option("--request-rate", a->request_rate, "Requests/s (Poisson arrivals) or inf")->capture_default_str();
  app->add_option("--burstiness", a->burstiness, "Gamma shape of the gaps (1 = Poisson)")->capture_default_str();
  app->add_option("--max-concurrency", a->max_concurrency, "At most this many requests in flight");
  app->add_option("--warmup-requests", a->warmup_requests)->capture_default_str();
  app->add_option("--seed", a->ds.seed)->capture_default_str();
  app->add_flag("--disable-stream", a->disable_stream);
  app->add_flag("--disable-ignore-eos", a->disable_ignore_eos);
  app->add_flag("--return-logprob", a->return_logprob);
  app->add_option("--extra-request-body", a->extra_request_body, "JSON object merged into every request body");
  app->add_flag("--flush-cache", a->flush_cache, "POST /flush_cache before the run");
  app->add_flag("--profile", a->profile, "POST /start_profile and /stop_profile around the run");
  app->add_flag("--pd-separated", a->pd_separated, "PD mode: accept length from server_info.decode[0]; profile URLs below");
  app->add_option("--profile-prefill-url", a->profile_prefill_url, "With --pd-separated: prefill servers to profile");
  app->add_option("--profile-decode-url", a->profile_decode_url, "With --pd-separated: decode servers to profile");
  app->add_option("--output-file", a->output_file, "JSONL file the results are appended to");
  app->add_flag("--output-details", a->output_details, "Add per-request arrays to the JSONL record");
  app->add_flag("--disable-tqdm", a->disable_tqdm, "No progress bar");
  app->add_option("--tag", a->tag, "Stored in the JSONL record");
  app->add_option("--plot", a->plot, "Write latency distributions and throughput over time as SVG");
  app->add_option("--request-timeout", a->request_timeout, "Seconds one request may take")->capture_default_str();
  return [a, app] { return run_bench(*a, *app); };
}

}  // namespace pdserve::bench
