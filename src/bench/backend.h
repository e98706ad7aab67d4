// The benchmark's side of each server API: the request body per backend and the reading of its
// (streamed) answer into timings, as sglang.bench_serving's request functions do.
//
//   sglang           POST /generate, native SSE: cumulative `text`, meta_info.completion_tokens
//   sglang-oai       POST /v1/completions, choices[0].text deltas, usage at the end
//   sglang-oai-chat  POST /v1/chat/completions, choices[0].delta.content deltas, usage at the end
//
// Timings: TTFT is when the first chunk carrying output arrived; each later chunk's gap is split
// evenly over the tokens it brought (one ITL entry per token). The native backend counts tokens
// by meta_info.completion_tokens rather than by non-empty text as SGLang does, so a first token
// that decodes to nothing (a partial UTF-8 character, a special token) still counts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "bench/dataset.h"

namespace pdserve::bench {

enum class Backend { kSglang, kOai, kOaiChat };

Result<Backend> parse_backend(std::string_view name);  // also "sglang-native" = sglang
const char* backend_path(Backend b);

struct RequestOptions {
  Backend backend = Backend::kSglang;
  std::string model;  // OpenAI "model"
  bool stream = true;
  bool ignore_eos = true;
  bool return_logprob = false;
  nlohmann::json extra_body = nlohmann::json::object();  // merged into every body last
};

nlohmann::json request_body(const DatasetRequest& r, int64_t output_len, const RequestOptions& o);

// One request's outcome; times in seconds.
struct RequestResult {
  bool success = false;
  std::string error;
  std::string generated_text;
  int64_t prompt_len = 0, output_len = 0;
  double start = 0;    // send time, seconds after the benchmark start
  double ttft = 0, latency = 0;
  std::vector<double> itl;
  std::vector<std::pair<double, int64_t>> token_times;  // (seconds after start, new tokens) per chunk
};

// Reads one answer: feed SSE data payloads (or the whole body when not streaming) with the time
// since the request was sent, then finish().
class ResponseReader {
 public:
  ResponseReader(Backend backend, double start) : backend_(backend) { result_.start = start; }
  // Returns false after an error chunk (the caller may stop reading).
  bool on_data(std::string_view data, double since_send);
  // `latency` = time from send to the end of the answer; `status` its HTTP status; `body` the
  // error body for a non-2xx status.
  RequestResult finish(double latency, int status, std::string_view body);

 private:
  void add_tokens(int64_t n, double t);

  Backend backend_;
  RequestResult result_;
  int64_t tokens_ = 0;
  double last_t_ = 0;
  bool got_first_ = false, saw_usage_ = false;
};

}  // namespace pdserve::bench
