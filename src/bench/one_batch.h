// `pdserve bench-one-batch`: one large batched /generate against a running server, compatible
// with sglang.bench_one_batch_server used with --base-url (sglang-spec §6.2): the same flags, the
// same printed lines and JSONL record.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace pdserve::bench {

std::function<int()> add_bench_one_batch_command(CLI::App& root);

// The figures of one case, from its timings (seconds): SGLang's formulas.
struct OneBatchResult {
  int64_t batch_size = 0, input_len = 0, output_len = 0;
  double latency = 0, ttft = 0, last_gen_throughput = 0;
  double input_throughput() const { return ttft > 0 ? batch_size * input_len / ttft : 0; }
  double output_throughput() const {
    return latency > ttft ? batch_size * output_len / (latency - ttft) : 0;
  }
  double overall_throughput() const { return latency > 0 ? batch_size * (input_len + output_len) / latency : 0; }
};
std::string format_one_batch(const OneBatchResult& r);
nlohmann::json one_batch_json(const OneBatchResult& r, const std::string& run_name);

}  // namespace pdserve::bench
