// Benchmark datasets: exact token lengths (re-tokenized with the real DeepSeek-V3 tokenizer),
// SGLang's length bounds, random-ids' formula, ShareGPT filtering, clear errors.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "bench/dataset.h"

namespace pdserve::bench {
namespace {

std::shared_ptr<tokenizer::Tokenizer> tok() {
  static auto t = [] {
    auto r = tokenizer::Tokenizer::load(std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3");
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
    return r ? *r : nullptr;
  }();
  return t;
}

TEST(Dataset, RandomTextHasExactTokenLengths) {
  ASSERT_TRUE(tok());
  DatasetOptions o;
  o.name = "random";
  o.num_prompts = 40;
  o.random_input_len = 300;
  o.random_output_len = 20;
  o.random_range_ratio = 0.0;  // lengths spread over [1, 300]: many different exact targets
  auto ds = build_dataset(o, *tok());
  ASSERT_TRUE(ds) << ds.error().message();
  ASSERT_EQ(ds->size(), 40u);
  for (const auto& r : *ds) {
    auto ids = tok()->encode(r.prompt, false);
    ASSERT_TRUE(ids);
    EXPECT_EQ(static_cast<int64_t>(ids->size()), r.prompt_len) << r.prompt.substr(0, 80);
    EXPECT_GE(r.prompt_len, 1);
    EXPECT_LE(r.prompt_len, 300);
    EXPECT_GE(r.output_len, 1);
    EXPECT_LE(r.output_len, 20);
    EXPECT_TRUE(r.prompt_ids.empty());
  }
}

TEST(Dataset, RangeRatioOneGivesFixedLengthsAndTokenizePromptSendsIds) {
  DatasetOptions o;
  o.name = "random";
  o.num_prompts = 5;
  o.random_input_len = 1024;
  o.random_output_len = 7;
  o.random_range_ratio = 1.0;
  o.tokenize_prompt = true;
  auto ds = build_dataset(o, *tok());
  ASSERT_TRUE(ds) << ds.error().message();
  for (const auto& r : *ds) {
    EXPECT_EQ(r.prompt_len, 1024);
    EXPECT_EQ(r.output_len, 7);
    EXPECT_EQ(r.prompt_ids.size(), 1024u);
    EXPECT_TRUE(r.prompt.empty());
  }
}

TEST(Dataset, RandomLengthBoundsFollowSglang) {
  DatasetOptions o;
  o.num_prompts = 5000;
  o.random_input_len = 100;
  o.random_output_len = 10;
  o.random_range_ratio = 0.5;
  std::mt19937_64 rng(3);
  const auto lens = random_lengths(o, rng);
  int64_t in_min = 1 << 30, in_max = 0, out_min = 1 << 30, out_max = 0;
  for (auto [i, x] : lens) {
    in_min = std::min(in_min, i), in_max = std::max(in_max, i);
    out_min = std::min(out_min, x), out_max = std::max(out_max, x);
  }
  // randint(int(100 * 0.5), 100 + 1) and randint(int(10 * 0.5), 10 + 1): both ends reached.
  EXPECT_EQ(in_min, 50);
  EXPECT_EQ(in_max, 100);
  EXPECT_EQ(out_min, 5);
  EXPECT_EQ(out_max, 10);
}

TEST(Dataset, RandomIdsAreConsecutiveFromAnOffset) {
  DatasetOptions o;
  o.name = "random-ids";
  o.num_prompts = 3;
  o.random_input_len = 50;
  o.random_output_len = 4;
  o.random_range_ratio = 1.0;
  auto ds = build_dataset(o, *tok());
  ASSERT_TRUE(ds) << ds.error().message();
  for (const auto& r : *ds) {
    ASSERT_EQ(r.prompt_ids.size(), 50u);
    for (size_t j = 1; j < r.prompt_ids.size(); ++j)
      EXPECT_EQ(r.prompt_ids[j], (r.prompt_ids[j - 1] + 1) % tok()->vocab_size());
  }
}

TEST(Dataset, GeneratedSharedPrefixGroupsShareTheirSystemPrompt) {
  DatasetOptions o;
  o.name = "generated-shared-prefix";
  o.gsp_num_groups = 3;
  o.gsp_prompts_per_group = 4;
  o.gsp_system_prompt_len = 64;
  o.gsp_question_len = 16;
  o.gsp_output_len = 8;
  auto ds = build_dataset(o, *tok());
  ASSERT_TRUE(ds) << ds.error().message();
  ASSERT_EQ(ds->size(), 12u);
  std::map<std::string, int> prefixes;
  for (const auto& r : *ds) {
    EXPECT_EQ(r.prompt_len, 80);
    EXPECT_EQ(static_cast<int64_t>(tok()->encode(r.prompt, false)->size()), 80);
    auto ids = *tok()->encode(r.prompt, false);
    prefixes[*tok()->decode(std::span<const int32_t>(ids.data(), 64), false)]++;
  }
  EXPECT_EQ(prefixes.size(), 3u);
  for (auto& [p, n] : prefixes) EXPECT_EQ(n, 4);
}

TEST(Dataset, ShareGptUsesFirstTwoTurnsAndFilters) {
  const auto path = std::filesystem::temp_directory_path() / "pdserve_sharegpt_test.json";
  {
    std::ofstream f(path);
    f << R"([{"conversations": [{"from": "human", "value": "Tell me a story about a cat."},
                                {"from": "gpt", "value": "Once upon a time there was a cat who liked fish."}]},
             {"conversations": [{"from": "human", "value": "Hi"}]},
             {"conversations": [{"from": "human", "value": "What is two plus two?"},
                                {"from": "gpt", "value": "Four."}]}])";
  }
  DatasetOptions o;
  o.name = "sharegpt";
  o.path = path.string();
  o.num_prompts = 2;
  auto ds = build_dataset(o, *tok());
  ASSERT_TRUE(ds) << ds.error().message();
  ASSERT_EQ(ds->size(), 2u);
  for (const auto& r : *ds) {
    // Counted as SGLang does, with the tokenizer's BOS.
    EXPECT_EQ(r.prompt_len, static_cast<int64_t>(tok()->encode(r.prompt, true)->size()));
    EXPECT_GE(r.output_len, 2);
  }
  o.num_prompts = 3;  // only two usable conversations
  auto short_ds = build_dataset(o, *tok());
  ASSERT_FALSE(short_ds);
  EXPECT_NE(short_ds.error().message().find("only 2 usable"), std::string::npos);
  o.sharegpt_output_len = 5;
  o.num_prompts = 2;
  auto fixed = build_dataset(o, *tok());
  ASSERT_TRUE(fixed);
  for (const auto& r : *fixed) EXPECT_EQ(r.output_len, 5);
  std::filesystem::remove(path);
}

TEST(Dataset, ClearErrors) {
  DatasetOptions o;
  o.name = "sharegpt";
  auto r = build_dataset(o, *tok());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("--dataset-path"), std::string::npos);
  o.name = "mmmu";
  r = build_dataset(o, *tok());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("unknown --dataset-name 'mmmu'"), std::string::npos);
  o.name = "random";
  o.random_range_ratio = 1.5;
  EXPECT_FALSE(build_dataset(o, *tok()));
  o.random_range_ratio = 0;
  o.num_prompts = 0;
  EXPECT_FALSE(build_dataset(o, *tok()));
}

}  // namespace
}  // namespace pdserve::bench
