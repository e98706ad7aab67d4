// Metrics as SGLang computes them (numpy percentiles, population std, TPOT excluding the first
// token, concurrency = sum of latencies / duration), and the results block and JSONL record with
// SGLang's labels, order, widths and field names.
#include <sstream>

#include <gtest/gtest.h>

#include "bench/metrics.h"

namespace pdserve::bench {
namespace {

TEST(Metrics, PercentileMatchesNumpy) {
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 99), 3.97);    // np.percentile([1,2,3,4], 99)
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);     // unsorted input
  EXPECT_DOUBLE_EQ(percentile({10, 20, 30}, 95), 29.0);    // 20 + 0.9 * 10
  EXPECT_DOUBLE_EQ(percentile({5}, 99), 5.0);
  EXPECT_DOUBLE_EQ(percentile({}, 99), 0.0);
  EXPECT_DOUBLE_EQ(stddev({2, 4, 4, 4, 5, 5, 7, 9}), 2.0);  // population std
}

RequestResult ok(int64_t in, int64_t out, double ttft, double latency, std::vector<double> itl, std::string text) {
  RequestResult r;
  r.success = true;
  r.prompt_len = in;
  r.output_len = out;
  r.ttft = ttft;
  r.latency = latency;
  r.itl = std::move(itl);
  r.generated_text = std::move(text);
  return r;
}

TEST(Metrics, ComputedFromPerRequestRecords) {
  std::vector<RequestResult> outs = {ok(100, 5, 0.1, 0.5, {0.1, 0.1, 0.1, 0.1}, "a b c d e"),
                                     ok(200, 3, 0.2, 0.4, {0.1, 0.1}, "x y z"), RequestResult{}};
  outs[2].prompt_len = 999;  // failed: counts nowhere
  const auto m = compute_metrics(outs, 2.0, nullptr);
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.total_input, 300);
  EXPECT_EQ(m.total_output, 8);
  EXPECT_EQ(m.total_output_retokenized, 8);  // no tokenizer: the counts are reused
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(m.input_throughput, 150.0);
  EXPECT_DOUBLE_EQ(m.output_throughput, 4.0);
  EXPECT_DOUBLE_EQ(m.total_throughput, 154.0);
  EXPECT_DOUBLE_EQ(m.concurrency, (0.5 + 0.4) / 2.0);
  EXPECT_DOUBLE_EQ(m.ttft.mean, 150.0);
  EXPECT_DOUBLE_EQ(m.e2e.median, 450.0);
  // TPOT = (latency - ttft) / (output - 1): 0.4 / 4 = 100 ms and 0.2 / 2 = 100 ms.
  EXPECT_NEAR(m.tpot.mean, 100.0, 1e-9);
  EXPECT_NEAR(m.itl.max, 100.0, 1e-9);
  EXPECT_NEAR(m.itl.p99, 100.0, 1e-9);
}

TEST(Metrics, PythonFloatSpelling) {
  EXPECT_EQ(python_float(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(python_float(4), "4.0");
  EXPECT_EQ(python_float(2.5), "2.5");
  EXPECT_EQ(python_float(0.1), "0.1");
}

TEST(Metrics, ResultsBlockHasSglangLabelsOrderAndLayout) {
  BenchmarkMetrics m;
  m.completed = 10;
  m.duration = 1.234;
  ReportHeader h{"sglang", std::numeric_limits<double>::infinity(), std::nullopt, std::nullopt};
  const std::string text = format_results(m, h);
  std::istringstream in(text);
  std::string line;
  std::vector<std::string> lines;
  while (std::getline(in, line)) lines.push_back(line);
  ASSERT_GE(lines.size(), 3u);
  EXPECT_EQ(lines[0], "");
  EXPECT_EQ(lines[1], "============ Serving Benchmark Result ============");
  EXPECT_EQ(lines.back(), std::string(50, '='));
  std::vector<std::string> labels, separators;
  for (size_t i = 2; i + 1 < lines.size(); ++i) {
    if (lines[i][0] == '-') {
      separators.push_back(lines[i]);
      continue;
    }
    // "{:<40} {:<10}": the label is padded to 40 columns, then one space, then the value.
    ASSERT_GE(lines[i].size(), 41u) << lines[i];
    EXPECT_EQ(lines[i][40], ' ');
    std::string label = lines[i].substr(0, 40);
    label.erase(label.find_last_not_of(' ') + 1);
    labels.push_back(label);
  }
  EXPECT_EQ(labels, result_labels(false));
  EXPECT_EQ(separators, (std::vector<std::string>{"----------------End-to-End Latency----------------",
                                                  "---------------Time to First Token----------------",
                                                  "-----Time per Output Token (excl. 1st token)------",
                                                  "---------------Inter-Token Latency----------------"}));
  EXPECT_NE(text.find("Traffic request rate:                    inf"), std::string::npos);
  EXPECT_NE(text.find("Max request concurrency:                 not set"), std::string::npos);
  EXPECT_NE(text.find("Benchmark duration (s):                  1.23"), std::string::npos);
  h.accept_length = 1.5;
  h.max_concurrency = 8;
  const std::string with = format_results(m, h);
  EXPECT_NE(with.find("Accept length:                           1.50"), std::string::npos);
  EXPECT_NE(with.find("Max request concurrency:                 8"), std::string::npos);
}

TEST(Metrics, JsonlRecordHasSglangFields) {
  BenchmarkMetrics m;
  ReportHeader h{"sglang-oai", 4.0, 16, std::nullopt};
  RunInfo info{"t1", "random", std::nullopt, 1024, 16, 0.5, {{"x", 1}}};
  auto j = results_json(m, h, info, nullptr);
  for (const char* k :
       {"tag", "backend", "dataset_name", "request_rate", "max_concurrency", "sharegpt_output_len", "random_input_len",
        "random_output_len", "random_range_ratio", "server_info", "duration", "completed", "total_input_tokens",
        "total_input_text_tokens", "total_input_vision_tokens", "total_output_tokens", "total_output_tokens_retokenized",
        "request_throughput", "input_throughput", "output_throughput", "total_throughput", "mean_e2e_latency_ms",
        "median_e2e_latency_ms", "std_e2e_latency_ms", "p99_e2e_latency_ms", "mean_ttft_ms", "median_ttft_ms",
        "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "std_tpot_ms", "p99_tpot_ms", "mean_itl_ms",
        "median_itl_ms", "std_itl_ms", "p95_itl_ms", "p99_itl_ms", "concurrency", "accept_length"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j.size(), 40u);
  EXPECT_EQ(j["max_concurrency"], 16);
  EXPECT_EQ(j["request_rate"], 4.0);
  EXPECT_FALSE(j.contains("ttfts"));
  std::vector<RequestResult> d{ok(1, 2, 0.1, 0.2, {0.1}, "hi")};
  j = results_json(m, h, info, &d);
  for (const char* k : {"input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors"}) EXPECT_TRUE(j.contains(k));
  EXPECT_EQ(j["generated_texts"][0], "hi");
}

}  // namespace
}  // namespace pdserve::bench
