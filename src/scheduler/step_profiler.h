// The scheduler's profiler: SGLang's /start_profile and /stop_profile semantics over per-step
// spans, written as one gzip Chrome trace per rank (opens in Perfetto, read by `pdserve analyze`).
//
// Why our own and not a library: what SGLang users look at in a torch trace are the scheduler's
// steps (run_batch, forward) and their batch sizes; we record exactly those as Chrome "X" events
// with the batch in `args`, which needs nothing more than JSON and zlib.
//
// Semantics (sglang-spec §9): num_steps N without start_step starts now and stops at the top of
// the batch whose forward count reaches start + N, so N - 1 batches are captured (SGLang's
// behaviour, visible in its logs as N - 1 "Decode batch" lines). start_step S defers the start to
// forward count S. Without num_steps it runs until stop(). profile_by_stage keeps separate EXTEND
// and DECODE traces of num_steps batches of that kind each.
//
// Inside each forward span the trace has the model's layer and op spans (base/trace_spans.h:
// `layers.N` with `self_attn`, `moe`, `moe_gate`, ... inside), recorded only while a capture is on.
// On a GPU runner with "GPU" in activities, a stage also records the kernels CUPTI reports
// (ops/cuda/cupti_tracer.h) during its batches, as a separate track per stream.
//
// Thread model: every method is called on the scheduler's loop thread (control commands are
// answered there), so there is no locking.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "base/trace_spans.h"
#include "ops/cuda/cupti_tracer.h"

namespace pdserve::scheduler {

// Where a trace file belongs, for its name: {id}-TP-{tp}[-DP-{dp}][-EP-{ep}].trace.json.gz.
struct TraceRank {
  int tp_rank = 0;
  std::optional<int> dp_rank;  // set when dp_size > 1
  int ep_rank = 0, ep_size = 1;
};

// The /start_profile body after validation (profile_id is made by the server, once for all ranks).
struct ProfileRequest {
  std::string profile_id;
  std::string output_dir;
  std::optional<int64_t> start_step, num_steps;
  std::vector<std::string> activities{"CPU", "GPU"};
  bool profile_by_stage = false;
  bool with_stack = true, record_shapes = true;
  std::string profile_prefix;  // prepended to the file name, as SGLang's profile_prefix
};

// Validates a /start_profile JSON body (missing fields take SGLang's defaults); `default_dir` is
// SGLANG_TORCH_PROFILER_DIR or /tmp. The caller sets profile_id.
Result<ProfileRequest> parse_profile_request(const nlohmann::json& body, const std::string& default_dir);
// The profiler output folder from the environment: SGLANG_TORCH_PROFILER_DIR, PDSERVE_TORCH_PROFILER_DIR, /tmp.
std::string default_profiler_dir();
// The trace file name for a rank (stage "" or "EXTEND"/"DECODE").
std::string trace_file_name(const ProfileRequest& req, const TraceRank& rank, const std::string& stage = "");

// Compresses `text` with gzip into `path` atomically (temporary file + rename).
Status write_gzip_file(const std::string& path, const std::string& text);

class StepProfiler {
 public:
  explicit StepProfiler(TraceRank rank, std::string process_name = "pdserve scheduler");

  // The control commands: "start_profile" with a ProfileRequest as JSON (see to_json below), or
  // "stop_profile". Reply {"success": bool, "message": str}.
  nlohmann::json control(const std::string& command, const nlohmann::json& args);

  // Top of every batch (before slow_down's sleep, as SGLang's run_batch): counts the batch and
  // starts or stops capturing. Then forward spans, then batch_end.
  void batch_begin();
  void forward_begin();
  // `kind` "prefill" | "decode"; batch_size sequences; tokens computed in this forward.
  void forward_end(const char* kind, int64_t batch_size, int64_t tokens);
  // `running` = requests running after the batch (the log's #running-req).
  void batch_end(bool worked, int64_t running, int64_t queued);

  bool active() const { return !stages_.empty(); }
  // Whether captures record GPU kernels (CUPTI): set by the scheduler when its runner is on a GPU.
  void set_device_tracing(bool on) { device_tracing_ = on; }
  int64_t forward_ct() const { return forward_ct_; }

 private:
  struct Stage {
    std::string name;  // "" or "EXTEND" / "DECODE"
    std::optional<int64_t> start_ct, target_ct;  // start_ct set: deferred start; target: stop at
    int64_t captured = 0;    // batches of this stage's kind captured (by-stage counting)
    bool recording = false;
    nlohmann::json events = nlohmann::json::array();
    std::vector<std::pair<double, double>> batch_windows_us;  // recorded batches, trace clock
    std::unique_ptr<ops::cuda::KernelTracer> kernels;         // CUPTI session while recording on a GPU
  };

  Status start(ProfileRequest req);
  std::vector<std::string> stop_all();
  std::string finish(Stage& s);
  double now_us() const;
  bool stage_matches(const Stage& s, const char* kind) const;
  void begin_recording(Stage& s);
  bool any_recording() const;
  double trace_us(int64_t steady_ns) const;
  // The layer/op spans of the batch just ended, as Chrome "X" events.
  void append_span_events(nlohmann::json& events, int pid) const;
  // The stage's kernels that ran inside its recorded batches, as Chrome "X" events plus track names.
  void append_kernel_events(Stage& s, nlohmann::json& events, int pid) const;

  TraceRank rank_;
  std::string process_name_;
  ProfileRequest req_;
  std::vector<Stage> stages_;
  int64_t forward_ct_ = 0;
  double epoch_us_;      // wall clock at construction, µs since the Unix epoch
  double steady0_us_;    // steady clock at construction
  double batch_t0_ = 0, forward_t0_ = 0;
  const char* batch_kind_ = nullptr;
  int64_t batch_size_ = 0, batch_tokens_ = 0;
  double forward_dur_ = 0;
  bool device_tracing_ = false;
  trace::SpanBuffer spans_;  // this batch's layer/op spans (installed on the thread during forwards)
};

nlohmann::json to_json(const ProfileRequest& r);
ProfileRequest profile_request_from_json(const nlohmann::json& j);

}  // namespace pdserve::scheduler
