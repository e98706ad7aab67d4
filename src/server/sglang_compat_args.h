// SGLang launch flags that select SGLang's own kernels, overlaps and tunings (the published
// deployments pass them: sglang-spec §1), taken by `pdserve serve` so those commands run unchanged.
// Each is checked against SGLang's choices and then either has pdserve's behaviour already (said
// at start-up in one line per flag, so nobody wonders whether it is silently ignored) or would
// change what pdserve computes in a way it cannot (an FP8 KV cache, another quantization, a DP
// balancing method it does not have): those are refused with the reason. Flags SGLang itself
// removed are refused with SGLang's own deprecation note.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "base/status.h"
#include "model/config.h"

namespace pdserve::server {

struct SglangCompatArgs {
  std::string attention_backend;         // --attention-backend; empty: unset
  std::string moe_runner_backend = "auto";
  std::string kv_cache_dtype = "auto";
  std::string quantization;              // empty: the checkpoint's own
  std::string load_balance_method = "auto";
  std::string deepep_config;             // JSON text or a file holding it
  bool disable_overlap_schedule = false;
  bool disable_shared_experts_fusion = false;
  bool disable_chunked_prefix_cache = false;
  bool enable_single_batch_overlap = false;

  // Against the model and the server's mode: the start-up notes (one per flag given), or
  // kInvalidArgument / kUnsupported naming the flag, its value and what to use instead.
  Result<std::vector<std::string>> resolve(const model::ModelConfig& cfg, const std::string& disaggregation_mode,
                                           bool deepep) const;
  // How DP ranks are picked for a request (after resolve): with a bootstrap room, room % dp size
  // (PD pairing) unless round_robin was asked for; without one, round robin.
  bool dp_follows_bootstrap_room() const { return load_balance_method != "round_robin"; }
  nlohmann::json to_json() const;
};

void add_sglang_compat_flags(CLI::App& app, SglangCompatArgs& args);

}  // namespace pdserve::server
