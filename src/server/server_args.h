// `pdserve serve` flags, with SGLang's names, defaults and meanings (sglang-spec §1.3).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "base/status.h"

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
  double mem_fraction_static = 0.0;  // GPU backend only; accepted and reported on CPU
  uint64_t random_seed = 0;
  double watchdog_timeout = 300;
  bool skip_server_warmup = false;
  bool trust_remote_code = false;  // accepted for command-line compatibility; nothing is executed
  int64_t dummy_seed = 0;
  int64_t max_body_bytes = 64 << 20;

  // Fills derived defaults from the model: context length, KV size, running-request cap.
  // `bytes_per_token` is the KV cache size of one token over all layers.
  Status resolve(int64_t model_context_length, int64_t bytes_per_token);
  nlohmann::json to_json() const;  // every field, for /server_info
};

// Registers the flags on `app` (the `serve` subcommand).
void add_server_flags(CLI::App& app, ServerArgs& args);

}  // namespace pdserve::server
