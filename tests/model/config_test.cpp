#include "model/config.h"

#include <unistd.h>

#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace pdserve::model {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const char* kSource = "models/x/config.json";

// The published Hub config.json of DeepSeek-V3 (model-spec §1), minus auto_map.
const char* kHubConfig = R"({
  "architectures": ["DeepseekV3ForCausalLM"],
  "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 1,
  "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
  "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
  "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
  "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8,
  "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
  "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": true,
  "v_head_dim": 128, "vocab_size": 129280
})";

json hub() { return json::parse(kHubConfig); }

// What transformers 5.17 save_pretrained writes for the same model (model-spec §1.1).
json transformers5() {
  json j = hub();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j.erase("torch_dtype");
  j["rope_parameters"] = {{"rope_type", "yarn"},  {"rope_theta", 10000.0},
                          {"factor", 40.0},       {"original_max_position_embeddings", 4096},
                          {"beta_fast", 32.0},    {"beta_slow", 1.0},
                          {"mscale", 1.0},        {"mscale_all_dim", 1.0}};
  j["rope_interleave"] = true;
  j["head_dim"] = 64;
  j["qk_head_dim"] = 192;
  j["dtype"] = "bfloat16";
  return j;
}

Result<ModelConfig> parse(const json& j) { return parse_model_config(j.dump(), kSource); }

// Asserts an error with `code` whose message names the source and contains `what`.
void expect_error(const Result<ModelConfig>& r, ErrorCode code, const std::string& what,
                  const std::string& source = kSource) {
  ASSERT_FALSE(r.has_value()) << "expected an error containing: " << what;
  EXPECT_EQ(r.error().code(), code) << r.error().message();
  EXPECT_EQ(r.error().message().rfind(source + ": ", 0), 0u) << r.error().message();
  EXPECT_NE(r.error().message().find(what), std::string::npos) << r.error().message();
  EXPECT_EQ(r.error().message().find('\n'), std::string::npos) << r.error().message();
}

void expect_v3_values(const ModelConfig& c) {
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.intermediate_size, 18432);
  EXPECT_EQ(c.moe_intermediate_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.topk_method, "noaux_tc");
  EXPECT_EQ(c.scoring_func, "sigmoid");
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_TRUE(c.norm_topk_prob);
  ASSERT_TRUE(c.q_lora_rank.has_value());
  EXPECT_EQ(*c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(c.rope_interleave);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_id, 1);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.rope.rotary_dim, 64);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.factor, 40.0);
  EXPECT_DOUBLE_EQ(c.rope.original_max_position_embeddings, 4096.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 1.0);
  ASSERT_TRUE(c.quantization.has_value());
  EXPECT_EQ(c.quantization->block_rows, 128);
  EXPECT_EQ(c.quantization->block_cols, 128);
  EXPECT_EQ(c.quantization->activation_scheme, "dynamic");
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_TRUE(c.is_moe_layer(60));
  EXPECT_NEAR(c.softmax_scale(), 0.1352337788608801, 0.1352337788608801 * 1e-6);
}

TEST(ModelConfig, HubFormParsesToV3Values) {
  auto r = parse_model_config(kHubConfig, kSource);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  expect_v3_values(*r);

  ops::MlaDims d = r->mla_dims();
  EXPECT_EQ(d.num_heads, 128);
  EXPECT_EQ(d.qk_nope_head_dim, 128);
  EXPECT_EQ(d.qk_rope_head_dim, 64);
  EXPECT_EQ(d.v_head_dim, 128);
  EXPECT_EQ(d.kv_lora_rank, 512);
  EXPECT_EQ(d.latent_dim(), 576);
  ops::MoeGateParams g = r->gate_params();
  EXPECT_EQ(g.n_routed_experts, 256);
  EXPECT_EQ(g.n_group, 8);
  EXPECT_EQ(g.topk_group, 4);
  EXPECT_EQ(g.top_k, 8);
  EXPECT_TRUE(g.norm_topk_prob);
  EXPECT_FLOAT_EQ(g.routed_scaling_factor, 2.5f);
}

