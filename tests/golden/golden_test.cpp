// Our CPU forward against Hugging Face transformers 5.17 (fp32, eager) on tiny random DeepSeek-V3
// checkpoints made by tests/golden/make_hf_golden.py: logits, expert choice and greedy text.
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/deepseek_v3.h"
#include "model/generate.h"

namespace pdserve::model {
namespace {

const std::string kData = std::string(PDSERVE_SOURCE_DIR) + "/tests/golden/data/";

// fp32 on both sides: differences come from summation order only (~1e-6). The bar is 1e-3.
constexpr double kMaxRelL2 = 1e-3;
// A routing or greedy choice is compared only where HF's margin is clearly above numeric noise.
constexpr double kClearRoutingMargin = 1e-4;
constexpr double kClearLogitMargin = 1e-3;

double rel_l2(const float* a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = kData + GetParam();
    std::ifstream f(dir_ + "/golden.json");
    ASSERT_TRUE(f) << dir_;
    f >> golden_;
    auto m = DeepseekV3Model::load(dir_, LoadOptions{});
    ASSERT_TRUE(m.has_value()) << m.error().message();
    model_ = std::move(*m);
    prompts_ = golden_["prompts"].get<std::vector<std::vector<int32_t>>>();
  }

  // Runs prompts as one batch (optionally in two chunks), returns last-token logits [B, V].
  Tensor run(const std::vector<std::vector<int32_t>>& prompts, ForwardOptions opts = {}, int64_t chunk = 0) {
    auto pool = model_->make_kv_pool(4096, 16);
    std::vector<SequenceInput> batch(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_TRUE(pool->reserve(batch[i].page_table, 0, static_cast<int64_t>(prompts[i].size())).has_value());
      batch[i].tokens = prompts[i];
    }
    if (chunk > 0) {
      // First pass: the first `chunk` tokens of every prompt longer than chunk; then the rest.
      std::vector<SequenceInput> first;
      for (auto& s : batch)
        if (static_cast<int64_t>(s.tokens.size()) > chunk) {
          SequenceInput f = s;
          f.tokens.resize(static_cast<size_t>(chunk));
          first.push_back(f);
        }
      auto r = model_->forward(first, *pool);
      EXPECT_TRUE(r.has_value());
      for (auto& s : batch)
        if (static_cast<int64_t>(s.tokens.size()) > chunk) {
          s.tokens.erase(s.tokens.begin(), s.tokens.begin() + chunk);
          s.prefix_len = chunk;
        }
    }
    auto logits = model_->forward(batch, *pool, opts);
    EXPECT_TRUE(logits.has_value()) << (logits ? "" : logits.error().message());
    return *logits;
  }

