// `pdserve bench` and `pdserve bench-one-batch` against a real `pdserve serve` (tiny model, dummy
// weights): the results block parses with SGLang's labels, and the JSONL record agrees with the
// per-request details (counts, token totals, percentiles recomputed from the arrays).
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include <gtest/gtest.h>

#include "bench/arrival.h"
#include "bench/metrics.h"
#include "server/server_process.h"

namespace pdserve::bench {
namespace {

namespace fs = std::filesystem;

struct Cmd {
  int code = -1;
  std::string out;
};

Cmd run(const std::string& args) {
  Cmd c;
  const std::string cmd = std::string(PDSERVE_BINARY) + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return c;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) c.out.append(buf, n);
  const int st = ::pclose(p);
  c.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return c;
}

// label -> value text of the results block.
std::map<std::string, std::string> parse_block(const std::string& out, std::vector<std::string>* order) {
  std::map<std::string, std::string> kv;
  std::istringstream in(out.substr(out.find("Serving Benchmark Result")));
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    if (line.size() < 41 || line[0] == '-' || line[0] == '=') continue;
    std::string label = line.substr(0, 40), value = line.substr(41);
    label.erase(label.find_last_not_of(' ') + 1);
    value.erase(value.find_last_not_of(' ') + 1);
    kv[label] = value;
    if (order) order->push_back(label);
  }
  return kv;
}

class BenchE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new test::ServerProcess({"--max-running-requests", "16"}, "bench_e2e");
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->terminate(), 0);
    delete server_;
  }
  static test::ServerProcess* server_;
  fs::path tmp(const std::string& name) {
    return fs::temp_directory_path() / ("pdserve_bench_e2e_" + std::to_string(::getpid()) + "_" + name);
  }
};
test::ServerProcess* BenchE2E::server_ = nullptr;

TEST_F(BenchE2E, ResultsBlockAndJsonlAgreeWithPerRequestDetails) {
  const auto jsonl = tmp("a.jsonl"), svg = tmp("a.svg");
  fs::remove(jsonl);
  const auto c = run("bench --backend sglang --base-url " + server_->url("") +
                     " --dataset-name random --num-prompts 12 --random-input-len 24 --random-output-len 6"
                     " --random-range-ratio 1 --request-rate 40 --max-concurrency 6 --output-details --tag e2e"
                     " --disable-tqdm --output-file " + jsonl.string() + " --plot " + svg.string());
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("#Input tokens: 288\n#Output tokens: 72\n"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("Starting warmup with 1 sequences..."), std::string::npos);
  std::vector<std::string> order;
  auto kv = parse_block(c.out, &order);
  EXPECT_EQ(order, result_labels(false));
  EXPECT_EQ(kv["Backend:"], "sglang");
  EXPECT_EQ(kv["Traffic request rate:"], "40.0");
  EXPECT_EQ(kv["Max request concurrency:"], "6");
  EXPECT_EQ(kv["Successful requests:"], "12");
  EXPECT_EQ(kv["Total input tokens:"], "288");
  EXPECT_EQ(kv["Total generated tokens:"], "72");

  std::ifstream f(jsonl);
  std::string line;
  ASSERT_TRUE(std::getline(f, line));
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["tag"], "e2e");
  EXPECT_EQ(j["completed"], 12);
  int64_t in = 0, out = 0;
  for (auto& x : j["input_lens"]) in += x.get<int64_t>();
  for (auto& x : j["output_lens"]) out += x.get<int64_t>();
  EXPECT_EQ(j["total_input_tokens"], in);
  EXPECT_EQ(j["total_output_tokens"], out);
  EXPECT_EQ(out, 72);
  std::vector<double> ttfts = j["ttfts"].get<std::vector<double>>(), itls;
  for (auto& a : j["itls"])
    for (auto& x : a) itls.push_back(x.get<double>());
  EXPECT_EQ(itls.size(), 12u * 5);  // 5 gaps after the first of 6 tokens
  EXPECT_NEAR(j["mean_ttft_ms"].get<double>(), mean(ttfts) * 1000, 1e-6);
  EXPECT_NEAR(j["p99_ttft_ms"].get<double>(), percentile(ttfts, 99) * 1000, 1e-6);
  EXPECT_NEAR(j["p95_itl_ms"].get<double>(), percentile(itls, 95) * 1000, 1e-6);
  EXPECT_NEAR(j["median_itl_ms"].get<double>(), percentile(itls, 50) * 1000, 1e-6);
  for (auto& e : j["errors"]) EXPECT_EQ(e, "");
  // The run lasts at least until its last planned arrival (12 Poisson arrivals at 40/s, the
  // bench's default seed 1); how much longer depends on the server's speed, so no more is asserted.
  EXPECT_GE(j["duration"].get<double>(), arrival_times(12, 40, 1.0, 1).back());
  EXPECT_TRUE(j["server_info"].is_object());
  EXPECT_EQ(kv["Mean TTFT (ms):"], fmt::format("{:.2f}", j["mean_ttft_ms"].get<double>()));
  EXPECT_NE(test::read_file(svg).find("<svg"), std::string::npos);
  fs::remove(jsonl);
  fs::remove(svg);
}