TEST(ModelConfig, Transformers5FormParsesEquivalently) {
  auto r = parse(transformers5());
  ASSERT_TRUE(r.has_value()) << r.error().message();
  expect_v3_values(*r);
}

TEST(ModelConfig, Transformers5DefaultRopeHasPlainScale) {
  json j = transformers5();
  j["rope_parameters"] = {{"rope_theta", 50000.0}, {"rope_type", "default"}};
  auto r = parse(j);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->rope.type, "default");
  EXPECT_DOUBLE_EQ(r->rope.theta, 50000.0);
  EXPECT_NEAR(r->softmax_scale(), 1.0 / std::sqrt(192.0), 1e-8);
}

TEST(ModelConfig, RopeParametersThetaWinsAndAbsentThetaDefaults) {
  json j = transformers5();
  j["rope_theta"] = 777.0;  // a stale top-level key must not override rope_parameters
  j["rope_parameters"]["rope_theta"] = 20000.0;
  auto r = parse(j);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_DOUBLE_EQ(r->rope.theta, 20000.0);

  json k = hub();
  k.erase("rope_theta");
  k.erase("rope_scaling");
  auto r2 = parse(k);
  ASSERT_TRUE(r2.has_value()) << r2.error().message();
  EXPECT_DOUBLE_EQ(r2->rope.theta, 10000.0);
  EXPECT_EQ(r2->rope.type, "default");
}

TEST(ModelConfig, QLoraRankNullOrAbsentMeansSingleQProj) {
  json j = hub();
  j["q_lora_rank"] = nullptr;
  auto r = parse(j);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_FALSE(r->q_lora_rank.has_value());
  j.erase("q_lora_rank");
  auto r2 = parse(j);
  ASSERT_TRUE(r2.has_value()) << r2.error().message();
  EXPECT_FALSE(r2->q_lora_rank.has_value());
}

TEST(ModelConfig, EosListTakesFirstAndArchitecturesAloneIdentifyTheModel) {
  json j = hub();
  j["eos_token_id"] = {7, 1};
  j.erase("model_type");
  auto r = parse(j);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->eos_token_id, 7);
  EXPECT_EQ(r->model_type, "deepseek_v3");
}

TEST(ModelConfig, MissingFieldIsAnError) {
  json j = hub();
  j.erase("hidden_size");
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'hidden_size' is missing");
}

TEST(ModelConfig, NegativeFieldIsAnError) {
  json j = hub();
  j["hidden_size"] = -3;
  auto r = parse(j);
  expect_error(r, ErrorCode::kInvalidArgument, "field 'hidden_size' must be a positive integer (got -3)");
  EXPECT_EQ(r.error().message(), "models/x/config.json: field 'hidden_size' must be a positive integer (got -3)");
}

TEST(ModelConfig, WrongTypeIsAnError) {
  json j = hub();
  j["num_attention_heads"] = "128";
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'num_attention_heads' must be a positive integer (got \"128\")");
  j = hub();
  j["kv_lora_rank"] = 512.5;
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'kv_lora_rank' must be a positive integer (got 512.5)");
  j = hub();
  j["norm_topk_prob"] = 1;
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'norm_topk_prob' must be true or false");
  j = hub();
  j["rope_scaling"]["factor"] = "forty";
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'rope_scaling.factor' must be a positive number");
}

TEST(ModelConfig, OddRopeDimIsAnError) {
  json j = hub();
  j["qk_rope_head_dim"] = 63;
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'qk_rope_head_dim' must be even");
}

TEST(ModelConfig, MoeFieldsRequiredOnlyWhenMoeLayersExist) {
  json j = hub();
  j.erase("moe_intermediate_size");
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'moe_intermediate_size' is missing");
  j = hub();
  j.erase("intermediate_size");
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'intermediate_size' is missing");
  j["first_k_dense_replace"] = 0;  // all layers MoE: no dense width needed
  auto r = parse(j);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_TRUE(r->is_moe_layer(0));
}

