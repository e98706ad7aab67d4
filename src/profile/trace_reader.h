// Reads Chrome-trace files (ours and the PyTorch profiler's, as SGLang writes them), gzip or
// plain, and finds the scheduler's steps in them.
//
// A step is found by its span name, the first kind present winning: pdserve's "run_batch"; the
// PyTorch profiler's Python-stack spans ending in ": run_batch" (SGLang's Scheduler.run_batch,
// recorded with with_stack); then forward spans ("forward_decode", "forward_extend", ": forward").
// Step time is the mean start-to-start period of consecutive steps on the busiest thread: the
// wall-clock cost of one step, scheduler overhead included, which is what tokens/s divides by.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace pdserve::profile {

// The whole file, decompressed when it is gzip (zlib reads plain files unchanged).
Result<std::string> read_gzip_file(const std::string& path);

struct TraceEvent {
  std::string name, cat, ph, pid, tid;  // pid/tid as text: traces use numbers or strings
  double ts = 0, dur = 0;              // microseconds
  nlohmann::json args;
};

struct Trace {
  std::string path;
  std::vector<TraceEvent> events;
};

Result<Trace> read_chrome_trace(const std::string& path);

// {profile_id}-TP-{tp}[-DP-{dp}][-PP-{pp}][-EP-{ep}][-EXTEND|-DECODE].trace.json[.gz]
struct TraceName {
  std::string profile_id;
  int tp = 0;
  std::optional<int> dp, ep;
  std::string stage;
};
std::optional<TraceName> parse_trace_name(const std::string& file_name);

struct StepTiming {
  std::string marker;               // the span name pattern that matched
  std::vector<double> starts_s;     // step start times, seconds after the first step
  std::vector<double> durations_s;  // step span durations
  std::vector<int64_t> batch_sizes; // args.batch_size when the trace has it (pdserve)
  std::vector<std::string> kinds;   // args.batch_kind per step ("prefill" | "decode") when present
  double period_s = 0;              // mean start-to-start; the duration when only one step
  double mean_duration_s = 0;
};
// Error when the trace has no recognisable step.
Result<StepTiming> step_timing(const Trace& t);
// The mean start-to-start gap over consecutive steps that are both of `kind`, so that a mixed
// server's prefill steps do not inflate its decode step time; the overall period when the trace
// has no kinds or no such pair.
double period_of_kind(const StepTiming& st, const std::string& kind);

}  // namespace pdserve::profile
