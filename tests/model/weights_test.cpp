// Dummy weights written as a real checkpoint and read back give the same model, bit for bit; the
// loader skips MTP layers and refuses inconsistent fp8 scales.
#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>

#include "model/deepseek_v3.h"
#include "model/dummy_weights.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace fs = std::filesystem;

namespace pdserve::model {
namespace {

ModelConfig small_config(bool fp8) {
  auto cfg = load_model_config(std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3");
  EXPECT_TRUE(cfg.has_value()) << cfg.error().message();
  ModelConfig c = *cfg;
  c.vocab_size = 300;  // keep files small
  if (fp8) c.quantization = FP8QuantConfig{};
  return c;
}

class WeightsTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pdserve_weights_" + std::to_string(::getpid()) + (GetParam() ? "_fp8" : "_bf16"));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Tensor last_logits(const DeepseekV3Model& m) {
    auto pool = m.make_kv_pool(64, 16);
    std::vector<SequenceInput> batch(2);
    batch[0].tokens = {1, 5, 9, 200, 7};
    batch[1].tokens = {3};
    for (auto& s : batch) EXPECT_TRUE(pool->reserve(s.page_table, 0, static_cast<int64_t>(s.tokens.size())).has_value());
    auto r = m.forward(batch, *pool);
    EXPECT_TRUE(r.has_value());
    return *r;
  }

  fs::path dir_;
};

TEST_P(WeightsTest, DummyCheckpointRoundTripsExactly) {
  const ModelConfig cfg = small_config(GetParam());
  ModelWeights w = make_dummy_weights(cfg, 42);
  auto tensors = checkpoint_tensors(cfg, w);
  EXPECT_EQ(tensors.count("model.layers.3.mlp.experts.15.down_proj.weight"), 1u);
  EXPECT_EQ(tensors.count("model.layers.0.self_attn.q_b_proj.weight_scale_inv"), GetParam() ? 1u : 0u);
  // An MTP layer (model.layers.{num_hidden_layers}) rides along and must be skipped.
  tensors["model.layers.4.eh_proj.weight"] = Tensor::empty({4, 8}, DType::kBF16);
  ASSERT_TRUE(write_safetensors(dir_ / "model.safetensors", tensors).has_value());
  auto ckpt = Checkpoint::open(dir_);
  ASSERT_TRUE(ckpt.has_value()) << ckpt.error().message();
  auto loaded = load_checkpoint_weights(*ckpt, cfg);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().message();
  EXPECT_EQ(loaded->layers[0].attn.q_a_proj.weight.dtype(), GetParam() ? DType::kF8E4M3 : DType::kBF16);

  auto a = DeepseekV3Model::from_weights(cfg, std::move(w));
  auto b = DeepseekV3Model::from_weights(cfg, std::move(*loaded));
  Tensor la = last_logits(*a), lb = last_logits(*b);
  ASSERT_EQ(la.numel(), lb.numel());
  for (int64_t i = 0; i < la.numel(); ++i) ASSERT_EQ(la.data<float>()[i], lb.data<float>()[i]) << i;
  // Dummy activations stay finite and non-trivial.
  double sq = 0;
  for (int64_t i = 0; i < la.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(la.data<float>()[i]));
    sq += la.data<float>()[i] * la.data<float>()[i];
  }
  EXPECT_GT(sq, 1e-3);
}

TEST_P(WeightsTest, InconsistentScalesAreRefused) {
  const ModelConfig cfg = small_config(GetParam());
  auto tensors = checkpoint_tensors(cfg, make_dummy_weights(cfg, 1));
  const std::string name = "model.layers.1.self_attn.o_proj.weight";
  if (GetParam()) {
    tensors[name + "_scale_inv"] = Tensor::empty({1, 1}, DType::kF32);  // wrong block grid
  } else {
    tensors[name + "_scale_inv"] = Tensor::empty({2, 1}, DType::kF32);  // bf16 weights have none
  }
  ASSERT_TRUE(write_safetensors(dir_ / "model.safetensors", tensors).has_value());
  auto ckpt = Checkpoint::open(dir_);
  ASSERT_TRUE(ckpt.has_value());
  auto loaded = load_checkpoint_weights(*ckpt, cfg);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_NE(loaded.error().message().find(name + "_scale_inv"), std::string::npos) << loaded.error().message();
}

