#include "server/server_args.h"

#include <algorithm>

#include <fmt/format.h>

namespace pdserve::server {

namespace {

void add_disagg_flags(CLI::App& app, ServerArgs& a) {
  app.add_option("--dp-size,--dp", a.dp_size, "Data-parallel scheduler ranks (each with its own KV cache)")
      ->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--disaggregation-mode", a.disaggregation_mode, "null | prefill | decode")->capture_default_str()
      ->check(CLI::IsMember({"null", "prefill", "decode"}));
  app.add_option("--disaggregation-bootstrap-port", a.disaggregation_bootstrap_port,
                 "Port of the prefill's bootstrap server (decode: default for requests without bootstrap_port)")
      ->capture_default_str()->check(CLI::Range(0, 65535));
  app.add_option("--disaggregation-transfer-backend", a.disaggregation_transfer_backend, "tcp | fake | cuda-ipc")
      ->capture_default_str();
  app.add_option("--disaggregation-ib-device", a.disaggregation_ib_device, "Accepted and reported (no RDMA backend here)");
  app.add_option("--disaggregation-decode-tp", a.disaggregation_decode_tp, "Accepted for compatibility");
  app.add_option("--disaggregation-decode-dp", a.disaggregation_decode_dp, "Accepted for compatibility");
  app.add_flag("--prefill-round-robin-balance", a.prefill_round_robin_balance, "Accepted for compatibility");
  app.add_option("--num-reserved-decode-tokens", a.num_reserved_decode_tokens,
                 "Decode: KV tokens reserved per request when admitting transfers")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--disaggregation-decode-polling-interval", a.disaggregation_decode_polling_interval,
                 "Poll the PD queues every N scheduler loops")->capture_default_str()->check(CLI::PositiveNumber);
}

void add_parallel_flags(CLI::App& app, ServerArgs& a) {
  app.add_option("--tp-size,--tp", a.tp_size, "Tensor-parallel size (with --enable-dp-attention: equal to --dp-size)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  app.add_flag("--enable-dp-attention", a.enable_dp_attention,
               "Data-parallel attention: every DP rank runs its own requests; global limits are divided among them");
  app.add_option("--ep-size,--ep", a.ep_size, "Expert-parallel size (--moe-a2a-backend deepep sets it to --tp-size)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  app.add_option("--moe-a2a-backend", a.moe_a2a_backend, "How MoE tokens move between EP ranks: none | deepep")
      ->capture_default_str();
  app.add_option("--deepep-mode", a.deepep_mode, "normal | low_latency | auto (normal for prefill, low-latency for decode)")
      ->capture_default_str();
  app.add_option("--moe-dense-tp-size", a.moe_dense_tp_size, "TP size of the dense layers (only 1: data-parallel)")
      ->check(CLI::Range(1, 1024));
  app.add_flag("--enable-dp-lm-head", a.enable_dp_lm_head, "LM head per DP rank (needs --enable-dp-attention)");
  app.add_flag("--enable-two-batch-overlap", a.enable_two_batch_overlap,
               "Accepted; this build runs passes without the two-batch overlap");
  app.add_option("--dist-init-addr", a.dist_init_addr, "HOST:PORT where node 0 waits for the other nodes");
  app.add_option("--nnodes", a.nnodes, "Nodes (processes) of this server")->capture_default_str()->check(CLI::Range(1, 1024));
  app.add_option("--node-rank", a.node_rank, "This node's rank (0 serves HTTP)")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--dist-timeout", a.dist_timeout, "Seconds to wait for every node at startup")->capture_default_str()
      ->check(CLI::PositiveNumber);
}

void add_http_limit_flags(CLI::App& app, ServerArgs& a) {
  const auto seconds = CLI::Range(0.001, 86400.0);
  app.add_option("--http-header-timeout", a.http_header_timeout, "Seconds for a client to send a request's head")
      ->capture_default_str()->check(seconds);
  app.add_option("--http-body-timeout", a.http_body_timeout, "Seconds for a client to send a request's body")
      ->capture_default_str()->check(seconds);
  app.add_option("--http-idle-timeout", a.http_idle_timeout, "Seconds a keep-alive connection may wait for its next request")
      ->capture_default_str()->check(seconds);
  app.add_option("--http-write-timeout", a.http_write_timeout,
                 "Seconds one write may wait for a client that stopped reading (then the request is aborted)")
      ->capture_default_str()->check(seconds);
  app.add_option("--http-max-queued-bytes", a.http_max_queued_bytes,
                 "Bytes of a streamed answer that may wait for a slow reader (then the request is aborted)")
      ->capture_default_str()->check(CLI::Range(int64_t{1024}, int64_t{1} << 40));
}

}  // namespace

void add_server_flags(CLI::App& app, ServerArgs& a) {
  add_disagg_flags(app, a);
  add_parallel_flags(app, a);
  add_expert_flags(app, a.expert);
  add_sglang_compat_flags(app, a.compat);
  app.add_option("--model-path", a.model_path, "Model folder (config.json, safetensors, tokenizer)")->required();
  app.add_option("--tokenizer-path", a.tokenizer_path, "Tokenizer folder (default: the model folder)");
  app.add_option("--load-format", a.load_format, "auto | safetensors | dummy")->capture_default_str();
  app.add_option("--host", a.host)->capture_default_str();
  app.add_option("--port", a.port)->capture_default_str()->check(CLI::Range(0, 65535));
  app.add_option("--served-model-name", a.served_model_name, "Model name in the OpenAI API (default: model path)");
  app.add_option("--context-length", a.context_length, "Max prompt + output tokens (default: from config.json)");
  app.add_option("--page-size", a.page_size, "Tokens per KV page (also the prefix-cache granularity)")->capture_default_str();
  app.add_option("--max-running-requests", a.max_running_requests, "Max requests decoding at once");
  app.add_option("--max-total-tokens", a.max_total_tokens, "KV cache capacity in tokens");
  app.add_option("--max-prefill-tokens", a.max_prefill_tokens, "Max new tokens in one prefill batch")->capture_default_str();
  app.add_option("--chunked-prefill-size", a.chunked_prefill_size, "Prefill chunk size in tokens (-1: no chunking)")
      ->capture_default_str();
  app.add_flag("--disable-radix-cache", a.disable_radix_cache, "Turn the prefix cache off");
  app.add_option("--schedule-policy", a.schedule_policy)->capture_default_str()->check(CLI::IsMember({"fcfs", "lpm"}));
  app.add_option("--schedule-conservativeness", a.schedule_conservativeness,
                 "Lower admits more requests (and may retract later); higher is safer")->capture_default_str();
  app.add_option("--decode-log-interval", a.decode_log_interval, "Log a Decode batch line every N decode steps")
      ->capture_default_str();
  app.add_option("--log-level", a.log_level)->capture_default_str()->check(
      CLI::IsMember({"debug", "info", "warning", "error", "critical"}));
  app.add_flag("--enable-metrics", a.enable_metrics, "Serve Prometheus metrics on /metrics");
  app.add_option("--api-key", a.api_key, "Require 'Authorization: Bearer KEY' on every route but /health");
  app.add_option("--mem-fraction-static", a.mem_fraction_static,
                 "GPU memory fraction for weights, activations and the KV cache (default 0.88)");
  app.add_option("--device", a.device, "auto (cuda when a GPU is visible) | cuda | cpu")->capture_default_str()->check(
      CLI::IsMember({"auto", "cuda", "cpu"}));
  app.add_option("--base-gpu-id", a.base_gpu_id, "GPU of the first rank")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--cuda-graph-bs", a.cuda_graph_bs, "Decode batch sizes captured as CUDA graphs")->expected(1, -1);
  app.add_option("--cuda-graph-max-bs", a.cuda_graph_max_bs, "Largest captured decode batch (default: min(max running, 64))");
  app.add_flag("--disable-cuda-graph", a.disable_cuda_graph, "Run every decode batch eagerly");
  app.add_option("--random-seed", a.random_seed)->capture_default_str();
  app.add_option("--watchdog-timeout", a.watchdog_timeout, "Seconds a batch may take before the server is declared hung")
      ->capture_default_str();
  app.add_flag("--skip-server-warmup", a.skip_server_warmup);
  app.add_flag("--trust-remote-code", a.trust_remote_code, "Accepted for compatibility (pdserve runs no remote code)");
  app.add_option("--dummy-seed", a.dummy_seed, "Seed of --load-format dummy weights")->capture_default_str();
  app.add_option("--json-model-override-args", a.json_model_override_args,
                 "JSON object replacing config.json fields, e.g. '{\"num_hidden_layers\": 4}'")
      ->capture_default_str();
  app.add_option("--max-request-body-bytes", a.max_body_bytes, "Larger request bodies get 413")->capture_default_str()
      ->check(CLI::PositiveNumber);
  add_http_limit_flags(app, a);
}

Status ServerArgs::resolve_parallel() {
  auto bad = [](const std::string& m) { return Status(Error(ErrorCode::kInvalidArgument, m)); };
  if (enable_dp_attention) {
    // SGLang requires dp <= tp; an unset --tp-size (1) next to --dp-size N is read as N.
    if (tp_size == 1) tp_size = dp_size;
    if (tp_size != dp_size)
      return bad(fmt::format("--tp-size {} with --dp-size {} means attention tensor parallelism of {} per DP rank, which this "
                             "build does not have: use --tp-size {} --dp-size {}",
                             tp_size, dp_size, tp_size / std::max<int64_t>(dp_size, 1), tp_size, tp_size));
    // Global limits, as SGLang: each DP rank gets its share. SGLang also schedules DP ranks more
    // aggressively (their batches are small): conservativeness x 0.3.
    if (max_running_requests > 0) max_running_requests = std::max<int64_t>(1, max_running_requests / dp_size);
    if (chunked_prefill_size > 0) chunked_prefill_size = std::max<int64_t>(1, chunked_prefill_size / dp_size);
    if (dp_size > 1) {  // SGLang turns DP attention off at --dp-size 1
      schedule_conservativeness *= 0.3;
      adjustments.push_back(fmt::format("DP attention is enabled. The chunked prefill size is adjusted to {} to avoid MoE "
                                        "kernel issues. ",
                                        chunked_prefill_size));
    }
  } else if (tp_size > 1) {
    return bad(fmt::format("--tp-size {} without --enable-dp-attention is tensor parallelism, which this build does not "
                           "have: use --tp-size {} --dp-size {} --enable-dp-attention",
                           tp_size, tp_size, tp_size));
  }
  parallel::ParallelConfig pc;
  pc.tp_size = static_cast<int>(tp_size);
  pc.dp_size = static_cast<int>(dp_size);
  pc.ep_size = static_cast<int>(ep_size);
  pc.enable_dp_attention = enable_dp_attention;
  pc.enable_dp_lm_head = enable_dp_lm_head;
  pc.moe_dense_tp_size = static_cast<int>(moe_dense_tp_size);
  PDSERVE_ASSIGN_OR_RETURN(pc.moe_a2a_backend, parallel::parse_moe_a2a_backend(moe_a2a_backend));
  PDSERVE_ASSIGN_OR_RETURN(pc.deepep_mode, parallel::parse_deepep_mode(deepep_mode));
  PDSERVE_ASSIGN_OR_RETURN(layout, parallel::RankLayout::create(pc));
  ep_size = layout->rank(0).moe_ep_size;  // deepep forces EP = TP, as SGLang
  if (ep_size > 1 && pc.moe_a2a_backend != parallel::MoeA2aBackend::kDeepEp)
    return bad(fmt::format("--ep-size {} needs --moe-a2a-backend deepep in this build (the all-gather EP MoE of "
                           "--moe-a2a-backend none is not implemented)", ep_size));
  if (node_rank >= nnodes) return bad(fmt::format("--node-rank {} must be below --nnodes {}", node_rank, nnodes));
  if (nnodes > 1) {
    if (dist_init_addr.empty()) return bad("--nnodes > 1 needs --dist-init-addr HOST:PORT (node 0's address)");
    if (dp_size % nnodes != 0)
      return bad(fmt::format("--dp-size {} must be a multiple of --nnodes {}: every node runs --dp-size / --nnodes DP ranks",
                             dp_size, nnodes));
  }
  return ok_status();
}

std::string ServerArgs::node_fingerprint() const {
  return fmt::format("tp_size={} dp_size={} enable_dp_attention={} ep_size={} moe_a2a_backend={} deepep_mode={} "
                     "disaggregation_mode={} page_size={} load_format={} dummy_seed={} context_length={}",
                     tp_size, dp_size, enable_dp_attention, ep_size, moe_a2a_backend, deepep_mode, disaggregation_mode,
                     page_size, load_format, dummy_seed, context_length);
}

Status ServerArgs::resolve(int64_t model_context_length, int64_t bytes_per_token) {
  auto bad = [](const std::string& m) { return Status(Error(ErrorCode::kInvalidArgument, m)); };
  if (page_size <= 0) return bad("--page-size must be positive");
  if (context_length < 0) return bad("--context-length must be positive");
  if (context_length == 0) context_length = model_context_length;
  if (max_total_tokens < 0) return bad("--max-total-tokens must be positive");
  if (max_total_tokens == 0) {
    // CPU backend: a 1 GiB budget for the latent cache, at most 131072 tokens.
    max_total_tokens = std::clamp<int64_t>((int64_t{1} << 30) / std::max<int64_t>(bytes_per_token, 1), 1024, 131072);
  }
  max_total_tokens = max_total_tokens / page_size * page_size;  // as SGLang: whole pages
  if (max_total_tokens < page_size) return bad("--max-total-tokens is smaller than one page");
  if (max_running_requests < 0) return bad("--max-running-requests must be positive");
  if (max_running_requests == 0) max_running_requests = std::clamp<int64_t>(max_total_tokens / 256, 16, 1024);
  if (max_prefill_tokens <= 0) return bad("--max-prefill-tokens must be positive");
  if (chunked_prefill_size == 0 || chunked_prefill_size < -1) return bad("--chunked-prefill-size must be positive or -1");
  if (!(schedule_conservativeness > 0 && schedule_conservativeness <= 100))
    return bad("--schedule-conservativeness must be in (0, 100]");
  if (decode_log_interval <= 0) return bad("--decode-log-interval must be positive");
  if (served_model_name.empty()) served_model_name = model_path;
  return ok_status();
}

nlohmann::json ServerArgs::to_json() const {
  nlohmann::json j = {{"model_path", model_path},
          {"tokenizer_path", tokenizer_path},
          {"load_format", load_format},
          {"json_model_override_args", json_model_override_args},
          {"host", host},
          {"port", port},
          {"served_model_name", served_model_name},
          {"context_length", context_length},
          {"page_size", page_size},
          {"max_running_requests", max_running_requests},
          {"max_total_tokens", max_total_tokens},
          {"max_prefill_tokens", max_prefill_tokens},
          {"chunked_prefill_size", chunked_prefill_size},
          {"disable_radix_cache", disable_radix_cache},
          {"schedule_policy", schedule_policy},
          {"schedule_conservativeness", schedule_conservativeness},
          {"decode_log_interval", decode_log_interval},
          {"log_level", log_level},
          {"enable_metrics", enable_metrics},
          {"api_key", api_key.empty() ? nlohmann::json(nullptr) : nlohmann::json("<set>")},
          {"mem_fraction_static", mem_fraction_static},
          {"random_seed", random_seed},
          {"watchdog_timeout", watchdog_timeout},
          {"skip_server_warmup", skip_server_warmup},
          {"trust_remote_code", trust_remote_code},
          {"max_request_body_bytes", max_body_bytes},
          {"http_header_timeout", http_header_timeout},
          {"http_body_timeout", http_body_timeout},
          {"http_idle_timeout", http_idle_timeout},
          {"http_write_timeout", http_write_timeout},
          {"http_max_queued_bytes", http_max_queued_bytes},
          {"tp_size", tp_size},
          {"dp_size", dp_size},
          {"enable_dp_attention", enable_dp_attention},
          {"ep_size", ep_size},
          {"moe_a2a_backend", moe_a2a_backend},
          {"deepep_mode", deepep_mode},
          {"moe_dense_tp_size", moe_dense_tp_size > 0 ? nlohmann::json(moe_dense_tp_size) : nlohmann::json(nullptr)},
          {"enable_dp_lm_head", enable_dp_lm_head},
          {"enable_two_batch_overlap", enable_two_batch_overlap},
          {"dist_init_addr", dist_init_addr.empty() ? nlohmann::json(nullptr) : nlohmann::json(dist_init_addr)},
          {"nnodes", nnodes},
          {"node_rank", node_rank},
          {"disaggregation_mode", disaggregation_mode},
          {"disaggregation_bootstrap_port", disaggregation_bootstrap_port},
          {"disaggregation_transfer_backend", disaggregation_transfer_backend},
          {"disaggregation_ib_device", disaggregation_ib_device.empty() ? nlohmann::json(nullptr) : nlohmann::json(disaggregation_ib_device)},
          {"num_reserved_decode_tokens", num_reserved_decode_tokens},
          {"disaggregation_decode_polling_interval", disaggregation_decode_polling_interval},
          {"device", device},
          {"base_gpu_id", base_gpu_id},
          {"cuda_graph_bs", cuda_graph_bs},
          {"cuda_graph_max_bs", cuda_graph_max_bs},
          {"disable_cuda_graph", disable_cuda_graph}};
  j.update(expert.to_json());
  j.update(compat.to_json());
  return j;
}

}  // namespace pdserve::server
