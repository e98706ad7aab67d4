#include "model/generate.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "base/json.h"
#include "base/logging.h"

namespace pdserve::model {

Result<std::vector<std::vector<int32_t>>> read_prompts(const std::filesystem::path& file, int64_t vocab_size) {
  auto parsed = read_json_file(file);
  if (!parsed) return parsed.error();
  const nlohmann::json& j = *parsed;
  if (!j.is_array() || j.empty())
    return make_error(ErrorCode::kInvalidArgument, "{}: expected a non-empty JSON list of prompts (lists of token ids)",
                      file.string());
  std::vector<std::vector<int32_t>> prompts;
  for (size_t p = 0; p < j.size(); ++p) {
    const auto& item = j[p];
    if (!item.is_array()) return make_error(ErrorCode::kInvalidArgument, "{}: prompt {} is not a list of token ids", file.string(), p);
    if (item.empty()) return make_error(ErrorCode::kInvalidArgument, "{}: prompt {} is empty", file.string(), p);
    std::vector<int32_t> ids;
    for (size_t i = 0; i < item.size(); ++i) {
      const auto& v = item[i];
      if (!v.is_number_integer())
        return make_error(ErrorCode::kInvalidArgument, "{}: prompt {} position {} is not an integer token id", file.string(), p, i);
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id >= vocab_size)
        return make_error(ErrorCode::kInvalidArgument, "{}: prompt {} position {}: token id {} is out of range [0, {})",
                          file.string(), p, i, id, vocab_size);
      ids.push_back(static_cast<int32_t>(id));
    }
    prompts.push_back(std::move(ids));
  }
  return prompts;
}

int64_t generate_cache_tokens(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& opts) {
  int64_t cache_tokens = 0;
  for (const auto& p : prompts) {
    const int64_t total = static_cast<int64_t>(p.size()) + std::max<int64_t>(opts.max_new_tokens, 0);
    cache_tokens += (total + opts.page_size - 1) / opts.page_size * opts.page_size;
  }
  return std::max<int64_t>(cache_tokens, 1);
}

Result<std::vector<GeneratedSequence>> generate(const DeepseekV3Model& model,
                                                const std::vector<std::vector<int32_t>>& prompts,
                                                const GenerateOptions& opts, GenerateStats* stats,
                                                DeepseekV3GpuModel* gpu) {
  const auto& cfg = model.config();
  if (opts.max_new_tokens < 0) return make_error(ErrorCode::kInvalidArgument, "--max-new-tokens must be >= 0");
  for (const auto& p : prompts) {
    const int64_t total = static_cast<int64_t>(p.size()) + opts.max_new_tokens;
    if (total > cfg.max_position_embeddings)
      return make_error(ErrorCode::kInvalidArgument, "a prompt of {} tokens plus {} new tokens exceeds the context length {}",
                        p.size(), opts.max_new_tokens, cfg.max_position_embeddings);
  }
  auto pool = model.make_kv_pool(generate_cache_tokens(prompts, opts), opts.page_size);
  if (gpu && gpu->num_pages() < pool->num_pages())
    return make_error(ErrorCode::kInvalidArgument, "the GPU cache holds {} pages, these prompts need {}", gpu->num_pages(),
                      pool->num_pages());

  const size_t B = prompts.size();
  std::vector<GeneratedSequence> out(B);
  std::vector<SequenceInput> seqs(B);
  std::vector<std::mt19937_64> rngs;
  for (size_t i = 0; i < B; ++i) {
    seqs[i].tokens = prompts[i];
    PDSERVE_RETURN_IF_ERROR(pool->reserve(seqs[i].page_table, 0, static_cast<int64_t>(prompts[i].size()) + opts.max_new_tokens));
    rngs.emplace_back(opts.seed + i);
  }
  auto release_all = [&] {
    for (auto& s : seqs) pool->release(s.page_table);
  };

  using Clock = std::chrono::steady_clock;
  std::vector<bool> running(B, opts.max_new_tokens > 0);
  std::vector<size_t> active(B);
  for (size_t i = 0; i < B; ++i) active[i] = i;
  bool first = true;
  int64_t generated = 0;
  auto t0 = Clock::now();
  double prefill_s = 0;
  while (!active.empty()) {
    std::vector<SequenceInput> step;
    for (size_t i : active) step.push_back(seqs[i]);
    auto logits = gpu ? gpu->forward(step) : model.forward(step, *pool);
    if (!logits) {
      release_all();
      return logits.error();
    }
    const int64_t V = cfg.vocab_size;
    std::vector<size_t> next_active;
    for (size_t k = 0; k < active.size(); ++k) {
      const size_t i = active[k];
      const float* row = logits->data<float>() + static_cast<int64_t>(k) * V;
      if (first && opts.return_logits) out[i].prompt_last_logits.assign(row, row + V);
      seqs[i].prefix_len += static_cast<int64_t>(seqs[i].tokens.size());
      if (!running[i]) continue;
      const int32_t tok = ops::sample_token(row, V, opts.sampling, rngs[i]);
      out[i].output_ids.push_back(tok);
      ++generated;
      seqs[i].tokens = {tok};
      const bool done = static_cast<int64_t>(out[i].output_ids.size()) >= opts.max_new_tokens ||
                        (!opts.ignore_eos && tok == cfg.eos_token_id);
      if (done) {
        running[i] = false;
      } else {
        next_active.push_back(i);
      }
    }
    if (first) prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
    first = false;
    // The last sampled token needs no forward of its own.
    active = std::move(next_active);
  }
  const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  release_all();
  if (pool->used_pages() != 0) return make_error(ErrorCode::kInternal, "{} KV pages leaked", pool->used_pages());
  if (stats) {
    stats->generated_tokens = generated;
    for (const auto& p : prompts) stats->prompt_tokens += static_cast<int64_t>(p.size());
    stats->prefill_seconds = prefill_s;
    stats->decode_seconds = total_s - prefill_s;
  }
  return out;
}