  std::string dir_;
  nlohmann::json golden_;
  std::unique_ptr<DeepseekV3Model> model_;
  std::vector<std::vector<int32_t>> prompts_;
};

TEST_P(GoldenTest, LastLogitsMatchHuggingFace) {
  Tensor logits = run(prompts_);
  const int64_t V = model_->config().vocab_size;
  for (size_t i = 0; i < prompts_.size(); ++i) {
    auto want = golden_["last_logits"][i].get<std::vector<float>>();
    ASSERT_EQ(static_cast<int64_t>(want.size()), V);
    const double err = rel_l2(logits.data<float>() + i * V, want);
    EXPECT_LT(err, kMaxRelL2) << "prompt " << i << " of length " << prompts_[i].size();
    RecordProperty("rel_l2_prompt_" + std::to_string(i), std::to_string(err));
    std::printf("[golden] %s prompt %zu (len %zu): relative L2 error %.3g\n", GetParam().c_str(), i, prompts_[i].size(), err);
  }
}

TEST_P(GoldenTest, AllPositionLogitsMatchHuggingFace) {
  const size_t p = golden_["all_logits"]["prompt"].get<size_t>();
  ForwardOptions opts;
  opts.all_logits = true;
  Tensor logits = run({prompts_[p]}, opts);
  const auto rows = golden_["all_logits"]["logits"].get<std::vector<std::vector<float>>>();
  ASSERT_EQ(static_cast<int64_t>(rows.size()), logits.size(0));
  for (size_t t = 0; t < rows.size(); ++t)
    EXPECT_LT(rel_l2(logits.data<float>() + t * logits.size(1), rows[t]), kMaxRelL2) << "position " << t;
}

TEST_P(GoldenTest, ChosenExpertsMatchWhereMarginIsClear) {
  size_t compared = 0, total = 0;
  for (size_t p = 0; p < prompts_.size(); ++p) {
    RoutingTrace trace;
    ForwardOptions opts;
    opts.routing = &trace;
    run({prompts_[p]}, opts);
    for (const auto& rec : golden_["routing"]) {
      if (rec["prompt"].get<size_t>() != p) continue;
      const int64_t layer = rec["layer"].get<int64_t>();
      const auto want = rec["experts"].get<std::vector<std::vector<int32_t>>>();
      const auto margin = rec["margin"].get<std::vector<double>>();
      ASSERT_TRUE(trace.experts.count(layer)) << "no routing recorded for layer " << layer;
      const auto& got = trace.experts.at(layer);
      ASSERT_EQ(got.size(), want.size());
      for (size_t t = 0; t < want.size(); ++t) {
        ++total;
        if (margin[t] < kClearRoutingMargin) continue;
        ++compared;
        EXPECT_EQ(got[t], want[t]) << "prompt " << p << " layer " << layer << " token " << t << " margin " << margin[t];
      }
    }
  }
  // The test is only meaningful if nearly every choice was clear.
  EXPECT_GT(compared, total * 95 / 100) << compared << " of " << total;
}

// The counts a recorder takes instead of a trace (a GPU runner reports them from CUDA graphs)
// are the traced choices counted, layer by layer.
TEST_P(GoldenTest, ExpertCountsCountTheTracedChoices) {
  RoutingTrace trace;
  ExpertCounts counts;
  ForwardOptions opts;
  opts.routing = &trace;
  opts.expert_counts = &counts;
  run(prompts_, opts);
  ASSERT_FALSE(trace.experts.empty());
  ASSERT_EQ(counts.per_layer.size(), trace.experts.size());
  for (const auto& [layer, rows] : trace.experts) {
    std::vector<int64_t> want(static_cast<size_t>(model_->config().n_routed_experts), 0);
    for (const auto& row : rows)
      for (int32_t e : row) ++want.at(static_cast<size_t>(e));
    ASSERT_TRUE(counts.per_layer.count(layer)) << "layer " << layer;
    EXPECT_EQ(counts.per_layer.at(layer), want) << "layer " << layer;
  }
}

TEST_P(GoldenTest, GreedyContinuationsMatchWhereMarginIsClear) {
  GenerateOptions opts;
  opts.max_new_tokens = 10;
  opts.ignore_eos = true;
  auto out = generate(*model_, prompts_, opts, nullptr);
  ASSERT_TRUE(out.has_value()) << out.error().message();
  size_t compared = 0;
  for (size_t p = 0; p < prompts_.size(); ++p) {
    const auto want = golden_["greedy"][p]["tokens"].get<std::vector<int32_t>>();
    const auto margins = golden_["greedy"][p]["margins"].get<std::vector<double>>();
    const auto& got = (*out)[p].output_ids;
    ASSERT_EQ(got.size(), want.size());
    for (size_t s = 0; s < want.size(); ++s) {
      // Past a near-tie the two runs may legitimately diverge; stop comparing there.
      if (margins[s] < kClearLogitMargin) break;
      ++compared;
      ASSERT_EQ(got[s], want[s]) << "prompt " << p << " step " << s << " margin " << margins[s];
    }
  }
  EXPECT_GE(compared, prompts_.size() * 5);
}

TEST_P(GoldenTest, AbsorbedPrefillEqualsExpandedForm) {
  ForwardOptions absorbed;
  absorbed.force_absorbed = true;
  const std::vector<std::vector<int32_t>> some = {prompts_[1], prompts_[2]};
  Tensor a = run(some), b = run(some, absorbed);
  for (int64_t i = 0; i < a.size(0); ++i) {
    std::vector<float> ref(a.data<float>() + i * a.size(1), a.data<float>() + (i + 1) * a.size(1));
    EXPECT_LT(rel_l2(b.data<float>() + i * b.size(1), ref), 1e-5);
  }
}

TEST_P(GoldenTest, ChunkedPrefillEqualsOnePass) {
  Tensor whole = run(prompts_), chunked = run(prompts_, {}, 17);
  for (size_t i = 0; i < prompts_.size(); ++i) {
    auto want = golden_["last_logits"][i].get<std::vector<float>>();
    EXPECT_LT(rel_l2(chunked.data<float>() + i * chunked.size(1), want), kMaxRelL2) << "prompt " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GoldenTest, ::testing::Values("tiny-bf16", "tiny-fp8", "tiny-noq-bf16"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace pdserve::model
