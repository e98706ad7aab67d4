// `pdserve analyze`: the README's hand calculation, done from the files (sglang-spec §1.2):
//
//   global batch      = sum over DP ranks of #running-req during the profiling window
//   step time         = mean start-to-start period of the scheduler steps in the trace(s)
//   tokens/s per GPU  = global batch / step time / GPUs          (decode: one token per request)
//   input tok/s / GPU = sum over ranks of #new-token per prefill batch / step time / GPUs
//
// A window is what a rank logged between "Profiling starts ... (with profile id: ID)" and "Stop
// profiling...". A rank's batch is the mean #running-req of its Decode lines in the window (the
// last one before it when the window has none). Step times come from the traces named ID-TP-*; a
// rank without a trace uses the mean of the others, and with no trace at all the step time is
// estimated from the log as batch / gen throughput (said so in the report). The logs' own
// gen throughput is summed as a cross-check.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "profile/log_parser.h"
#include "profile/trace_reader.h"

namespace pdserve::profile {

struct AnalyzeOptions {
  std::vector<std::string> decode_logs, prefill_logs;
  std::string trace_dir;
  std::string profile_id;       // only this window (default: every window found)
  std::optional<int> num_gpus;  // default: the number of ranks (one GPU per DP-attention rank)
};

struct RankResult {
  int dp = 0;
  int log_lines = 0;         // statistics lines inside the window
  double batch = 0;          // decode: mean #running-req; prefill: mean #new-token per batch
  std::optional<double> step_time_s;  // from this rank's trace
  std::string trace_file;
  double throughput_per_gpu = 0;      // batch / step time (this rank is one GPU)
  std::optional<double> log_throughput;  // mean gen / input throughput of its log lines
};

struct WindowResult {
  std::string role;  // "decode" | "prefill"
  std::string profile_id, trace_dir_in_log, start_time;
  std::vector<RankResult> ranks;
  double global_batch = 0;
  double step_time_s = 0;
  std::string step_time_source;  // "trace (N steps, marker M)" | "log estimate"
  int gpus = 0;
  double tokens_per_s_per_gpu = 0;
  std::optional<double> log_throughput_total, log_throughput_per_gpu;
  std::vector<double> step_periods_s;  // all ranks' start-to-start gaps, for the distribution
  // Mean of the per-pass "[Expert Balancedness]" lines logged inside the window (servers run with
  // --enable-expert-distribution-metrics): what EPLB buys, beside the throughput.
  std::optional<double> expert_balancedness;
  int balancedness_passes = 0;
};

// Everything a rank logged over time, for the charts.
struct RankSeries {
  std::string role;
  int dp = 0;
  std::vector<double> t, running, throughput;  // seconds from the log's first line
};

struct AnalyzeReport {
  std::vector<WindowResult> windows;
  std::vector<RankSeries> series;
  std::vector<std::string> warnings;
};

Result<AnalyzeReport> analyze(const AnalyzeOptions& o);

// The computation on parsed inputs (the file-reading front calls this; tests call it directly).
// `traces` are (file name, timing) pairs of one role's traces in the trace folder.
struct ParsedLog {
  std::vector<LogLine> lines;
};
AnalyzeReport analyze_parsed(const std::vector<ParsedLog>& decode, const std::vector<ParsedLog>& prefill,
                             const std::vector<std::pair<std::string, StepTiming>>& traces,
                             const AnalyzeOptions& o);

std::string format_text(const AnalyzeReport& r);
nlohmann::json to_json(const AnalyzeReport& r);
std::string to_html(const AnalyzeReport& r);

}  // namespace pdserve::profile
