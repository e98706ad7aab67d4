#include "parallel/rank_layout.h"

#include <map>
#include <utility>

#include <fmt/format.h>

namespace pdserve::parallel {

Result<MoeA2aBackend> parse_moe_a2a_backend(const std::string& s) {
  if (s == "none") return MoeA2aBackend::kNone;
  if (s == "deepep") return MoeA2aBackend::kDeepEp;
  if (s == "mooncake")
    return make_error(ErrorCode::kUnsupported, "--moe-a2a-backend mooncake is not supported (use none or deepep)");
  return make_error(ErrorCode::kInvalidArgument, "--moe-a2a-backend must be none or deepep (got '{}')", s);
}

Result<DeepEpMode> parse_deepep_mode(const std::string& s) {
  if (s == "normal") return DeepEpMode::kNormal;
  if (s == "low_latency") return DeepEpMode::kLowLatency;
  if (s == "auto") return DeepEpMode::kAuto;
  return make_error(ErrorCode::kInvalidArgument, "--deepep-mode must be normal, low_latency or auto (got '{}')", s);
}

const char* deepep_mode_name(DeepEpMode m) {
  switch (m) {
    case DeepEpMode::kNormal: return "normal";
    case DeepEpMode::kLowLatency: return "low_latency";
    case DeepEpMode::kAuto: return "auto";
  }
  return "?";
}

DeepEpMode resolve_deepep_mode(DeepEpMode configured, bool any_rank_extends) {
  if (configured != DeepEpMode::kAuto) return configured;
  return any_rank_extends ? DeepEpMode::kNormal : DeepEpMode::kLowLatency;
}

log::RankPrefix RankInfo::log_prefix() const {
  log::RankPrefix p;
  p.dp_rank = dp_rank;
  p.tp_rank = tp_rank;
  p.tp_size = tp_size;
  p.ep_rank = moe_ep_rank;
  p.ep_size = moe_ep_size;
  return p;
}

Result<RankLayout> RankLayout::create(const ParallelConfig& in) {
  ParallelConfig cfg = in;
  RankLayout layout;
  if (cfg.tp_size < 1) return make_error(ErrorCode::kInvalidArgument, "--tp-size must be >= 1 (got {})", cfg.tp_size);
  if (cfg.dp_size < 1) return make_error(ErrorCode::kInvalidArgument, "--dp-size must be >= 1 (got {})", cfg.dp_size);
  if (cfg.ep_size < 1) return make_error(ErrorCode::kInvalidArgument, "--ep-size must be >= 1 (got {})", cfg.ep_size);
  if (cfg.enable_dp_attention && cfg.tp_size % cfg.dp_size != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "--enable-dp-attention needs --tp-size divisible by --dp-size (got tp {} dp {})", cfg.tp_size,
                      cfg.dp_size);
  if (cfg.enable_dp_lm_head && !cfg.enable_dp_attention)
    return make_error(ErrorCode::kInvalidArgument, "--enable-dp-lm-head requires --enable-dp-attention");
  if (cfg.moe_dense_tp_size != 0 && cfg.moe_dense_tp_size != 1)
    return make_error(ErrorCode::kInvalidArgument, "--moe-dense-tp-size supports only 1 (got {})",
                      cfg.moe_dense_tp_size);
  if (cfg.moe_dense_tp_size == 1 && !cfg.enable_dp_attention && cfg.tp_size > 1)
    return make_error(ErrorCode::kInvalidArgument, "--moe-dense-tp-size 1 requires --enable-dp-attention");
  if (cfg.moe_a2a_backend == MoeA2aBackend::kDeepEp && cfg.ep_size != cfg.tp_size) {
    // SGLang forces it too (a DeepEP buffer spans the whole TP group); say so rather than refuse.
    layout.notes_.push_back(fmt::format(
        "DeepEP MoE is enabled. The expert parallel size is adjusted to be the same as the tensor parallel size[{}].",
        cfg.tp_size));
    cfg.ep_size = cfg.tp_size;
  }
  if (cfg.tp_size % cfg.ep_size != 0)
    return make_error(ErrorCode::kInvalidArgument, "--tp-size must be divisible by --ep-size (got tp {} ep {})",
                      cfg.tp_size, cfg.ep_size);
  if (cfg.moe_a2a_backend == MoeA2aBackend::kNone && in.deepep_mode != DeepEpMode::kAuto)
    layout.notes_.push_back("--deepep-mode has no effect without --moe-a2a-backend deepep");

  // Without DP attention, dp_size > 1 means independent replicas of tp_size ranks each.
  const int replicas = cfg.enable_dp_attention ? 1 : cfg.dp_size;
  const int world = replicas * cfg.tp_size;
  const int attn_tp = cfg.enable_dp_attention ? cfg.tp_size / cfg.dp_size : cfg.tp_size;
  const int moe_tp = cfg.tp_size / cfg.ep_size;
  for (int g = 0; g < world; ++g) {
    RankInfo r;
    r.global_rank = g;
    r.tp_size = cfg.tp_size;
    r.tp_rank = g % cfg.tp_size;
    if (cfg.dp_size > 1) r.dp_rank = cfg.enable_dp_attention ? r.tp_rank / attn_tp : g / cfg.tp_size;
    r.attn_tp_size = attn_tp;
    r.attn_tp_rank = r.tp_rank % attn_tp;
    r.moe_ep_size = cfg.ep_size;
    r.moe_tp_size = moe_tp;
    r.moe_ep_rank = r.tp_rank / moe_tp;
    r.moe_tp_rank = r.tp_rank % moe_tp;
    layout.ranks_.push_back(r);
  }
  layout.cfg_ = cfg;
  return layout;
}

namespace {

// Groups ranks by a key; members in ascending global rank, groups in ascending key.
template <class Key>
std::vector<std::vector<int>> group_by(const std::vector<RankInfo>& ranks, Key key) {
  std::map<std::pair<int, int>, std::vector<int>> groups;
  for (const RankInfo& r : ranks) groups[key(r)].push_back(r.global_rank);
  std::vector<std::vector<int>> out;
  for (auto& [k, members] : groups) out.push_back(std::move(members));
  return out;
}

}  // namespace

std::vector<std::vector<int>> RankLayout::tp_groups() const {
  const int tp = cfg_.tp_size;
  return group_by(ranks_, [tp](const RankInfo& r) { return std::pair{r.global_rank / tp, 0}; });
}

std::vector<std::vector<int>> RankLayout::attn_tp_groups() const {
  const int tp = cfg_.tp_size;
  return group_by(ranks_, [tp](const RankInfo& r) { return std::pair{r.global_rank / tp, r.tp_rank / r.attn_tp_size}; });
}

std::vector<std::vector<int>> RankLayout::ep_groups() const {
  // Ranks with the same MoE-TP coordinate hold different experts (SGLang's moe_ep group).
  const int tp = cfg_.tp_size;
  return group_by(ranks_, [tp](const RankInfo& r) { return std::pair{r.global_rank / tp, r.moe_tp_rank}; });
}

}  // namespace pdserve::parallel
