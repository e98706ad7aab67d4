// Ranks and groups of one server: which rank does attention with which (attention TP), which
// ranks are data-parallel attention replicas (DP), and which share the experts (EP), computed from
// SGLang's flags (sglang-spec §1.3) exactly as SGLang derives them, so logs and traces name the
// same DP/TP/EP numbers.
//
//   world      = tp_size ranks (with --enable-dp-attention) or dp_size * tp_size (replicas)
//   attn TP    = tp_size / dp_size ranks with DP attention, else all tp_size ranks of a replica
//   MoE EP     = ep_size ranks that hold disjoint experts; moe TP = tp_size / ep_size
//
// The layout is a value: every rank thread gets the same one and looks itself up.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/logging.h"
#include "base/status.h"

namespace pdserve::parallel {

// --moe-a2a-backend: how MoE tokens move between EP ranks.
enum class MoeA2aBackend { kNone, kDeepEp };
// --deepep-mode. kAuto: normal for batches that extend (prefill), low-latency for pure decode.
enum class DeepEpMode { kNormal, kLowLatency, kAuto };

Result<MoeA2aBackend> parse_moe_a2a_backend(const std::string& s);  // "none" | "deepep"
Result<DeepEpMode> parse_deepep_mode(const std::string& s);         // "normal" | "low_latency" | "auto"
const char* deepep_mode_name(DeepEpMode m);

// The mode one MoE layer runs in. Every EP rank must pass the same `any_rank_extends` (a fact
// gathered over the EP group, as SGLang does before each step): if ranks chose modes from their own
// batches, one rank would run normal-mode collectives while another runs low-latency ones.
DeepEpMode resolve_deepep_mode(DeepEpMode configured, bool any_rank_extends);

// The flags as given on the command line (0 = not given where SGLang has None).
struct ParallelConfig {
  int tp_size = 1;
  int dp_size = 1;
  int ep_size = 1;
  bool enable_dp_attention = false;
  bool enable_dp_lm_head = false;
  int moe_dense_tp_size = 0;  // 0 = None; only 1 is supported (dense FFN data-parallel)
  MoeA2aBackend moe_a2a_backend = MoeA2aBackend::kNone;
  DeepEpMode deepep_mode = DeepEpMode::kAuto;
};

// One rank's coordinates. Numbers follow SGLang: tp_rank is the rank inside its replica (what the
// log prefix prints as TP), dp_rank is the attention replica.
struct RankInfo {
  int global_rank = 0;                // 0 .. world_size-1, the index of this rank's thread
  int tp_rank = 0, tp_size = 1;
  std::optional<int> dp_rank;         // set when dp_size > 1
  int attn_tp_rank = 0, attn_tp_size = 1;
  int moe_ep_rank = 0, moe_ep_size = 1;
  int moe_tp_rank = 0, moe_tp_size = 1;

  // " DP{d} TP{t} EP{e}" as the logger prints it.
  log::RankPrefix log_prefix() const;
};

class RankLayout {
 public:
  // Validates the flag combination (SGLang's rules: tp % dp == 0 with DP attention, tp % ep == 0,
  // dp-lm-head needs DP attention, moe-dense-tp-size only 1). With --moe-a2a-backend deepep the EP
  // size is forced to the TP size, as SGLang does; `notes` then says so (the caller logs it).
  static Result<RankLayout> create(const ParallelConfig& cfg);

  const ParallelConfig& config() const { return cfg_; }
  int world_size() const { return static_cast<int>(ranks_.size()); }
  const RankInfo& rank(int global_rank) const { return ranks_.at(static_cast<size_t>(global_rank)); }
  const std::vector<RankInfo>& ranks() const { return ranks_; }
  const std::vector<std::string>& notes() const { return notes_; }

  // Each group lists its members' global ranks in group-rank order; every rank is in exactly one
  // group of each kind.
  std::vector<std::vector<int>> tp_groups() const;       // one per replica (all ranks of a TP group)
  std::vector<std::vector<int>> attn_tp_groups() const;  // ranks that shard one attention
  std::vector<std::vector<int>> ep_groups() const;       // ranks that exchange MoE tokens

 private:
  ParallelConfig cfg_;
  std::vector<RankInfo> ranks_;
  std::vector<std::string> notes_;
};

}  // namespace pdserve::parallel
