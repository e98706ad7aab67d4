// What the server hands a scheduler (GenerateInput), what comes back (RequestOutput), and the
// scheduler's own per-request state (Request).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "scheduler/disagg_hooks.h"
#include "scheduler/sampling_params.h"

namespace pdserve::scheduler {

struct GenerateInput {
  std::string rid;
  std::vector<int32_t> input_ids;
  SamplingParams sampling;
  bool stream = false;             // send an output after every step, not only at the end
  bool return_logprob = false;
  int64_t logprob_start_len = -1;  // first prompt position with input logprobs; -1 = none
  int64_t top_logprobs_num = 0;
  std::optional<BootstrapInfo> bootstrap;  // PD mode: where the KV comes from / goes to
};

struct FinishReason {
  enum class Type { kLength, kStop, kAbort };
  Type type = Type::kLength;
  int64_t length = 0;                   // kLength: tokens generated
  std::optional<int32_t> matched_id;    // kStop: EOS or a stop_token_id
  std::optional<std::string> matched_str;  // kStop: a stop string
  std::string message;                  // kAbort
  int status_code = 0;                  // kAbort: HTTP status to report (e.g. 400, 503)
};

struct TokenLogprob {
  float logprob = 0;
  int32_t token_id = 0;
  std::vector<std::pair<float, int32_t>> top;  // top_logprobs_num best (logprob, id)
};

// An abort with the message and HTTP status the client gets (0: answered 200 with the reason).
inline FinishReason abort_reason(const std::string& message, int status) {
  FinishReason f;
  f.type = FinishReason::Type::kAbort;
  f.message = message;
  f.status_code = status;
  return f;
}

// Sent to the server after a step that produced tokens for a streaming request, and once when a
// request finishes. Ids and logprobs are deltas since the previous output of the same request.
struct RequestOutput {
  std::string rid;
  std::vector<int32_t> new_ids;
  std::vector<TokenLogprob> output_logprobs;
  std::vector<TokenLogprob> input_logprobs;  // once, with the first output
  bool finished = false;
  std::optional<FinishReason> finish_reason;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
  int64_t total_retractions = 0;
  int dp_rank = 0;
};

// Scheduler-side state of one request.
struct Request {
  GenerateInput in;
  std::vector<int32_t> output_ids;
  int64_t slot = -1;            // KvCacheManager slot while admitted
  int64_t computed_tokens = 0;  // tokens whose KV is in the cache (prefix hits + computed)
  int64_t cached_tokens = 0;    // prompt tokens served from the prefix cache (first admission)
  int64_t sent_ids = 0;         // output ids already sent to the server
  int64_t retractions = 0;
  bool input_logprobs_sent = false;
  std::vector<TokenLogprob> pending_output_logprobs;
  std::vector<TokenLogprob> pending_input_logprobs;
  std::optional<FinishReason> pending_finish;  // set by the stop check, consumed by finish()
  std::mt19937_64 rng;  // host sampling
  uint64_t seed = 0;    // rng's seed; also the key of device-side draws (with the output position)
  std::chrono::steady_clock::time_point arrival;
  // PD disaggregation (scheduler_disagg.cpp): the transfer endpoint and how many prompt pages have
  // been handed to it so far (chunked prefill sends full pages per chunk).
  std::unique_ptr<KvSender> sender;
  std::unique_ptr<KvReceiver> receiver;
  int64_t sent_pages = 0;

  // Tokens whose KV must exist before the next token is sampled: prompt + outputs so far.
  int64_t total_tokens() const { return static_cast<int64_t>(in.input_ids.size() + output_ids.size()); }
  int32_t token_at(int64_t i) const {
    const int64_t n = static_cast<int64_t>(in.input_ids.size());
    return i < n ? in.input_ids[static_cast<size_t>(i)] : output_ids[static_cast<size_t>(i - n)];
  }
};

}  // namespace pdserve::scheduler
