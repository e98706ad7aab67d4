#include "bench/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace pdserve::bench {

using nlohmann::json;

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double stddev(const std::vector<double>& v) {
  if (v.empty()) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size()));
}

Stats stats_ms(const std::vector<double>& s) {
  Stats st;
  st.mean = mean(s) * 1000;
  st.median = percentile(s, 50) * 1000;
  st.std = stddev(s) * 1000;
  st.p95 = percentile(s, 95) * 1000;
  st.p99 = percentile(s, 99) * 1000;
  st.max = s.empty() ? 0 : *std::max_element(s.begin(), s.end()) * 1000;
  return st;
}

BenchmarkMetrics compute_metrics(const std::vector<RequestResult>& outputs, double duration,
                                 const tokenizer::Tokenizer* tok) {
  BenchmarkMetrics m;
  m.duration = duration;
  std::vector<double> ttfts, tpots, itls, e2es;
  for (const auto& o : outputs) {
    if (!o.success) continue;
    ++m.completed;
    m.total_input += o.prompt_len;
    m.total_output += o.output_len;
    int64_t retok = o.output_len;
    if (tok) {
      auto ids = tok->encode(o.generated_text, false);
      if (ids) retok = static_cast<int64_t>(ids->size());
    }
    m.total_output_retokenized += retok;
    if (o.output_len > 1) tpots.push_back((o.latency - o.ttft) / static_cast<double>(o.output_len - 1));
    itls.insert(itls.end(), o.itl.begin(), o.itl.end());
    ttfts.push_back(o.ttft);
    e2es.push_back(o.latency);
  }
  if (duration > 0) {
    m.request_throughput = static_cast<double>(m.completed) / duration;
    m.input_throughput = static_cast<double>(m.total_input) / duration;
    m.output_throughput = static_cast<double>(m.total_output) / duration;
    m.total_throughput = static_cast<double>(m.total_input + m.total_output) / duration;
    double sum = 0;
    for (double e : e2es) sum += e;
    m.concurrency = sum / duration;
  }
  m.ttft = stats_ms(ttfts);
  m.tpot = stats_ms(tpots);
  m.itl = stats_ms(itls);
  m.e2e = stats_ms(e2es);
  return m;
}

