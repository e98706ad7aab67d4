// `pdserve generate`: offline batched generation from token ids (tests, debugging, the main job).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/status.h"
#include "model/deepseek_v3.h"
#include "model/deepseek_v3_gpu.h"
#include "ops/sampling.h"

namespace pdserve::model {

struct GenerateOptions {
  std::filesystem::path model_path;
  std::string load_format = "auto";
  std::filesystem::path input_ids_file;
  std::filesystem::path output_json;
  int64_t max_new_tokens = 16;
  ops::SamplingParams sampling;  // temperature 0 = greedy
  uint64_t seed = 0;
  bool return_logits = false;
  bool ignore_eos = false;
  int64_t page_size = 16;
  std::string device = "auto";  // auto (cuda when a GPU is visible) | cuda | cpu
};

struct GeneratedSequence {
  std::vector<int32_t> output_ids;
  std::vector<float> prompt_last_logits;  // only with return_logits
};

struct GenerateStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// Reads a JSON list of prompts (each a non-empty list of token ids). Errors name the file and
// the offending prompt/position.
Result<std::vector<std::vector<int32_t>>> read_prompts(const std::filesystem::path& file, int64_t vocab_size);

// Runs all prompts as one batch: one prefill forward, then one decode forward per step for the
// sequences still running. Every sequence has its own generator seeded with seed + index. A
// sequence stops at max_new_tokens or, unless ignore_eos, after emitting eos_token_id. With `gpu`
// the forwards run there (page ids still come from a host pool of the same size).
Result<std::vector<GeneratedSequence>> generate(const DeepseekV3Model& model,
                                                const std::vector<std::vector<int32_t>>& prompts,
                                                const GenerateOptions& opts, GenerateStats* stats,
                                                DeepseekV3GpuModel* gpu = nullptr);
// KV tokens generate() needs for these prompts (whole pages per sequence).
int64_t generate_cache_tokens(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& opts);

// Registers the subcommand's flags; the returned callback runs it (exit code).
std::function<int()> add_generate_command(CLI::App& root);

}  // namespace pdserve::model
