// DeepSeek-V3 on one GPU: the weights uploaded once (fp8 stays fp8 with its block scales), a bf16
// paged latent cache sized from --mem-fraction-static, bf16 activations with an f32 residual stream,
// and CUDA graphs for decode batches (SGLang's cuda_graph_runner: one graph per captured batch
// size, a real batch padded to the next one).
//
// Numerics against the CPU backend (f32 everywhere): activations are rounded to bf16 between ops
// and the cache holds bf16, so logits agree to about 1e-2 relative, not bit for bit; greedy tokens
// agree wherever the top-2 margin exceeds that (tests/gpu/model_gpu_test.cpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/deepseek_v3.h"
#include "ops/sampling.h"

namespace pdserve::model {

struct GpuModelOptions {
  int device = 0;
  // Fraction of the GPU's memory for weights, activations, graphs and the KV cache (SGLang's
  // --mem-fraction-static); the cache gets what is left of it after the rest.
  double mem_fraction_static = 0.88;
  int64_t max_total_tokens = 0;  // > 0: cap on the cache (SGLang's --max-total-tokens)
  int64_t page_size = 1;
  int64_t context_length = 4096;
  // Largest new-token count of one forward (chunked prefill size / max prefill tokens): sizes the
  // activation arena up front so that prefill does not have to grow it.
  int64_t max_forward_tokens = 8192;
  // Decode batch sizes to capture, ascending; empty: no CUDA graphs (--disable-cuda-graph).
  std::vector<int64_t> cuda_graph_bs;
  // Expert parallelism: the routed experts live with the EP ranks' RoutedExperts hooks (each its
  // own slice), so this model does not upload them and every forward needs a hook
  // (set_routed_experts). create() captures no graphs then: capture_routed_graphs() does, once the
  // hook is set.
  bool routed_experts_elsewhere = false;
  // Models created after this one on the same GPU (EP ranks sharing it): the KV budget left after
  // this model's weights and activations is split so that each of them still finds room for its
  // own weights, activations and an equal share of cache.
  int later_models_on_device = 0;
  // Count each MoE layer's chosen experts on the device in every pass, CUDA graphs included, so
  // that ForwardOptions::expert_counts (the expert distribution recorder) costs no eager pass: one
  // small kernel per MoE layer and step. Off: asking for counts is an error.
  bool count_experts = false;
};

// SGLang's default capture list up to max_bs: 1, 2, 4, 8, 12, 16, ... (steps of 8 to 256, then 16).
std::vector<int64_t> default_cuda_graph_bs(int64_t max_bs);

// Facts for the log lines and /get_server_info.
struct GpuMemoryReport {
  double total_gb = 0, weights_gb = 0, kv_gb = 0, graph_gb = 0, avail_gb = 0;
  int64_t max_total_num_tokens = 0;
};

// One sequence's sampling for DeepseekV3GpuModel::forward_sample: the parameters and the key of
// its draw, so that a token is a pure function of (logits, params, seed, offset).
struct RowSampling {
  ops::SamplingParams params;
  uint64_t seed = 0;
  int64_t offset = 0;  // which draw of the seed's stream (tokens generated so far)
};

class DeepseekV3GpuModel {
 public:
  // Uploads `host`'s weights to GPU `opts.device`, sizes and allocates the cache, captures the
  // graphs. Logs SGLang's "Load weight", "KV Cache is allocated", "Capture cuda graph" lines.
  static Result<std::unique_ptr<DeepseekV3GpuModel>> create(std::shared_ptr<const DeepseekV3Model> host,
                                                            const GpuModelOptions& opts);
  ~DeepseekV3GpuModel();

  const ModelConfig& config() const;
  int64_t num_pages() const;
  int64_t page_size() const;
  const GpuMemoryReport& memory() const;
  // The device cache: [layers, pages, page_size, latent_dim] bf16 (for KV transfer backends).
  Tensor kv_cache() const;

  // As DeepseekV3Model::forward (same validation and errors), against this model's device cache;
  // returns host f32 logits. Pure decode batches (every sequence one new token after a prefix) of
  // at most the largest captured size replay a graph; everything else runs eagerly. A RoutingTrace
  // forces the eager path; ExpertCounts do not (they need count_experts).
  Result<Tensor> forward(const std::vector<SequenceInput>& batch, const ForwardOptions& opts = {});
  bool last_forward_used_graph() const;

  // As forward (same batches, graphs and errors), but samples each sequence's next token on the
  // device (ops::sample_batch) and copies back only the ids, not [B, vocab] f32 logits (0.5 MB a
  // row for DeepSeek-V3). One RowSampling per sequence. Greedy rows equal the argmax of forward's
  // logits; other rows draw with Philox keyed by (seed, offset), not with the host's generator.
  // `routing`: as ForwardOptions::routing (the pass then runs eagerly); `counts`: as
  // ForwardOptions::expert_counts (graphs stay on).
  Result<std::vector<int32_t>> forward_sample(const std::vector<SequenceInput>& batch,
                                              const std::vector<RowSampling>& rows, RoutingTrace* routing = nullptr,
                                              ExpertCounts* counts = nullptr);
  // Whether the model was created with count_experts (ForwardOptions::expert_counts works).
  bool counts_experts() const;

  // The routed-experts hook every forward uses when its ForwardOptions name none (expert
  // parallelism: the rank's GPU EP experts). Set before the first forward.
  void set_routed_experts(std::shared_ptr<RoutedExperts> routed);
  // Expert parallelism: captures the decode graphs of cuda_graph_bs (each size at most the hook's
  // tokens per exchange) with the hook set_routed_experts gave, so that decode passes the hook
  // calls graph safe replay them, exchanges included. Runs no exchange (its warm-ups use a hook
  // that sends nothing), so ranks capture one after another, before any of them serves. Logs
  // the "Capture cuda graph" lines. A no-op without sizes or with the experts local.
  Status capture_routed_graphs();
  // A pass with no tokens of this rank's own: each MoE layer's hook is called with zero rows, so
  // that the peers' token exchanges complete (as DeepseekV3Model::idle_forward).
  Status idle_forward(RoutedExperts& routed);

  // Runs the batch eagerly even when a graph would serve it (tests compare the two). With
  // graph_layout, a decode batch runs exactly what the graph of its padded size runs (masked
  // expert layout, the static buffers), so the logits must equal the replay's bit for bit.
  Result<Tensor> forward_eager(const std::vector<SequenceInput>& batch, const ForwardOptions& opts = {},
                               bool graph_layout = false);

  struct Impl;

 private:
  explicit DeepseekV3GpuModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Whether a CUDA device is usable here (false in a build without CUDA).
bool cuda_device_available();

}  // namespace pdserve::model
