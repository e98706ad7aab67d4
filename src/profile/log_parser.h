// Reads SGLang-format server logs (ours and SGLang's own; sglang-spec §5): the line prefix
// "[YYYY-MM-DD HH:MM:SS DP0 TP0 EP0]", the "Decode batch" / "Prefill batch" statistics in all
// three spellings ("Decode batch, ", "Decode batch. ", "Decode batch [iter], "), and the
// profiler's start and stop lines.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace pdserve::profile {

struct LogLine {
  double time = 0;  // seconds from the timestamp read as UTC (only differences matter)
  std::string timestamp;
  std::optional<int> dp, tp, ep;
  std::string message;
};
// nullopt for lines without the bracketed timestamp prefix.
std::optional<LogLine> parse_log_line(std::string_view line);

// "key: value" pairs of a statistics line after its "Decode batch"/"Prefill batch" head.
std::map<std::string, std::string> parse_stat_fields(std::string_view message);

struct DecodeStats {
  int64_t running = 0, tokens = 0, queue = 0;
  std::optional<double> gen_throughput;
};
std::optional<DecodeStats> parse_decode_batch(std::string_view message);

struct PrefillStats {
  int64_t new_seq = 0, new_token = 0, cached_token = 0, running = 0, queue = 0;
  std::optional<double> input_throughput;
};
std::optional<PrefillStats> parse_prefill_batch(std::string_view message);

struct ProfileStart {
  std::string dir, profile_id, stage;  // stage "" or EXTEND / DECODE
};
std::optional<ProfileStart> parse_profile_start(std::string_view message);
bool is_profile_stop(std::string_view message);  // "Stop profiling..." / "Stop profiling-DECODE..."

// --enable-expert-distribution-metrics' per-pass line (SGLang's and pdserve's):
// "[Expert Balancedness] forward_pass_id=N current_pass_balancedness=0.812 ..." -> 0.812.
std::optional<double> parse_pass_balancedness(std::string_view message);

// One log file's lines that have a prefix, in order.
Result<std::vector<LogLine>> read_log_file(const std::string& path);

}  // namespace pdserve::profile
