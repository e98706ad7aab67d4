// What a scheduler needs from a model: a forward over sequences whose KV lives in paged storage
// the runner owns. The real runner wraps DeepseekV3Model + LatentKvPool; a no-op runner lets the
// scheduler be tested and benchmarked without model cost.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/deepseek_v3.h"
#include "model/deepseek_v3_gpu.h"

namespace pdserve::scheduler {

// Where a runner keeps its KV, for PD transfers (SGLang's kv_data_ptrs / item_lens): one buffer
// per layer, page p of layer l at layer_ptrs[l] + p * bytes_per_token * page_size.
struct KvBufferView {
  std::vector<void*> layer_ptrs;
  int64_t bytes_per_token = 0;  // per layer
  int64_t page_size = 0;
  int64_t num_pages = 0;
  std::string dtype;            // "f32", "bf16", ...
  bool on_device = false;       // GPU memory (cuda-ipc) or host memory (tcp)
};

// What every rank of an expert-parallel group learns before a pass (SGLang's prepare_mlp_sync_batch):
// gathered over the group, so the same on every rank.
struct GroupStep {
  int64_t max_tokens = 0;   // most new tokens any rank runs in this pass (0: nobody runs one)
  bool any_extend = false;  // some rank runs a prefill/extend batch
  bool any_awake = false;   // some rank has queued or running work (0 tokens may mean held or blocked)
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t num_pages() const = 0;
  virtual int64_t page_size() const = 0;
  virtual const char* name() const = 0;
  // Logits f32: one row per sequence (its last new token), or one per new token with all_logits.
  virtual Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) = 0;
  // The KV buffers (empty when the runner keeps none, e.g. NoopRunner).
  virtual KvBufferView kv_buffers() { return {}; }
  // Whether the last forward replayed a CUDA graph (the "cuda graph: True" of the decode log line).
  virtual bool last_forward_used_graph() const { return false; }
  // Runners that can draw the next token where the logits are (the GPU) return true and implement
  // forward_sample: one token per sequence, only the ids cross to the host. The scheduler uses it
  // for batches that need nothing else from the logits (no logprobs, no penalties).
  virtual bool samples_on_device() const { return false; }
  virtual Result<std::vector<int32_t>> forward_sample(const std::vector<model::SequenceInput>& /*batch*/,
                                                      const std::vector<model::RowSampling>& /*rows*/) {
    return make_error(ErrorCode::kUnsupported, "{} does not sample on the device", name());
  }
  // Makes the following forwards write each MoE layer's chosen experts into *trace (nullptr: off),
  // for the expert distribution recorder. Returns false if this runner cannot report routing.
  virtual bool set_routing_trace(model::RoutingTrace* /*trace*/) { return false; }
  // The same for per-layer expert counts (all the recorder needs outside per_token mode; a GPU
  // runner reports them from its CUDA graphs, while a routing trace forces eager passes).
  virtual bool set_expert_counts(model::ExpertCounts* /*counts*/) { return false; }
  // Expert parallelism: the group's facts before each pass (real or idle), and a pass without
  // tokens of this rank's own so that its peers' token exchanges complete. No-ops for runners that
  // hold every expert.
  virtual void begin_group_step(const GroupStep& /*step*/) {}
  virtual Status idle_forward() { return ok_status(); }
};

