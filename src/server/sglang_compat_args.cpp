#include "server/sglang_compat_args.h"

#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace pdserve::server {

using nlohmann::json;

namespace {

// SGLang's choices (python/sglang/srt/server_args.py), old and current names.
const std::vector<std::string> kAttentionBackends = {
    "triton", "torch_native", "flex_attention", "dsa", "nsa", "cutlass_mla", "fa3", "fa4", "flashinfer", "flashmla",
    "trtllm_mla", "cutedsl_mla", "trtllm_mha", "dual_chunk_flash_attn", "aiter", "wave", "intel_amx", "ascend",
    "intel_xpu"};
const std::vector<std::string> kMoeRunnerBackends = {
    "auto", "deep_gemm", "triton", "triton_kernel", "flashinfer_trtllm", "flashinfer_cutlass", "flashinfer_mxfp4",
    "flashinfer_cutedsl", "cutlass", "aiter", "marlin"};
const std::vector<std::string> kKvCacheDtypes = {"auto", "bf16", "bfloat16", "fp8_e5m2", "fp8_e4m3", "mxfp8",
                                                 "nvfp4", "fp4_mx_block16", "fp4_e2m1"};
const std::vector<std::string> kQuantizations = {
    "fp8", "awq", "mxfp8", "gptq", "marlin", "gptq_marlin", "awq_marlin", "bitsandbytes", "gguf", "modelopt",
    "modelopt_fp8", "modelopt_fp4", "petit_nvfp4", "w8a8_int8", "w8a8_fp8", "moe_wna16", "qoq", "w4afp8", "mxfp4",
    "compressed-tensors", "quark", "unquant"};
const std::vector<std::string> kLoadBalanceMethods = {"auto", "round_robin", "follow_bootstrap_room", "total_requests",
                                                      "total_tokens", "shortest_queue", "minimum_tokens"};

Error unsupported(const std::string& m) { return Error(ErrorCode::kUnsupported, m); }

// --deepep-config is JSON text or the path of a file holding it (SGLang reads both).
Result<json> read_deepep_config(const std::string& value) {
  std::string text = value;
  if (value.find('{') == std::string::npos) {
    std::ifstream f(value);
    if (!f) return make_error(ErrorCode::kInvalidArgument, "--deepep-config {}: not JSON text, and no such file", value);
    std::stringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  }
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return make_error(ErrorCode::kInvalidArgument, "--deepep-config {}: not a JSON object", value.size() > 80 ? "(text)" : value);
  return j;
}

// SGLang removed these (deprecated 2025-08, gone 2025-10-25, PR #12124); its note says what replaced them.
void add_removed_flag(CLI::App& app, const std::string& name, const std::string& instead) {
  app.add_flag_function(
         name,
         [name, instead](int64_t) {
           throw CLI::ValidationError(name, "removed from SGLang (and not taken here either): " + instead);
         },
         "Removed from SGLang: " + instead)
      ->group("");  // hidden from --help
}

}  // namespace

void add_sglang_compat_flags(CLI::App& app, SglangCompatArgs& a) {
  app.add_option("--attention-backend", a.attention_backend, "SGLang's attention kernels (pdserve runs its own MLA kernels)")
      ->check(CLI::IsMember(kAttentionBackends));
  app.add_option("--moe-runner-backend", a.moe_runner_backend, "SGLang's MoE kernels (pdserve runs its own expert GEMMs)")
      ->capture_default_str()->check(CLI::IsMember(kMoeRunnerBackends));
  app.add_option("--kv-cache-dtype", a.kv_cache_dtype, "KV cache dtype: auto | bf16 (FP8/FP4 KV caches are refused)")
      ->capture_default_str()->check(CLI::IsMember(kKvCacheDtypes));
  app.add_option("--quantization", a.quantization, "Only the checkpoint's own: fp8 for FP8 block-quantized checkpoints")
      ->check(CLI::IsMember(kQuantizations));
  app.add_option("--load-balance-method", a.load_balance_method,
                 "DP rank choice: auto | follow_bootstrap_room | round_robin (not on a prefill server)")
      ->capture_default_str()->check(CLI::IsMember(kLoadBalanceMethods));
  app.add_option("--deepep-config", a.deepep_config, "DeepEP tuning (JSON text or file): checked, not used");
  app.add_flag("--disable-overlap-schedule", a.disable_overlap_schedule, "Accepted (pdserve does not overlap scheduling)");
  app.add_flag("--disable-shared-experts-fusion", a.disable_shared_experts_fusion,
               "Accepted (pdserve runs the shared expert apart)");
  app.add_flag("--disable-chunked-prefix-cache", a.disable_chunked_prefix_cache,
               "Accepted (pdserve attends a cached prefix in one pass)");
  app.add_flag("--enable-single-batch-overlap", a.enable_single_batch_overlap,
               "Accepted; passes run without the overlap (logged)");
  add_removed_flag(app, "--enable-deepep-moe", "use --moe-a2a-backend deepep");
  add_removed_flag(app, "--enable-ep-moe", "set --ep-size to the same value as --tp-size");
}