TEST_P(WeightsTest, MissingScaleIsRefused) {
  if (!GetParam()) GTEST_SKIP() << "only fp8 weights have scales";
  const ModelConfig cfg = small_config(true);
  auto tensors = checkpoint_tensors(cfg, make_dummy_weights(cfg, 1));
  tensors.erase("model.layers.2.mlp.experts.3.up_proj.weight_scale_inv");
  ASSERT_TRUE(write_safetensors(dir_ / "model.safetensors", tensors).has_value());
  auto ckpt = Checkpoint::open(dir_);
  ASSERT_TRUE(ckpt.has_value());
  auto loaded = load_checkpoint_weights(*ckpt, cfg);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_NE(loaded.error().message().find("has no 'model.layers.2.mlp.experts.3.up_proj.weight_scale_inv'"), std::string::npos)
      << loaded.error().message();
}

// GPU EP ranks make their own slice of the dummy routed experts (make_dummy_experts): it must be
// the very weights make_dummy_weights gives, or EP and one-GPU runs of a dummy model would differ.
TEST_P(WeightsTest, DummyExpertSlicesEqualTheWholeModelsExperts) {
  const ModelConfig cfg = small_config(GetParam());
  const ModelWeights all = make_dummy_weights(cfg, 42);
  const ModelWeights without = make_dummy_weights(cfg, 42, /*routed_experts=*/false);
  EXPECT_FALSE(all.dummy_experts_seed.has_value());
  ASSERT_EQ(without.dummy_experts_seed.value_or(0), 42u);
  auto same_bytes = [](const Tensor& a, const Tensor& b) {
    return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
  };
  auto same_weight = [&](const Weight& a, const Weight& b) {
    return same_bytes(a.weight, b.weight) && a.scale_inv.defined() == b.scale_inv.defined() &&
           (!a.scale_inv.defined() || same_bytes(a.scale_inv, b.scale_inv));
  };
  int moe_layers = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const auto& full = all.layers[static_cast<size_t>(l)];
    EXPECT_TRUE(same_weight(full.attn.o_proj, without.layers[static_cast<size_t>(l)].attn.o_proj)) << "layer " << l;
    if (!full.is_moe) continue;
    ++moe_layers;
    const auto& m = without.layers[static_cast<size_t>(l)].moe;
    EXPECT_TRUE(m.experts.empty()) << "layer " << l;
    EXPECT_TRUE(same_weight(full.moe.router, m.router)) << "layer " << l;
    EXPECT_TRUE(same_weight(full.moe.shared.down_proj, m.shared.down_proj)) << "layer " << l;
    // Slices as four ranks would make them.
    const int64_t E = cfg.n_routed_experts, per = E / 4;
    for (int64_t r = 0; r < 4; ++r) {
      const auto slice = make_dummy_experts(cfg, 42, l, r * per, (r + 1) * per);
      ASSERT_EQ(static_cast<int64_t>(slice.size()), per);
      for (int64_t i = 0; i < per; ++i) {
        const auto& want = full.moe.experts[static_cast<size_t>(r * per + i)];
        const auto& got = slice[static_cast<size_t>(i)];
        EXPECT_TRUE(same_weight(want.gate_proj, got.gate_proj) && same_weight(want.up_proj, got.up_proj) &&
                    same_weight(want.down_proj, got.down_proj))
            << "layer " << l << " expert " << r * per + i;
      }
    }
  }
  EXPECT_GT(moe_layers, 0);
  // A model without its routed experts refuses a forward that needs them, cleanly.
  auto m = DeepseekV3Model::from_weights(cfg, make_dummy_weights(cfg, 42, false));
  auto pool = m->make_kv_pool(64, 16);
  std::vector<SequenceInput> batch(1);
  batch[0].tokens = {1, 2, 3};
  ASSERT_TRUE(pool->reserve(batch[0].page_table, 0, 3).has_value());
  auto r = m->forward(batch, *pool);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("routed experts were not loaded"), std::string::npos) << r.error().message();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, WeightsTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? std::string("fp8") : std::string("bf16"); });

}  // namespace
}  // namespace pdserve::model