TEST_F(BenchE2E, OpenAiBackendsAndProfile) {
  const auto jsonl = tmp("b.jsonl"), prof = tmp("prof");
  fs::remove_all(prof);
  for (const char* backend : {"sglang-oai", "sglang-oai-chat"}) {
    const auto c = run(std::string("bench --backend ") + backend + " --base-url " + server_->url("") +
                       " --dataset-name random-ids --num-prompts 4 --random-input-len 16 --random-output-len 5"
                       " --random-range-ratio 1 --disable-tqdm --warmup-requests 0 --output-file " + jsonl.string());
    ASSERT_EQ(c.code, 0) << c.out;
    auto kv = parse_block(c.out, nullptr);
    EXPECT_EQ(kv["Backend:"], backend);
    EXPECT_EQ(kv["Successful requests:"], "4");
    EXPECT_EQ(kv["Total generated tokens:"], "20");
  }
  // --profile wraps the run in /start_profile and /stop_profile (the server writes the trace).
  setenv("SGLANG_TORCH_PROFILER_DIR", prof.c_str(), 1);
  const auto c = run("bench --base-url " + server_->url("") + " --dataset-name random --num-prompts 2"
                     " --random-input-len 8 --random-output-len 3 --disable-tqdm --profile --flush-cache --output-file " +
                     jsonl.string());
  EXPECT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("Starting profiler..."), std::string::npos);
  EXPECT_NE(c.out.find("Stopping profiler..."), std::string::npos);
  fs::remove(jsonl);
}

TEST_F(BenchE2E, BenchOneBatchPrintsSglangLines) {
  const auto jsonl = tmp("one.jsonl");
  fs::remove(jsonl);
  const auto c = run("bench-one-batch --base-url " + server_->url("") +
                     " --batch-size 3 --input-len 20 --output-len 4 --skip-warmup --run-name t --result-filename " +
                     jsonl.string());
  ASSERT_EQ(c.code, 0) << c.out;
  for (const char* l : {"batch size: 3\n", "input_len: 20\n", "output_len: 4\n", "latency: ", " s\nttft: ",
                        "last generation throughput: ", "input throughput: ", "output throughput: "})
    EXPECT_NE(c.out.find(l), std::string::npos) << l << "\n" << c.out;
  std::ifstream f(jsonl);
  std::string line;
  ASSERT_TRUE(std::getline(f, line));
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["run_name"], "t");
  EXPECT_EQ(j["batch_size"], 3);
  const double latency = j["latency"], ttft = j["ttft"];
  EXPECT_GT(ttft, 0);
  EXPECT_GT(latency, ttft);
  // SGLang's formulas: output = B * out / (latency - ttft); overall = B * (in + out) / latency.
  EXPECT_NEAR(j["output_throughput"].get<double>(), 3 * 4 / (latency - ttft), 1e-9);
  EXPECT_NEAR(j["overall_throughput"].get<double>(), 3 * 24 / latency, 1e-9);
  fs::remove(jsonl);
}

TEST_F(BenchE2E, BadInputGivesClearErrors) {
  auto c = run("bench --base-url " + server_->url("") + " --no-such-flag");
  EXPECT_EQ(c.code, 2);
  EXPECT_NE(c.out.find("--no-such-flag"), std::string::npos) << c.out;
  c = run("bench --base-url " + server_->url("") + " --request-rate fast --dataset-name random");
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.out.find("--request-rate must be a positive number or inf"), std::string::npos) << c.out;
  c = run("bench --base-url " + server_->url("") + " --num-prompts 2");  // sharegpt without a file
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.out.find("--dataset-path"), std::string::npos) << c.out;
  c = run("bench --base-url http://127.0.0.1:1 --tokenizer " + std::string(PDSERVE_SOURCE_DIR) +
          "/models/tiny-deepseek-v3 --dataset-name random --num-prompts 2 --random-input-len 4 --random-output-len 2"
          " --disable-tqdm --output-file /dev/null");
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.out.find("Warmup failed"), std::string::npos) << c.out;
  c = run("bench-one-batch --base-url " + server_->url("") + " --batch-size 0 --skip-warmup");
  EXPECT_EQ(c.code, 2);
}

}  // namespace
}  // namespace pdserve::bench
