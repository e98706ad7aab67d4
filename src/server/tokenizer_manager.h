// The server side of a request's life, as SGLang's TokenizerManager + DetokenizerManager: turns
// parsed requests into scheduler inputs (tokenizing text, picking a DP rank), then turns scheduler
// outputs back into JSON or SSE (incremental detokenization, stop-string trimming, logprobs) and
// aborts requests whose client went away. Thread-safe: routes call it from I/O threads, schedulers
// deliver outputs from their own threads.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "scheduler/scheduler.h"
#include "server/rank_handle.h"
#include "server/request_parsing.h"
#include "server/response_channel.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::server {

enum class ApiFormat { kNative, kCompletion, kChat };

// Counters for /metrics (monotonic) and histogram observations.
struct RequestMetricsSink {
  virtual ~RequestMetricsSink() = default;
  virtual void observe_finished(double e2e_s, double ttft_s, int64_t prompt_tokens, int64_t completion_tokens,
                                int64_t cached_tokens, bool aborted) = 0;
  virtual void observe_token_gap(double seconds) = 0;
};

class TokenizerManager {
 public:
  TokenizerManager(std::shared_ptr<const tokenizer::Tokenizer> tok, std::vector<RankHandle*> schedulers,
                   std::string model_name, int64_t context_length);

  // Wires the scheduler's output sink here (construct schedulers with this as their sink).
  void on_output(scheduler::RequestOutput&& out);
  void set_metrics(RequestMetricsSink* m) { metrics_ = m; }
  // PD mode: requests must carry bootstrap_room (and host); a missing port means `bootstrap_port`.
  void set_disagg(scheduler::DisaggMode mode, int bootstrap_port) {
    disagg_mode_ = mode;
    bootstrap_port_ = bootstrap_port;
  }
  // --load-balance-method: whether a request with a bootstrap room goes to DP rank room % dp size
  // (the default, PD pairing) or round robin like the rest (round_robin; never on a prefill).
  void set_dp_follows_bootstrap_room(bool follow) { follow_room_ = follow; }

  // Submits the items of one HTTP request and answers through `ch`: a JSON object (or a list for
  // batches), or an SSE stream. Text prompts are tokenized here (errors answer 400 before anything
  // is scheduled). For OpenAI formats, `oa` carries the response options.
  void submit(std::vector<PromptItem> items, ApiFormat format, bool is_batch, bool stream,
              std::shared_ptr<ResponseChannel> ch, const OpenAIRequest* oa = nullptr,
              bool return_text_in_logprobs = false);

  // The client went away: abort every unfinished item of the request holding `ch`.
  void client_gone(const std::shared_ptr<ResponseChannel>& ch);
  // /abort_request: rid prefix (or all) on every scheduler.
  void abort(const std::string& rid, bool all);

  size_t in_flight() const;
  const std::string& model_name() const { return model_name_; }

 private:
  struct Item;
  struct Group;
  void handle_output(Group& g, size_t index, scheduler::RequestOutput&& out, std::vector<std::string>& events,
                     bool& group_done);
  void send_final(Group& g);
  std::string native_event(Group& g, size_t i, bool final_event);
  std::string openai_event(Group& g, size_t i, const std::string& delta, bool final_event);
  std::string usage_event(Group& g);
  nlohmann::json native_item_json(Group& g, size_t i);
  nlohmann::json usage_json(const Group& g) const;
  std::string new_rid();

  std::shared_ptr<const tokenizer::Tokenizer> tok_;
  std::vector<RankHandle*> schedulers_;  // every DP rank of the server, by DP rank
  std::string model_name_;
  int64_t context_length_;
  RequestMetricsSink* metrics_ = nullptr;
  scheduler::DisaggMode disagg_mode_ = scheduler::DisaggMode::kNull;
  int bootstrap_port_ = 8998;
  bool follow_room_ = true;
  std::atomic<uint64_t> next_rr_{0};
  std::atomic<uint64_t> rid_counter_{0};
  uint64_t rid_salt_;

  mutable std::mutex mu_;
  std::unordered_map<std::string, std::pair<std::shared_ptr<Group>, size_t>> by_rid_;
  std::unordered_map<const ResponseChannel*, std::shared_ptr<Group>> by_channel_;
};

}  // namespace pdserve::server