TEST(ModelConfig, ExpertsNotDivisibleByGroupsIsAnError) {
  json j = hub();
  j["n_routed_experts"] = 255;
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'n_routed_experts' must be divisible by n_group");
}

TEST(ModelConfig, GroupLimitsAreChecked) {
  json j = hub();
  j["topk_group"] = 9;
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'topk_group' must be at most n_group");
  j = hub();
  j["n_group"] = 256;
  j["topk_group"] = 4;
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'n_group' must leave at least 2 experts per group");
  j = hub();
  j["num_experts_per_tok"] = 129;  // 4 groups * 32 experts = 128
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'num_experts_per_tok' must be at most");
}

TEST(ModelConfig, UnknownRopeTypeIsUnsupported) {
  json j = hub();
  j["rope_scaling"]["type"] = "dynamic";
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'rope_scaling.type' value 'dynamic' is not supported");
  json k = transformers5();
  k["rope_parameters"]["rope_type"] = "longrope";
  expect_error(parse(k), ErrorCode::kUnsupported, "field 'rope_parameters.rope_type' value 'longrope'");
}

TEST(ModelConfig, RopeInterleaveFalseIsUnsupported) {
  json j = transformers5();
  j["rope_interleave"] = false;
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'rope_interleave' false is not supported");
}

TEST(ModelConfig, UnknownQuantMethodIsUnsupported) {
  json j = hub();
  j["quantization_config"]["quant_method"] = "awq";
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'quantization_config.quant_method' value 'awq'");
  j = hub();
  j["quantization_config"]["weight_block_size"] = {64, 64};
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'quantization_config.weight_block_size' [64, 64]");
  j = hub();
  j["quantization_config"]["fmt"] = "e5m2";
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'quantization_config.fmt' value 'e5m2'");
}

TEST(ModelConfig, UnsupportedRoutingAndActivation) {
  json j = hub();
  j["scoring_func"] = "softmax";
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'scoring_func' value 'softmax'");
  j = hub();
  j["topk_method"] = "group_limited_greedy";
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'topk_method' value 'group_limited_greedy'");
  j = hub();
  j["hidden_act"] = "gelu";
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'hidden_act' value 'gelu'");
  j = hub();
  j["model_type"] = "llama";
  j["architectures"] = {"LlamaForCausalLM"};
  expect_error(parse(j), ErrorCode::kUnsupported, "field 'model_type' value 'llama' is not supported");
}

TEST(ModelConfig, InconsistentDerivedDimsAreErrors) {
  json j = transformers5();
  j["qk_head_dim"] = 128;
  expect_error(parse(j), ErrorCode::kInvalidArgument, "field 'qk_head_dim' must be qk_nope_head_dim + qk_rope_head_dim");
}

