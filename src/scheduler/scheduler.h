// One scheduler per DP rank: continuous batching over a model runner and a paged KV cache, as
// SGLang's Scheduler does (waiting queue → prefill/extend batches with chunked prefill → decode
// batches; admission by projected KV use; retraction when KV runs out; stop conditions; control
// commands; SGLang's log lines).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "cache/kv_cache_manager.h"
#include "scheduler/disagg_hooks.h"
#include "scheduler/model_runner.h"
#include "scheduler/request.h"
#include "scheduler/step_profiler.h"
#include "scheduler/step_sync.h"

namespace pdserve::scheduler {

// Decodes ids to text for stop-string checks; supplied by the server (the tokenizer sits above the
// scheduler in the module order).
class TextDecoder {
 public:
  virtual ~TextDecoder() = default;
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
};

struct SchedulerConfig {
  int dp_rank = 0;
  int dp_size = 1;
  // For the log prefix only: SGLang names each rank's TP and EP position ("DP3 TP3 EP3").
  int tp_rank = 0;
  int tp_size = 1;
  int ep_rank = 0;
  int ep_size = 1;
  int64_t max_running_requests = 256;
  int64_t chunked_prefill_size = 8192;   // tokens per prefill chunk; <= 0 disables chunking
  int64_t max_prefill_tokens = 16384;    // new tokens in one prefill batch
  bool disable_radix_cache = false;
  std::string schedule_policy = "fcfs";  // fcfs | lpm (longest prefix match first)
  int64_t decode_log_interval = 40;
  int64_t context_length = 4096;
  int64_t eos_token_id = 1;
  uint64_t random_seed = 0;
  // Fraction of a running request's remaining max_new_tokens assumed still to come when admitting
  // new requests (SGLang's new_token_ratio: starts high, decays per decode step, jumps on retract).
  double init_new_token_ratio = 0.7;
  double min_new_token_ratio = 0.098;
  double new_token_ratio_decay = 0.001;
  bool log_stats = true;
  // PD disaggregation (scheduler_disagg.cpp). Decode admits a request only if its prompt plus
  // num_reserved_decode_tokens fits beside the same reserve for every request it already holds.
  DisaggMode disagg_mode = DisaggMode::kNull;
  int64_t num_reserved_decode_tokens = 512;
  int64_t disagg_polling_interval = 1;  // poll the PD queues every N loop iterations
};

using OutputSink = std::function<void(RequestOutput&&)>;

struct SchedulerStats {
  int64_t num_running = 0, num_waiting = 0, num_tokens = 0, num_retracted_total = 0;
  int64_t max_total_num_tokens = 0;
  double token_usage = 0, last_gen_throughput = 0, cache_hit_rate = 0, new_token_ratio = 0;
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0, cached_tokens_total = 0;
  int64_t num_requests_total = 0, num_aborted_total = 0, forward_ct = 0;
  // PD queues: prefill bootstrap/inflight, decode prealloc/transfer/retracted; failure counters.
  int64_t num_prealloc = 0, num_inflight = 0, num_transfer = 0, num_retracted_waiting = 0;
  int64_t num_bootstrap_failed_total = 0, num_transfer_failed_total = 0;
  cache::KvAccounting kv;
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig cfg, std::shared_ptr<ModelRunner> runner, std::shared_ptr<const TextDecoder> decoder,
            OutputSink sink);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Runs the event loop on its own thread until stop(). Without start(), tests drive step().
  void start();
  // Stops the loop; requests still queued or running are finished with an abort (`reason`).
  void stop(const std::string& reason = "server shutting down");

  // Thread-safe entry points (queued to the loop).
  void submit(GenerateInput in);
  // Aborts requests whose rid starts with `rid_prefix` (SGLang's prefix match), or all.
  void abort(const std::string& rid_prefix, bool abort_all, const std::string& message = "aborted by client");
  // Control commands, answered by the loop: flush_cache, slow_down, get_load, internal_state,
  // hold_decode {"timeout_s": S} / release_decode {"reason": str} (the hold fill, server/decode_hold.h).
  std::future<nlohmann::json> control(const std::string& command, nlohmann::json args = {});

  // PD mode: the endpoints that create per-request senders (prefill) or receivers (decode). Set
  // before start(); without it a PD request fails with a clear error.
  void set_disagg_endpoints(std::shared_ptr<DisaggEndpoints> e) { disagg_ = std::move(e); }
  // Expert parallelism: run in lockstep with the other DP ranks of the group (step_sync.h). Call
  // before start().
  void set_step_sync(std::shared_ptr<StepSync> sync);

  // One iteration: take inbox, maybe sleep (slow_down), run one prefill or decode batch. Returns
  // true if it did any work. Only for tests, when the thread is not started.
  bool step();

