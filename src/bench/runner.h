// Sends the benchmark's requests: on one thread, each request a coroutine on one io_context
// (http::AsyncClient), released at its arrival time and, with --max-concurrency, gated by a
// semaphore, as sglang.bench_serving's asyncio loop does. One thread is plenty: the client's work
// per token is one small JSON parse (docs/perf/bench.md has the measured ceiling).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "bench/backend.h"
#include "bench/dataset.h"

namespace pdserve::bench {

struct RunOptions {
  std::string base_url;  // "http://host:port", no trailing slash
  RequestOptions request;
  double request_rate = 0;  // <= 0 or inf: all at once
  double burstiness = 1.0;
  uint64_t seed = 1;
  std::optional<int64_t> max_concurrency;
  bool progress = false;
  std::chrono::milliseconds timeout{0};   // per request; 0 = none
  std::optional<int64_t> output_len;      // overrides every request's output length (warmup)
};

struct RunResult {
  std::vector<RequestResult> outputs;  // in request order
  double duration = 0;                 // first send to last answer, seconds
};

RunResult run_requests(const std::vector<DatasetRequest>& requests, const RunOptions& o);

}  // namespace pdserve::bench