// DeepSeek-V3 on its paged latent cache.
class DeepseekV3Runner final : public ModelRunner {
 public:
  // `routed`: this rank's share of the experts under expert parallelism (nullptr: all local).
  DeepseekV3Runner(std::shared_ptr<const model::DeepseekV3Model> model, int64_t max_total_tokens, int64_t page_size,
                   std::shared_ptr<model::RoutedExperts> routed = nullptr)
      : model_(std::move(model)), pool_(model_->make_kv_pool(max_total_tokens, page_size)), routed_(std::move(routed)) {}
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t num_pages() const override { return pool_->num_pages(); }
  int64_t page_size() const override { return pool_->page_size(); }
  const char* name() const override { return "DeepseekV3ForCausalLM"; }
  Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) override {
    model::ForwardOptions opts;
    opts.all_logits = all_logits;
    opts.routing = routing_;
    opts.expert_counts = counts_;
    opts.routed = routed_.get();
    return model_->forward(batch, *pool_, opts);
  }
  void begin_group_step(const GroupStep& step) override {
    if (routed_) routed_->begin_step(step.max_tokens, step.any_extend);
  }
  Status idle_forward() override { return routed_ ? model_->idle_forward(*routed_) : ok_status(); }
  bool set_routing_trace(model::RoutingTrace* trace) override {
    routing_ = trace;
    return true;
  }
  bool set_expert_counts(model::ExpertCounts* counts) override {
    counts_ = counts;
    return true;
  }
  KvBufferView kv_buffers() override {
    KvBufferView v;
    for (int64_t l = 0; l < pool_->num_layers(); ++l) v.layer_ptrs.push_back(pool_->layer(l).raw_data());
    v.page_size = pool_->page_size();
    v.num_pages = pool_->num_pages();
    v.dtype = "f32";
    v.bytes_per_token = pool_->latent_dim() * 4;
    return v;
  }

 private:
  std::shared_ptr<const model::DeepseekV3Model> model_;
  std::unique_ptr<model::LatentKvPool> pool_;
  std::shared_ptr<model::RoutedExperts> routed_;
  model::RoutingTrace* routing_ = nullptr;
  model::ExpertCounts* counts_ = nullptr;
};

// DeepSeek-V3 on one GPU; the cache lives on the device, sized by the model's memory planning.
class GpuRunner final : public ModelRunner {
 public:
  // device_sampling false keeps sampling on the host (PDSERVE_HOST_SAMPLING=1, for comparisons).
  // `routed`: this rank's share of the experts under expert parallelism (nullptr: all local).
  explicit GpuRunner(std::unique_ptr<model::DeepseekV3GpuModel> model, bool device_sampling = true,
                     std::shared_ptr<model::RoutedExperts> routed = nullptr)
      : model_(std::move(model)), device_sampling_(device_sampling), routed_(std::move(routed)) {
    if (routed_) model_->set_routed_experts(routed_);
  }
  void begin_group_step(const GroupStep& step) override {
    if (routed_) routed_->begin_step(step.max_tokens, step.any_extend);
  }
  Status idle_forward() override { return routed_ ? model_->idle_forward(*routed_) : ok_status(); }
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t num_pages() const override { return model_->num_pages(); }
  int64_t page_size() const override { return model_->page_size(); }
  const char* name() const override { return "DeepseekV3ForCausalLM"; }
  Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) override {
    model::ForwardOptions opts;
    opts.all_logits = all_logits;
    opts.routing = routing_;  // a traced pass runs eagerly (the model copies each layer's ids out)
    opts.expert_counts = counts_;
    return model_->forward(batch, opts);
  }
  bool set_routing_trace(model::RoutingTrace* trace) override {
    routing_ = trace;
    return true;
  }
  // Only a model created with count_experts (the server sets it when a recorder needs counts).
  bool set_expert_counts(model::ExpertCounts* counts) override {
    if (!model_->counts_experts()) return false;
    counts_ = counts;
    return true;
  }
  bool last_forward_used_graph() const override { return model_->last_forward_used_graph(); }
  bool samples_on_device() const override { return device_sampling_; }
  Result<std::vector<int32_t>> forward_sample(const std::vector<model::SequenceInput>& batch,
                                              const std::vector<model::RowSampling>& rows) override {
    return model_->forward_sample(batch, rows, routing_, counts_);
  }
  KvBufferView kv_buffers() override {
    const Tensor kv = model_->kv_cache();  // [layers, pages, page_size, latent] bf16
    KvBufferView v;
    for (int64_t l = 0; l < kv.size(0); ++l) v.layer_ptrs.push_back(kv.select(l).raw_data());
    v.page_size = kv.size(2);
    v.num_pages = kv.size(1);
    v.dtype = "bf16";
    v.bytes_per_token = kv.size(3) * 2;
    v.on_device = true;
    return v;
  }
  const model::DeepseekV3GpuModel& model() const { return *model_; }

 private:
  std::unique_ptr<model::DeepseekV3GpuModel> model_;
  bool device_sampling_ = true;
  std::shared_ptr<model::RoutedExperts> routed_;
  model::RoutingTrace* routing_ = nullptr;
  model::ExpertCounts* counts_ = nullptr;
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