  SchedulerStats stats() const;
  // Seconds the current batch (prefill or decode forward and its bookkeeping) has been running,
  // or 0 when no batch is running. Read by the server's watchdog from another thread.
  double current_batch_seconds() const {
    const int64_t t = batch_started_ns_.load();
    return t == 0 ? 0.0 : std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch() -
                                                         std::chrono::steady_clock::duration(t)).count();
  }
  const SchedulerConfig& config() const { return cfg_; }
  int64_t max_total_num_tokens() const { return cache_->accounting().total * runner_->page_size(); }
  // SGLang's max_req_input_len as far as the cache bounds it: (max_total_num_tokens - 1) - 5; a
  // prompt of this many tokens or more is refused (400), since it could never be admitted.
  int64_t max_req_input_len() const { return max_total_num_tokens() - 6; }
  // Verifies page ownership (free + in requests + cached == total) page by page. For tests.
  Status audit_kv() const { return cache_->audit(); }

 private:
  struct Abort {
    std::string rid_prefix;
    bool all;
    std::string message;
  };
  struct Control {
    std::string command;
    nlohmann::json args;
    std::promise<nlohmann::json> reply;
  };
  using Message = std::variant<GenerateInput, Abort, Control>;

  void loop();
  bool step_local();   // one iteration of a rank on its own: the old step()
  void drain_inbox();  // takes every queued message, without waiting (loop() does the waiting)
  void handle(GenerateInput&& in);
  void handle(Abort&& a);
  void handle(Control&& c);
  bool run_prefill();
  bool run_decode();
  void retract_for_decode();
  void process_logits(const std::vector<Request*>& reqs, const Tensor& logits, const std::vector<int64_t>& rows);
  // The same for tokens already sampled (on the device): reqs[i] gets tokens[i].
  void process_tokens(const std::vector<Request*>& reqs, const std::vector<int32_t>& tokens);
  // Appends one sampled token, runs the stop checks, streams it or queues the request in `finished`.
  void accept_token(Request* r, int32_t tok, std::vector<Request*>& finished);
  bool check_finished(Request& r);
  void finish(Request* r, FinishReason reason, bool cache_kv);
  void emit(Request& r, bool finished, std::optional<FinishReason> reason);
  void log_prefill(int64_t new_seqs, int64_t new_tokens, int64_t cached_tokens);
  void log_decode();
  void update_stats();
  int64_t reserved_future_tokens() const;
  // PD disaggregation (scheduler_disagg.cpp).
  bool disagg_add(std::unique_ptr<Request>& r);
  bool disagg_busy() const;
  void process_disagg_queues();
  void process_prefill_bootstrap();
  void process_prefill_inflight();
  void process_decode_prealloc();
  void process_decode_transfer();
  void prefill_send(Request& r, bool last);
  bool prefill_hand_off(Request* r);
  int64_t disagg_abort(const std::function<bool(const Request&)>& match, const std::string& message);
  void disagg_stop(const std::string& reason);
  void disagg_fail(std::unique_ptr<Request> r, const std::string& message, bool transfer_phase);
  std::string disagg_prefill_log() const;
  std::string disagg_decode_log() const;
  // Expert-parallel lockstep (scheduler_group.cpp).
  bool wait_for_group_work();  // false: woke without work (timeout or stop)
  bool group_step();           // step() under a StepSync
  Status join_group_pass(int64_t tokens, bool extend);  // before a real forward
  bool idle_group_pass();      // when this rank had no forward in the iteration; true if it ran one
  void group_failed(const std::string& reason);
  void fail_everything(const std::string& reason, int status);

  SchedulerConfig cfg_;
  std::shared_ptr<ModelRunner> runner_;
  std::shared_ptr<const TextDecoder> decoder_;
  OutputSink sink_;
  std::unique_ptr<cache::KvCacheManager> cache_;

  mutable std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::vector<Message> inbox_;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> batch_started_ns_{0};
  std::thread thread_;
  std::string stop_reason_;

  // Loop-thread state.
  std::list<std::unique_ptr<Request>> waiting_;
  std::vector<std::unique_ptr<Request>> running_;
  std::unique_ptr<Request> chunked_owner_;  // a request mid-way through chunked prefill
  std::optional<double> forward_sleep_s_;
  // hold_decode: until released or this deadline no decode step runs (prefill and PD transfers go
  // on), so arriving requests pile up in the running batch without any finishing.
  std::optional<std::chrono::steady_clock::time_point> decode_hold_until_;
  std::chrono::steady_clock::time_point decode_hold_since_;
  // Whether decode is held now; ends the hold (logged) once its deadline passed.
  bool decode_held();
  void end_decode_hold(const std::string& reason);
  double new_token_ratio_;
  int64_t decode_steps_since_log_ = 0;
  int64_t generated_since_log_ = 0;
  std::chrono::steady_clock::time_point last_log_time_;
  std::vector<float> sample_scratch_;
  std::shared_ptr<DisaggEndpoints> disagg_;
  std::list<std::unique_ptr<Request>> bootstrap_queue_;  // prefill: waiting for decode's pages
  std::list<std::unique_ptr<Request>> inflight_queue_;   // prefill: KV being sent
  std::list<std::unique_ptr<Request>> prealloc_queue_;   // decode: handshake / waiting for KV memory
  std::list<std::unique_ptr<Request>> transfer_queue_;   // decode: KV being received
  int64_t disagg_loop_ct_ = 0;
  std::shared_ptr<StepSync> sync_;  // null: this rank runs on its own
  uint64_t agreements_ = 0;         // agreements made so far (the same count on every rank)
  bool group_asleep_ = true;        // the group agreed nobody has work; wait for a message or a ring
  bool agreed_this_step_ = false;
  std::optional<std::string> group_error_;  // the group broke: every request fails with this

  mutable std::mutex stats_mu_;
  SchedulerStats stats_;
  // /start_profile, /stop_profile (step_profiler.h). With DP attention every DP rank is its own TP rank.
  StepProfiler profiler_{TraceRank{.tp_rank = cfg_.dp_rank,
                                   .dp_rank = cfg_.dp_size > 1 ? std::optional<int>(cfg_.dp_rank) : std::nullopt}};
};

}  // namespace pdserve::scheduler