std::string python_float(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (std::isnan(v)) return "nan";
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

namespace {

// Python's "{s:{c}^{n}}": centred, the odd pad character on the right.
std::string centred(const std::string& s, char c, size_t n = 50) {
  if (s.size() >= n) return s;
  const size_t pad = n - s.size(), left = pad / 2;
  return std::string(left, c) + s + std::string(pad - left, c);
}

// "{:<40} {:<10}" and "{:<40} {:<10.2f}" lines.
void line(std::string& out, const std::string& label, const std::string& value) {
  out += fmt::format("{:<40} {:<10}\n", label, value);
}
void line(std::string& out, const std::string& label, double value) { line(out, label, fmt::format("{:.2f}", value)); }
void line(std::string& out, const std::string& label, int64_t value) { line(out, label, std::to_string(value)); }

}  // namespace

std::vector<std::string> result_labels(bool with_accept_length) {
  std::vector<std::string> l{"Backend:",
                             "Traffic request rate:",
                             "Max request concurrency:",
                             "Successful requests:",
                             "Benchmark duration (s):",
                             "Total input tokens:",
                             "Total input text tokens:",
                             "Total input vision tokens:",
                             "Total generated tokens:",
                             "Total generated tokens (retokenized):",
                             "Request throughput (req/s):",
                             "Input token throughput (tok/s):",
                             "Output token throughput (tok/s):",
                             "Total token throughput (tok/s):",
                             "Concurrency:"};
  if (with_accept_length) l.push_back("Accept length:");
  for (const char* s : {"Mean E2E Latency (ms):", "Median E2E Latency (ms):", "Mean TTFT (ms):", "Median TTFT (ms):",
                        "P99 TTFT (ms):", "Mean TPOT (ms):", "Median TPOT (ms):", "P99 TPOT (ms):", "Mean ITL (ms):",
                        "Median ITL (ms):", "P95 ITL (ms):", "P99 ITL (ms):", "Max ITL (ms):"})
    l.push_back(s);
  return l;
}

std::string format_results(const BenchmarkMetrics& m, const ReportHeader& h) {
  std::string out = "\n";
  out += centred(" Serving Benchmark Result ", '=');
  out += "\n";
  line(out, "Backend:", h.backend);
  line(out, "Traffic request rate:", python_float(h.request_rate));
  line(out, "Max request concurrency:", h.max_concurrency ? std::to_string(*h.max_concurrency) : "not set");
  line(out, "Successful requests:", m.completed);
  line(out, "Benchmark duration (s):", m.duration);
  line(out, "Total input tokens:", m.total_input);
  line(out, "Total input text tokens:", m.total_input);
  line(out, "Total input vision tokens:", int64_t{0});
  line(out, "Total generated tokens:", m.total_output);
  line(out, "Total generated tokens (retokenized):", m.total_output_retokenized);
  line(out, "Request throughput (req/s):", m.request_throughput);
  line(out, "Input token throughput (tok/s):", m.input_throughput);
  line(out, "Output token throughput (tok/s):", m.output_throughput);
  line(out, "Total token throughput (tok/s):", m.total_throughput);
  line(out, "Concurrency:", m.concurrency);
  if (h.accept_length) line(out, "Accept length:", *h.accept_length);
  out += centred("End-to-End Latency", '-') + "\n";
  line(out, "Mean E2E Latency (ms):", m.e2e.mean);
  line(out, "Median E2E Latency (ms):", m.e2e.median);
  out += centred("Time to First Token", '-') + "\n";
  line(out, "Mean TTFT (ms):", m.ttft.mean);
  line(out, "Median TTFT (ms):", m.ttft.median);
  line(out, "P99 TTFT (ms):", m.ttft.p99);
  out += centred("Time per Output Token (excl. 1st token)", '-') + "\n";
  line(out, "Mean TPOT (ms):", m.tpot.mean);
  line(out, "Median TPOT (ms):", m.tpot.median);
  line(out, "P99 TPOT (ms):", m.tpot.p99);
  out += centred("Inter-Token Latency", '-') + "\n";
  line(out, "Mean ITL (ms):", m.itl.mean);
  line(out, "Median ITL (ms):", m.itl.median);
  line(out, "P95 ITL (ms):", m.itl.p95);
  line(out, "P99 ITL (ms):", m.itl.p99);
  line(out, "Max ITL (ms):", m.itl.max);
  out += std::string(50, '=') + "\n";
  return out;
}

json results_json(const BenchmarkMetrics& m, const ReportHeader& h, const RunInfo& info,
                  const std::vector<RequestResult>* details) {
  json j;
  j["tag"] = info.tag.empty() ? json(nullptr) : json(info.tag);
  j["backend"] = h.backend;
  j["dataset_name"] = info.dataset_name;
  j["request_rate"] = std::isinf(h.request_rate) ? json("inf") : json(h.request_rate);
  j["max_concurrency"] = h.max_concurrency ? json(*h.max_concurrency) : json(nullptr);
  j["sharegpt_output_len"] = info.sharegpt_output_len ? json(*info.sharegpt_output_len) : json(nullptr);
  j["random_input_len"] = info.random_input_len;
  j["random_output_len"] = info.random_output_len;
  j["random_range_ratio"] = info.random_range_ratio;
  j["server_info"] = info.server_info;
  j["duration"] = m.duration;
  j["completed"] = m.completed;
  j["total_input_tokens"] = m.total_input;
  j["total_input_text_tokens"] = m.total_input;
  j["total_input_vision_tokens"] = 0;
  j["total_output_tokens"] = m.total_output;
  j["total_output_tokens_retokenized"] = m.total_output_retokenized;
  j["request_throughput"] = m.request_throughput;
  j["input_throughput"] = m.input_throughput;
  j["output_throughput"] = m.output_throughput;
  j["total_throughput"] = m.total_throughput;
  auto put = [&](const std::string& name, const Stats& s, bool p95) {
    j["mean_" + name + "_ms"] = s.mean;
    j["median_" + name + "_ms"] = s.median;
    j["std_" + name + "_ms"] = s.std;
    if (p95) j["p95_" + name + "_ms"] = s.p95;
    j["p99_" + name + "_ms"] = s.p99;
  };
  put("e2e_latency", m.e2e, false);
  put("ttft", m.ttft, false);
  put("tpot", m.tpot, false);
  put("itl", m.itl, true);
  j["concurrency"] = m.concurrency;
  j["accept_length"] = h.accept_length ? json(*h.accept_length) : json(nullptr);
  if (details) {
    json in = json::array(), out = json::array(), ttfts = json::array(), itls = json::array(),
         texts = json::array(), errors = json::array();
    for (const auto& o : *details) {
      in.push_back(o.prompt_len);
      out.push_back(o.success ? o.output_len : 0);
      ttfts.push_back(o.ttft);
      itls.push_back(o.itl);
      texts.push_back(o.generated_text);
      errors.push_back(o.error);
    }
    j["input_lens"] = in;
    j["output_lens"] = out;
    j["ttfts"] = ttfts;
    j["itls"] = itls;
    j["generated_texts"] = texts;
    j["errors"] = errors;
  }
  return j;
}

}  // namespace pdserve::bench
