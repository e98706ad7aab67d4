// `pdserve repro` (docs/repro.md): the published reproduction workflow (sglang-spec §1.2) on one
// machine, as real child processes of this binary — prefill and decode servers, the PD router, the
// benchmark client — then the slow-down fill, its release, a profile of the decode and the
// analyzer's per-GPU throughput report. Everything lands in --output-dir.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

namespace pdserve::launch {

struct ReproOptions {
  std::string model_path = "models/tiny-deepseek-v3";
  std::string load_format;  // empty: dummy when the folder has no *.safetensors, else auto
  std::string json_model_override_args = "{}";  // passed to both servers (config.json overrides)
  std::string device = "auto";
  std::string output_dir = "repro-out";
  int num_prompts = 32;
  int input_len = 64;
  int output_len = 256;
  int max_concurrency = 32;
  int prefill_dp_size = 1;
  int decode_dp_size = 1;
  // More `pdserve serve` flags for one side, as on a shell command line (launch/extra_args.h):
  // e.g. EP decode "--enable-dp-attention --moe-a2a-backend deepep --ep-num-redundant-experts 32".
  std::string prefill_extra_args, decode_extra_args;
  int target_running = 0;  // 0: min(num_prompts, max_concurrency)
  // How decode's batch is filled before the profile: "hold" (POST /hold_decode: no decode step
  // until #running-req reaches the target) or "slow-down" (SGLang's /slow_down fixed sleep).
  std::string fill = "hold";
  double slow_down_time = 1.0;  // seconds every decode batch sleeps during a slow-down fill
  int profile_steps = 5;
  double ready_timeout = 300;    // per server, seconds
  double fill_timeout = 120;
  double profile_timeout = 120;
  double bench_timeout = 600;
  double shutdown_grace = 10;
};

// Runs the workflow. 0 on success; 1 when a step failed (the message names the step and its log);
// 130 when interrupted by SIGINT/SIGTERM. No child process outlives the call.
int run_repro(const ReproOptions& options);

// Registers `repro`; the returned callback runs it and gives the exit code.
std::function<int()> add_repro_command(CLI::App& root);

}  // namespace pdserve::launch