TEST(ModelConfig, InvalidJsonIsCorruptWithPosition) {
  auto r = parse_model_config("{\"hidden_size\": 7168,,}", kSource);
  expect_error(r, ErrorCode::kCorrupt, "invalid JSON");
  EXPECT_NE(r.error().message().find("invalid JSON: parse error at line 1, column 22: syntax error"), std::string::npos) << r.error().message();
  expect_error(parse_model_config("[1, 2]", kSource), ErrorCode::kCorrupt, "top level must be a JSON object");
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("pdserve_config_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(ModelConfig, MissingFileIsNotFound) {
  TempDir tmp;
  fs::path missing = tmp.path / "nope" / "config.json";
  expect_error(load_model_config(missing), ErrorCode::kNotFound, "no such file", missing.string());
  // A folder without config.json names the file it looked for.
  expect_error(load_model_config(tmp.path), ErrorCode::kNotFound, "no such file", (tmp.path / "config.json").string());
}

TEST(ModelConfig, LoadFromFolderUsesThePathInMessages) {
  TempDir tmp;
  json j = hub();
  j["vocab_size"] = 0;
  std::ofstream(tmp.path / "config.json") << j.dump(2);
  expect_error(load_model_config(tmp.path), ErrorCode::kInvalidArgument, "field 'vocab_size' must be a positive integer (got 0)",
               (tmp.path / "config.json").string());
}

// --json-model-override-args: top-level keys replace config.json's (SGLang's dict update), the
// result is validated like the file itself, and a bad override fails naming the flag.
TEST(ModelConfig, JsonOverrideReplacesTopLevelFields) {
  const fs::path v3_dir = fs::path(PDSERVE_SOURCE_DIR) / "models" / "deepseek-v3";
  auto four = load_model_config(v3_dir, R"({"num_hidden_layers": 4, "n_routed_experts": 64})");
  ASSERT_TRUE(four.has_value()) << four.error().message();
  EXPECT_EQ(four->num_hidden_layers, 4);
  EXPECT_EQ(four->n_routed_experts, 64);
  EXPECT_EQ(four->hidden_size, 7168);  // untouched fields as in the file
  EXPECT_TRUE(four->quantization.has_value());
  for (const char* none : {"", "{}", " { } "}) {
    auto same = load_model_config(v3_dir, none);
    ASSERT_TRUE(same.has_value()) << none << ": " << same.error().message();
    EXPECT_EQ(same->num_hidden_layers, 61) << "override '" << none << "'";
  }
  // The merged config is checked like a file: its errors name the file and the flag.
  const std::string src = (v3_dir / "config.json").string() + " with --json-model-override-args";
  expect_error(load_model_config(v3_dir, R"({"num_hidden_layers": 0})"), ErrorCode::kInvalidArgument,
               "field 'num_hidden_layers'", src);
  for (const char* bad : {"[1, 2]", "4", "{\"num_hidden_layers\": "}) {
    auto r = load_model_config(v3_dir, bad);
    ASSERT_FALSE(r.has_value()) << bad;
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument) << r.error().message();
    EXPECT_EQ(r.error().message().rfind("--json-model-override-args", 0), 0u) << r.error().message();
  }
}

TEST(ModelConfig, RepoConfigsParse) {
  const fs::path models = fs::path(PDSERVE_SOURCE_DIR) / "models";
  auto v3 = load_model_config(models / "deepseek-v3");
  ASSERT_TRUE(v3.has_value()) << v3.error().message();
  expect_v3_values(*v3);

  auto tiny = load_model_config(models / "tiny-deepseek-v3" / "config.json");
  ASSERT_TRUE(tiny.has_value()) << tiny.error().message();
  EXPECT_EQ(tiny->vocab_size, 129280);
  EXPECT_EQ(tiny->hidden_size, 256);
  EXPECT_EQ(tiny->num_hidden_layers, 4);
  EXPECT_FALSE(tiny->is_moe_layer(1));
  EXPECT_TRUE(tiny->is_moe_layer(2));
  EXPECT_EQ(tiny->n_routed_experts, 16);
  EXPECT_EQ(tiny->gate_params().top_k, 4);
  EXPECT_EQ(tiny->q_lora_rank.value_or(0), 128);
  EXPECT_EQ(tiny->mla_dims().latent_dim(), 80);
  EXPECT_EQ(tiny->rope.type, "yarn");
  EXPECT_EQ(tiny->rope.rotary_dim, 16);
  EXPECT_FALSE(tiny->quantization.has_value());
  EXPECT_NEAR(tiny->softmax_scale(), std::pow(0.1 * std::log(40.0) + 1.0, 2) / std::sqrt(48.0), 1e-7);

  auto mini = load_model_config(models / "mini-deepseek-v3");
  ASSERT_TRUE(mini.has_value()) << mini.error().message();
  EXPECT_EQ(mini->hidden_size, 7168);
  EXPECT_EQ(mini->num_hidden_layers, 4);
  EXPECT_EQ(mini->first_k_dense_replace, 1);
  EXPECT_EQ(mini->n_routed_experts, 256);
  EXPECT_TRUE(mini->quantization.has_value());
  EXPECT_NEAR(mini->softmax_scale(), 0.1352337788608801, 0.1352337788608801 * 1e-6);
}

}  // namespace
}  // namespace pdserve::model
