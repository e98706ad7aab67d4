// The benchmark's numbers and reports, as sglang.bench_serving computes and prints them
// (sglang-spec §6.1): the "Serving Benchmark Result" block (same labels, order and widths) and
// the JSONL record (same field names), so scripts that parse SGLang's output parse ours.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/backend.h"
#include "bench/dataset.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::bench {

// numpy.percentile's default (linear interpolation between closest ranks); 0 for no values.
double percentile(std::vector<double> v, double p);
double mean(const std::vector<double>& v);
double stddev(const std::vector<double>& v);  // population, as numpy.std

struct Stats {
  double mean = 0, median = 0, std = 0, p95 = 0, p99 = 0, max = 0;  // milliseconds
};
Stats stats_ms(const std::vector<double>& seconds);

struct BenchmarkMetrics {
  int64_t completed = 0, total_input = 0, total_output = 0, total_output_retokenized = 0;
  double duration = 0;
  double request_throughput = 0, input_throughput = 0, output_throughput = 0, total_throughput = 0;
  double concurrency = 0;  // sum of e2e latencies / duration
  Stats ttft, tpot, itl, e2e;
};

// Failed requests count nowhere but in `completed`'s complement. `tok` (may be null) re-tokenizes
// the generated text for "Total generated tokens (retokenized)"; without it the count is reused.
BenchmarkMetrics compute_metrics(const std::vector<RequestResult>& outputs, double duration,
                                 const tokenizer::Tokenizer* tok);

struct ReportHeader {
  std::string backend;
  double request_rate = 0;  // inf when unlimited
  std::optional<int64_t> max_concurrency;
  std::optional<double> accept_length;
};

// Python's str() of a float: "inf", "4.0", "2.5".
std::string python_float(double v);
// The printed block, ending in a newline.
std::string format_results(const BenchmarkMetrics& m, const ReportHeader& h);

struct RunInfo {
  std::string tag, dataset_name;
  std::optional<int64_t> sharegpt_output_len;
  int64_t random_input_len = 0, random_output_len = 0;
  double random_range_ratio = 0;
  nlohmann::json server_info;
};
// The JSONL record; with details also input_lens, output_lens, ttfts, itls, generated_texts, errors.
nlohmann::json results_json(const BenchmarkMetrics& m, const ReportHeader& h, const RunInfo& info,
                            const std::vector<RequestResult>* details);

// Labels of the block in order, for tests and parsers: "Backend:", "Traffic request rate:", ...
std::vector<std::string> result_labels(bool with_accept_length);

}  // namespace pdserve::bench