Result<std::vector<std::string>> SglangCompatArgs::resolve(const model::ModelConfig& cfg,
                                                           const std::string& disaggregation_mode, bool deepep) const {
  std::vector<std::string> notes;
  if (!attention_backend.empty())
    notes.push_back(fmt::format("--attention-backend {}: no effect, pdserve runs its own MLA attention kernels "
                                "(absorbed decode over the paged latent cache, flash-style prefill)",
                                attention_backend));
  if (moe_runner_backend != "auto")
    notes.push_back(fmt::format("--moe-runner-backend {}: no effect, pdserve runs its own expert GEMMs", moe_runner_backend));
  if (kv_cache_dtype != "auto" && kv_cache_dtype != "bf16" && kv_cache_dtype != "bfloat16")
    return unsupported(fmt::format("--kv-cache-dtype {} is not in this build: pdserve keeps the latent KV cache in the "
                                   "activation dtype (bf16 on GPUs); use auto or bf16",
                                   kv_cache_dtype));
  if (kv_cache_dtype != "auto") notes.push_back(fmt::format("--kv-cache-dtype {}: the KV cache is bf16, as auto", kv_cache_dtype));
  if (!quantization.empty()) {
    const bool fp8_checkpoint = cfg.quantization.has_value();
    if (quantization == "fp8" && fp8_checkpoint) {
      notes.push_back("--quantization fp8: the checkpoint's own FP8 block quantization (config.json), as without the flag");
    } else if (quantization == "fp8") {
      return unsupported("--quantization fp8 on a checkpoint without an FP8 quantization_config (online FP8 quantization) is "
                         "not in this build: serve an FP8 checkpoint, or leave the flag out to run this one in bf16");
    } else {
      return unsupported(fmt::format("--quantization {} is not in this build: pdserve runs bf16 checkpoints and DeepSeek's "
                                     "FP8 block-quantized ones (as their config.json says; leave the flag out{})",
                                     quantization, fp8_checkpoint ? ", or pass fp8" : ""));
    }
  }
  const std::string& lb = load_balance_method;
  if (lb == "total_requests" || lb == "total_tokens" || lb == "shortest_queue" || lb == "minimum_tokens")
    return unsupported(fmt::format("--load-balance-method {} is not in this build: use auto (round robin, or the bootstrap "
                                   "room with PD), follow_bootstrap_room or round_robin",
                                   lb));
  if (lb == "round_robin" && disaggregation_mode == "prefill")
    return unsupported("--load-balance-method round_robin on a prefill server: decode servers find a request's prefill DP "
                       "rank as bootstrap_room % dp size, so the prefill must follow the room; use auto or "
                       "follow_bootstrap_room");
  if (lb == "round_robin")
    notes.push_back("--load-balance-method round_robin: requests go round robin over the DP ranks, bootstrap rooms aside");
  if (!deepep_config.empty()) {
    PDSERVE_ASSIGN_OR_RETURN(json j, read_deepep_config(deepep_config));
    notes.push_back(deepep ? fmt::format("--deepep-config: read ({} keys); no effect, pdserve's dispatch and combine "
                                         "kernels size themselves",
                                         j.size())
                           : "--deepep-config: no effect without --moe-a2a-backend deepep");
  }
  if (disable_overlap_schedule)
    notes.push_back("--disable-overlap-schedule: no change, pdserve's scheduler does not overlap with the forward pass");
  if (disable_shared_experts_fusion)
    notes.push_back("--disable-shared-experts-fusion: no change, pdserve runs the shared expert apart from the routed ones");
  if (disable_chunked_prefix_cache)
    notes.push_back("--disable-chunked-prefix-cache: no change, pdserve's prefill attends a cached prefix in one pass");
  if (enable_single_batch_overlap)
    notes.push_back("--enable-single-batch-overlap is accepted but not implemented: passes run without the overlap");
  return notes;
}

json SglangCompatArgs::to_json() const {
  return {{"attention_backend", attention_backend.empty() ? json(nullptr) : json(attention_backend)},
          {"moe_runner_backend", moe_runner_backend},
          {"kv_cache_dtype", kv_cache_dtype},
          {"quantization", quantization.empty() ? json(nullptr) : json(quantization)},
          {"load_balance_method", load_balance_method},
          {"deepep_config", deepep_config.empty() ? json(nullptr) : json(deepep_config)},
          {"disable_overlap_schedule", disable_overlap_schedule},
          {"disable_shared_experts_fusion", disable_shared_experts_fusion},
          {"disable_chunked_prefix_cache", disable_chunked_prefix_cache},
          {"enable_single_batch_overlap", enable_single_batch_overlap}};
}

}  // namespace pdserve::server
