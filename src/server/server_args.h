// `pdserve serve` flags, with SGLang's names, defaults and meanings (sglang-spec §1.3).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "base/status.h"
#include "parallel/rank_layout.h"
#include "server/expert_args.h"
#include "server/sglang_compat_args.h"

namespace pdserve::server {

struct ServerArgs {
  std::string model_path;
  std::string tokenizer_path;  // default: the model folder
  std::string load_format = "auto";
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string served_model_name;  // default: model_path
  int64_t context_length = 0;     // 0: the model's max_position_embeddings
  int64_t page_size = 1;
  int64_t max_running_requests = 0;  // 0: derived (see resolve())
  int64_t max_total_tokens = 0;      // 0: derived from a memory budget on the CPU backend
  int64_t max_prefill_tokens = 16384;
  int64_t chunked_prefill_size = 8192;  // -1 disables chunking
  bool disable_radix_cache = false;
  std::string schedule_policy = "fcfs";
  double schedule_conservativeness = 1.0;  // scales the KV reserved for running requests' future tokens
  int64_t decode_log_interval = 40;
  std::string log_level = "info";
  bool enable_metrics = false;
  std::string api_key;
  double mem_fraction_static = 0.0;  // GPU: weights + activations + KV share; 0 = 0.88
  std::string device = "auto";       // auto (cuda when a GPU is visible) | cuda | cpu
  int base_gpu_id = 0;
  std::vector<int64_t> cuda_graph_bs;  // empty: SGLang's default list up to cuda_graph_max_bs
  int64_t cuda_graph_max_bs = 0;       // 0: min(max_running_requests, 64)
  bool disable_cuda_graph = false;
  uint64_t random_seed = 0;
  double watchdog_timeout = 300;
  bool skip_server_warmup = false;
  bool trust_remote_code = false;  // accepted for command-line compatibility; nothing is executed
  int64_t dummy_seed = 0;
  std::string json_model_override_args = "{}";  // replaces config.json fields (model::load_model_config)
  int64_t max_body_bytes = 64 << 20;
  // Slow-client protection of the HTTP front (pdserve's; SGLang relies on uvicorn's defaults):
  // seconds to receive a request head, then its body, between keep-alive requests, and for one
  // write to a client that stopped reading; bytes of a streamed answer waiting for a slow reader.
  // Past any of them the connection is closed and its requests aborted (their KV freed).
  double http_header_timeout = 30, http_body_timeout = 60, http_idle_timeout = 60, http_write_timeout = 60;
  int64_t http_max_queued_bytes = 16 << 20;
  // Data parallel: independent scheduler ranks, each with its own KV cache (PD pairs by
  // bootstrap_room % dp_size).
  int64_t dp_size = 1;
  // SGLang's parallel layout. With --enable-dp-attention every DP rank is its own attention TP
  // group (this build has no attention TP > 1, so --tp-size must equal --dp-size), and
  // --max-running-requests / --chunked-prefill-size are global, divided among the DP ranks.
  int64_t tp_size = 1;
  bool enable_dp_attention = false;
  // Expert parallelism (docs/parallelism.md §6): with --moe-a2a-backend deepep the DP ranks split the
  // routed experts (EP size = TP size, as SGLang forces) and exchange tokens in every MoE layer,
  // running in lockstep. --deepep-mode auto: normal for prefill passes, low-latency for decode.
  int64_t ep_size = 1;
  std::string moe_a2a_backend = "none";
  std::string deepep_mode = "auto";
  int64_t moe_dense_tp_size = 0;         // 0 = unset; only 1 (dense layers data-parallel) is supported
  bool enable_dp_lm_head = false;        // the LM head is per DP rank here anyway (no vocab TP)
  bool enable_two_batch_overlap = false; // accepted; passes run without the overlap (logged)
  // The layout those flags give (resolve_parallel): ranks, groups, SGLang's notes.
  std::optional<parallel::RankLayout> layout;
  // What resolve_parallel changed in the user's flags, as SGLang warns about it (logged at start-up).
  std::vector<std::string> adjustments;
  bool expert_parallel() const { return moe_a2a_backend == "deepep" && ep_size > 1; }
  // Multi-node (docs/cluster.md): one process per node, each running dp_size / nnodes DP ranks;
  // node 0 serves HTTP and forwards to the others.
  std::string dist_init_addr;
  int64_t nnodes = 1;
  int64_t node_rank = 0;
  double dist_timeout = 300;  // seconds to wait for every node at startup
  // PD disaggregation (docs/pd.md). Timeouts and heartbeats come from SGLang's environment variables.
  std::string disaggregation_mode = "null";
  int disaggregation_bootstrap_port = 8998;
  std::string disaggregation_transfer_backend = "tcp";
  std::string disaggregation_ib_device;
  int64_t disaggregation_decode_tp = 0, disaggregation_decode_dp = 0;  // accepted hints (SGLang)
  bool prefill_round_robin_balance = false;                            // accepted (SGLang asserts it)
  int64_t num_reserved_decode_tokens = 512;
  int64_t disaggregation_decode_polling_interval = 1;

  // Fills derived defaults from the model: context length, KV size, running-request cap.
  // `bytes_per_token` is the KV cache size of one token over all layers.
  Status resolve(int64_t model_context_length, int64_t bytes_per_token);
  // Checks the parallel layout (tp/dp/nodes) and applies SGLang's per-rank division of the global
  // limits under --enable-dp-attention. Call once, before resolve().
  Status resolve_parallel();
  int64_t ranks_per_node() const { return dp_size / nnodes; }
  int64_t first_local_rank() const { return node_rank * ranks_per_node(); }
  // The settings every node of one server must share (compared at rendezvous).
  std::string node_fingerprint() const;
  ExpertArgs expert;  // EPLB placement and recorder flags (expert_args.h)
  SglangCompatArgs compat;  // SGLang's kernel, overlap and tuning flags (sglang_compat_args.h)
  nlohmann::json to_json() const;  // every field, for /server_info
};

// Registers the flags on `app` (the `serve` subcommand).
void add_server_flags(CLI::App& app, ServerArgs& args);

}  // namespace pdserve::server