namespace {

struct GenerateCli {
  GenerateOptions opts;
  std::string log_level = "info";
  uint64_t dummy_seed = 0;
  std::string json_model_override_args;
};

int run_generate_cli(GenerateCli& c) {
  try {
    log::init(c.log_level);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  auto fail = [](const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.message().c_str());
    return 1;
  };
  auto& o = c.opts;
  auto format = parse_load_format(o.load_format);
  if (!format) return fail(format.error());
  if (o.page_size <= 0) return fail(Error(ErrorCode::kInvalidArgument, "--page-size must be positive"));
  if (o.sampling.temperature < 0) return fail(Error(ErrorCode::kInvalidArgument, "--temperature must be >= 0"));
  if (!(o.sampling.top_p > 0 && o.sampling.top_p <= 1)) return fail(Error(ErrorCode::kInvalidArgument, "--top-p must be in (0, 1]"));
  if (!(o.sampling.min_p >= 0 && o.sampling.min_p <= 1)) return fail(Error(ErrorCode::kInvalidArgument, "--min-p must be in [0, 1]"));
  // Check the cheap inputs before loading weights, so a typo fails in milliseconds.
  auto config = load_model_config(o.model_path, c.json_model_override_args);
  if (!config) return fail(config.error());
  auto prompts = read_prompts(o.input_ids_file, config->vocab_size);
  if (!prompts) return fail(prompts.error());
  auto loaded = DeepseekV3Model::load(o.model_path, LoadOptions{*format, c.dummy_seed, c.json_model_override_args});
  if (!loaded) return fail(loaded.error());
  std::shared_ptr<const DeepseekV3Model> model = std::move(*loaded);
  std::unique_ptr<DeepseekV3GpuModel> gpu;
  if (o.device == "cuda" || (o.device == "auto" && cuda_device_available())) {
    GpuModelOptions go;
    go.page_size = o.page_size;
    go.max_total_tokens = generate_cache_tokens(*prompts, o);
    go.context_length = config->max_position_embeddings;
    int64_t longest = 1;
    for (const auto& p : *prompts) longest += static_cast<int64_t>(p.size());
    go.max_forward_tokens = longest;
    go.cuda_graph_bs = default_cuda_graph_bs(static_cast<int64_t>(prompts->size()));
    auto g = DeepseekV3GpuModel::create(model, go);
    if (!g) return fail(g.error());
    gpu = std::move(*g);
  }
  GenerateStats stats;
  std::vector<GeneratedSequence> seqs;
  try {
    auto r = generate(*model, *prompts, o, &stats, gpu.get());
    if (!r) return fail(r.error());
    seqs = std::move(*r);
  } catch (const std::exception& e) {
    return fail(Error(ErrorCode::kInternal, e.what()));
  }
  nlohmann::json j;
  j["outputs"] = nlohmann::json::array();
  for (const auto& s : seqs) {
    nlohmann::json item;
    item["output_ids"] = s.output_ids;
    if (o.return_logits) item["prompt_last_logits"] = s.prompt_last_logits;
    j["outputs"].push_back(std::move(item));
  }
  if (!o.output_json.empty()) {
    std::ofstream f(o.output_json);
    if (!f || !(f << j.dump() << "\n"))
      return fail(make_error(ErrorCode::kIo, "{}: cannot write the output file", o.output_json.string()));
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::string ids;
    for (int32_t t : seqs[i].output_ids) ids += (ids.empty() ? "" : " ") + std::to_string(t);
    std::printf("prompt %zu: output_ids [%s]\n", i, ids.c_str());
  }
  const double decode_tps = stats.decode_seconds > 0 ? (stats.generated_tokens - static_cast<int64_t>(seqs.size())) / stats.decode_seconds : 0;
  std::printf("prompts: %zu, prompt tokens: %lld, generated tokens: %lld, prefill: %.3f s (%.1f tok/s), decode: %.3f s (%.1f tok/s)\n",
              seqs.size(), static_cast<long long>(stats.prompt_tokens), static_cast<long long>(stats.generated_tokens),
              stats.prefill_seconds, stats.prefill_seconds > 0 ? stats.prompt_tokens / stats.prefill_seconds : 0.0,
              stats.decode_seconds, std::max(0.0, decode_tps));
  return 0;
}

}  // namespace

