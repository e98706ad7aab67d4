// What a scheduler needs from a model: a forward over sequences whose KV lives in paged storage
// the runner owns. The real runner wraps DeepseekV3Model + LatentKvPool; a no-op runner lets the
// scheduler be tested and benchmarked without model cost.
#pragma once

#include <memory>
#include <vector>

#include "base/status.h"
#include "model/deepseek_v3.h"

namespace pdserve::scheduler {

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t num_pages() const = 0;
  virtual int64_t page_size() const = 0;
  virtual const char* name() const = 0;
  // Logits f32: one row per sequence (its last new token), or one per new token with all_logits.
  virtual Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) = 0;
};

// DeepSeek-V3 on its paged latent cache.
class DeepseekV3Runner final : public ModelRunner {
 public:
  DeepseekV3Runner(std::shared_ptr<const model::DeepseekV3Model> model, int64_t max_total_tokens, int64_t page_size)
      : model_(std::move(model)), pool_(model_->make_kv_pool(max_total_tokens, page_size)) {}
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t num_pages() const override { return pool_->num_pages(); }
  int64_t page_size() const override { return pool_->page_size(); }
  const char* name() const override { return "DeepseekV3ForCausalLM"; }
  Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) override {
    model::ForwardOptions opts;
    opts.all_logits = all_logits;
    return model_->forward(batch, *pool_, opts);
  }

 private:
  std::shared_ptr<const model::DeepseekV3Model> model_;
  std::unique_ptr<model::LatentKvPool> pool_;
};

// Returns fixed logits that favour token (last input token + 1) % vocab: deterministic, costs
// almost nothing, so a benchmark measures the scheduler alone.
class NoopRunner final : public ModelRunner {
 public:
  NoopRunner(int64_t vocab_size, int64_t num_pages, int64_t page_size)
      : vocab_(vocab_size), pages_(num_pages), page_size_(page_size) {}
  int64_t vocab_size() const override { return vocab_; }
  int64_t num_pages() const override { return pages_; }
  int64_t page_size() const override { return page_size_; }
  const char* name() const override { return "noop"; }
  Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) override;

 private:
  int64_t vocab_, pages_, page_size_;
};

}  // namespace pdserve::scheduler
