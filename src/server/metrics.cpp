#include "server/metrics.h"

#include <fmt/format.h>

namespace pdserve::server {

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{{},le=\"{}\"}} {}\n", name, labels, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{{},le=\"+Inf\"}} {}\n", name, labels, cum);
  out += fmt::format("{}_sum{{{}}} {}\n", name, labels, sum_);
  out += fmt::format("{}_count{{{}}} {}\n", name, labels, count_);
}

Metrics::Metrics(std::string model_name, std::vector<const RankHandle*> schedulers)
    : model_name_(std::move(model_name)),
      schedulers_(std::move(schedulers)),
      // SGLang's bucket bounds (seconds).
      ttft_({0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400}),
      itl_({0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6,
            0.8, 1, 2, 4, 6, 8}),
      e2e_({0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 800}),
      kv_latency_ms_({1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000}),
      kv_speed_gb_s_({0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500}) {}

void Metrics::observe_finished(double e2e_s, double ttft_s, int64_t, int64_t, int64_t, bool aborted) {
  std::lock_guard<std::mutex> lock(mu_);
  e2e_.observe(e2e_s);
  ttft_.observe(ttft_s);
  ++finished_;
  if (aborted) ++aborted_;
}

void Metrics::observe_token_gap(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.observe(seconds);
}

std::string Metrics::render() const {
  std::string out;
  auto escape = [](const std::string& s) {
    std::string r;
    for (char c : s) {
      if (c == '\\' || c == '"') r += '\\';
      if (c == '\n') {
        r += "\\n";
        continue;
      }
      r += c;
    }
    return r;
  };
  const std::string model = escape(model_name_);
  std::vector<scheduler::SchedulerStats> stats;
  std::vector<int> ranks;
  for (const auto* s : schedulers_) {
    stats.push_back(s->stats());
    ranks.push_back(s->dp_rank());
  }
  auto rank_labels = [&](size_t i) {
    return fmt::format("model_name=\"{}\",engine_type=\"unified\",tp_rank=\"0\",pp_rank=\"0\",dp_rank=\"{}\"", model, ranks[i]);
  };
  auto gauge = [&](const char* name, const char* help, auto value_of) {
    out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n", name, help, name);
    for (size_t i = 0; i < stats.size(); ++i) out += fmt::format("{}{{{}}} {}\n", name, rank_labels(i), value_of(stats[i]));
  };
  auto counter = [&](const char* name, const char* help, auto value_of) {
    out += fmt::format("# HELP {} {}\n# TYPE {} counter\n", name, help, name);
    for (size_t i = 0; i < stats.size(); ++i) out += fmt::format("{}{{{}}} {}\n", name, rank_labels(i), value_of(stats[i]));
  };
  using S = scheduler::SchedulerStats;
  gauge("sglang:num_running_reqs", "The number of running requests.", [](const S& s) { return s.num_running; });
  gauge("sglang:num_used_tokens", "The number of used tokens.", [](const S& s) { return s.num_tokens; });
  gauge("sglang:token_usage", "The token usage.", [](const S& s) { return s.token_usage; });
  gauge("sglang:gen_throughput", "The generation throughput (token/s).", [](const S& s) { return s.last_gen_throughput; });
  gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", [](const S& s) { return s.num_waiting; });
  gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", [](const S& s) { return s.cache_hit_rate; });
  gauge("sglang:num_retracted_reqs", "The number of retracted requests.", [](const S& s) { return s.num_retracted_total; });
  gauge("sglang:new_token_ratio", "The new token ratio.", [](const S& s) { return s.new_token_ratio; });
  gauge("sglang:is_cuda_graph", "Whether the batch is using CUDA graph.", [](const S&) { return 0; });
  gauge("sglang:max_total_num_tokens", "KV cache capacity in tokens.", [](const S& s) { return s.max_total_num_tokens; });
  counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.", [](const S& s) { return s.prompt_tokens_total; });
  counter("sglang:generation_tokens_total", "Number of generation tokens processed.",
          [](const S& s) { return s.generation_tokens_total; });
  counter("sglang:cached_tokens_total", "Number of cached prompt tokens.", [](const S& s) { return s.cached_tokens_total; });
  counter("sglang:num_requests_total", "Number of requests processed.", [](const S& s) { return s.num_requests_total; });
  counter("sglang:num_aborted_requests_total", "Number of requests aborted.", [](const S& s) { return s.num_aborted_total; });
  // PD disaggregation (zero on a server in mode null).
  gauge("sglang:num_prefill_prealloc_queue_reqs", "Prefill: requests waiting for the decode's pages.",
        [](const S& s) { return s.num_prealloc; });
  gauge("sglang:num_prefill_inflight_queue_reqs", "Prefill: requests whose KV is being sent.", [](const S& s) { return s.num_inflight; });
  gauge("sglang:num_decode_prealloc_queue_reqs", "Decode: requests waiting for handshake or KV memory.",
        [](const S& s) { return s.num_prealloc; });
  gauge("sglang:num_decode_transfer_queue_reqs", "Decode: requests whose KV is arriving.", [](const S& s) { return s.num_transfer; });
  counter("sglang:num_bootstrap_failed_reqs_total", "PD requests that failed before their KV transfer started.",
          [](const S& s) { return s.num_bootstrap_failed_total; });
  counter("sglang:num_transfer_failed_reqs_total", "PD requests whose KV transfer failed.",
          [](const S& s) { return s.num_transfer_failed_total; });
  std::lock_guard<std::mutex> lock(mu_);
  const std::string labels = fmt::format("model_name=\"{}\"", model);
  auto hist = [&](const char* name, const char* help, const Histogram& h) {
    out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    h.render(out, name, labels);
  };
  hist("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttft_);
  hist("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itl_);
  hist("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds", e2e_);
  // PD servers only: SGLang's names carry abbreviated units, which promtool's lint flags.
  if (transfer_source_) {
    for (const auto& t : transfer_source_()) {
      kv_latency_ms_.observe(t.latency_ms);
      kv_speed_gb_s_.observe(t.speed_gb_s);
    }
    hist("sglang:kv_transfer_latency_ms", "KV transfer latency of one request (ms).", kv_latency_ms_);
    hist("sglang:kv_transfer_speed_gb_s", "KV transfer speed of one request (GB/s).", kv_speed_gb_s_);
  }
  if (extra_source_) out += extra_source_(labels);
  return out;
}

}  // namespace pdserve::server
