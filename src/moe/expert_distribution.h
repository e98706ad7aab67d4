// The expert distribution recorder (SGLang's ExpertDistributionRecorder, sglang-spec §7): counts
// which physical experts every MoE layer used, per forward pass, between
// /start_expert_distribution_record and /stop_expert_distribution_record, and dumps them as
// logical_count[passes][layers][logical experts] for EPLB.
//
// One recorder serves all ranks of a server process: every rank calls record() after each forward
// pass, and counts of the same forward pass id are summed across ranks (SGLang's all-reduce SUM).
// Counts stay physical while recording and are converted to logical experts at dump time with the
// placement current then, as SGLang does.
//
// Modes: stat keeps one [layers][physical] count per pass in a ring of `buffer_size` passes; with
// -1 (unbounded) it keeps one running sum instead, so logical_count is [1][layers][experts] as in
// SGLang's own unbounded dumps (REPRO2's file is [1, 61, 256]) and a long recording stays small;
// per_pass keeps each rank's count per pass; per_token also keeps every token's chosen
// experts. per_pass / per_token records are bounded by buffer_size passes as well (SGLang keeps them
// unbounded until the dump, which can exhaust memory on a long recording).
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "moe/expert_location.h"

namespace pdserve::moe {

enum class RecorderMode { kStat, kPerPass, kPerToken };
// "stat" | "stat_approx" (same as stat here) | "per_pass" | "per_token".
Result<RecorderMode> parse_recorder_mode(const std::string& name);
const char* recorder_mode_name(RecorderMode m);

struct RecorderOptions {
  RecorderMode mode = RecorderMode::kStat;
  int64_t buffer_size = 1000;  // passes kept; -1 = unbounded
  ExpertLayout layout;
  std::string model;   // written into the dump's metadata
  int num_groups = 0;  // the router's expert groups (n_group), for `pdserve eplb`; 0 = unknown
};

// What one rank routed in one forward pass.
struct PassRouting {
  int64_t forward_pass_id = 0;
  int rank = 0;
  int top_k = 0;
  // MoE layer -> physical expert ids, [tokens][top_k] flattened (dense layers are simply absent).
  std::map<int, std::vector<int32_t>> physical_ids;
  // Or already counted (what a CUDA graph reports; enough for stat and per_pass): MoE layer ->
  // slots per physical expert, [num_physical]. Both forms may be given; they add up.
  std::map<int, std::vector<int64_t>> physical_counts;
  // per_token only (optional): the tokens' ids and positions, and "extend" / "decode".
  std::vector<int32_t> input_ids, positions;
  std::string forward_mode;
};

// The pass's counts flattened to [layers * num_physical] (ids and counts added up). Errors
// (kInvalidArgument) as ExpertDistributionRecorder::record describes.
Result<std::vector<int64_t>> physical_counts_of(const PassRouting& pass, const ExpertLayout& layout);

// Where dumps go: $SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, else $PDSERVE_EXPERT_DISTRIBUTION_RECORDER_DIR,
// else /tmp (SGLang's default).
std::filesystem::path expert_distribution_dir_from_env();

class ExpertDistributionRecorder {
 public:
  // kInvalidArgument for a bad layout or a buffer size of 0 or below -1.
  static Result<std::unique_ptr<ExpertDistributionRecorder>> create(RecorderOptions opts);

  // start() clears what was recorded and starts; stop() keeps it for the dump.
  void start();
  void stop();
  bool recording() const;
  const RecorderOptions& options() const { return opts_; }

  // Thread safe; a no-op while not recording. Physical ids outside [0, num_physical), layers
  // outside [0, num_layers), count rows not of num_physical entries or with a negative count are
  // an error (kInvalidArgument), nothing of that pass is recorded.
  Status record(const PassRouting& pass);
  // The same with the pass's counts already flattened (physical_counts_of(pass)), for a caller
  // that shares them with the balancedness metrics instead of counting twice.
  Status record(const PassRouting& pass, std::vector<int64_t> physical);

  // The dump object (see docs/eplb.md): logical_count, metadata, and per_pass / per_token records.
  // Clears the recording, as SGLang's dump does (recording itself goes on if it was on).
  nlohmann::json dump(const ExpertLocation& location);
  // dump() written to `dir` as expert_distribution_recorder_{unix time}.json plus a .safetensors
  // twin holding logical_count (I64 [passes, layers, logical]); logs "Write expert distribution to
  // <path>". Returns the JSON path.
  Result<std::filesystem::path> dump_to_dir(const std::filesystem::path& dir, const ExpertLocation& location);
  // Writes a dump object (this recorder's, or several nodes' merged) as dump_to_dir() does.
  Result<std::filesystem::path> write_dump(const std::filesystem::path& dir, const nlohmann::json& dump) const;

  // Summed logical counts [layers][logical] of what is recorded now, without clearing (for EPLB).
  Matrix window_logical_counts(const ExpertLocation& location) const;
  int64_t num_passes() const;

 private:
  explicit ExpertDistributionRecorder(RecorderOptions opts) : opts_(std::move(opts)) {}
  struct PassCounts {
    int64_t forward_pass_id = 0;
    int rank = -1;  // -1: summed over ranks (stat)
    std::vector<int64_t> physical;  // [layers * physical]
    nlohmann::json token_record;    // per_token extras
  };
  void trim_locked();
  Matrix logical_of(const std::vector<int64_t>& physical, const ExpertLocation& location) const;

  RecorderOptions opts_;
  mutable std::mutex mu_;
  bool recording_ = false;
  double start_time_ = 0;
  std::deque<PassCounts> passes_;
  // Unbounded stat: passes older than the last few (which ranks may still be adding to) summed here.
  PassCounts folded_;
  int64_t folded_passes_ = 0;
  int64_t folded_max_id_ = -1;  // a lagging rank's pass folded later is not counted twice
};

}  // namespace pdserve::moe