std::function<int()> add_generate_command(CLI::App& root) {
  auto cli = std::make_shared<GenerateCli>();
  CLI::App* app = root.add_subcommand("generate", "Load a model and generate from token-id prompts as one batch");
  auto& o = cli->opts;
  app->add_option("--model-path", o.model_path, "Model folder with config.json (and safetensors)")->required();
  app->add_option("--load-format", o.load_format, "auto | safetensors | dummy")->capture_default_str();
  app->add_option("--input-ids-file", o.input_ids_file, "JSON list of prompts, each a list of token ids")->required();
  app->add_option("--output-json", o.output_json, "Write {\"outputs\": [{\"output_ids\", \"prompt_last_logits\"}]} here");
  app->add_option("--max-new-tokens", o.max_new_tokens, "Tokens to generate per prompt")->capture_default_str();
  app->add_option("--temperature", o.sampling.temperature, "0 = greedy")->capture_default_str();
  app->add_option("--top-p", o.sampling.top_p)->capture_default_str();
  app->add_option("--top-k", o.sampling.top_k, "-1 = all")->capture_default_str();
  app->add_option("--min-p", o.sampling.min_p)->capture_default_str();
  app->add_option("--seed", o.seed, "Sampling seed (prompt i uses seed + i)")->capture_default_str();
  app->add_option("--dummy-seed", cli->dummy_seed, "Seed of --load-format dummy weights")->capture_default_str();
  app->add_option("--json-model-override-args", cli->json_model_override_args,
                  "JSON object replacing config.json fields, e.g. '{\"num_hidden_layers\": 4}'");
  app->add_flag("--return-logits", o.return_logits, "Include the fp32 logits of each prompt's last position");
  app->add_flag("--ignore-eos", o.ignore_eos, "Do not stop at the EOS token");
  app->add_option("--page-size", o.page_size, "KV cache page size in tokens")->capture_default_str();
  app->add_option("--log-level", cli->log_level)->capture_default_str();
  app->add_option("--device", o.device, "auto (cuda when a GPU is visible) | cuda | cpu")->capture_default_str()->check(
      CLI::IsMember({"auto", "cuda", "cpu"}));
  return [cli] { return run_generate_cli(*cli); };
}

}  // namespace pdserve::model
