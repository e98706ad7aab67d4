// The DeepSeek-V3 forward pass on the CPU reference backend (f32 compute on stored weights).
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "model/config.h"
#include "model/kv_pool.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace pdserve::model {

enum class LoadFormat { kAuto, kDummy };
Result<LoadFormat> parse_load_format(const std::string& s);  // "auto" | "safetensors" | "dummy"

struct LoadOptions {
  LoadFormat format = LoadFormat::kAuto;
  uint64_t dummy_seed = 0;
  std::string json_model_override_args;  // config.json overrides (load_model_config)
  // Dummy weights only: false leaves the routed experts for GPU EP ranks to make (ModelWeights).
  bool dummy_routed_experts = true;
};

// One sequence in a batch: its new tokens and where its cache lives.
struct SequenceInput {
  std::vector<int32_t> tokens;       // new tokens, at positions prefix_len .. prefix_len+n-1
  int64_t prefix_len = 0;            // tokens already in the cache
  std::vector<int32_t> page_table;   // must cover prefix_len + tokens.size() tokens
};

// Experts chosen per MoE layer for every new token of the batch (batch order), each row sorted.
struct RoutingTrace {
  std::map<int64_t, std::vector<std::vector<int32_t>>> experts;
};

// How many of the pass's (token, top-k) slots chose each logical expert, per MoE layer: all the
// expert distribution recorder needs outside per_token mode. Unlike a RoutingTrace, a CUDA graph
// can report it (the GPU model counts on the device inside its graphs), so recording does not
// force eager passes.
struct ExpertCounts {
  std::map<int64_t, std::vector<int64_t>> per_layer;  // MoE layer -> [n_routed_experts]
};

// The routed half of each MoE layer when it is computed elsewhere than on this rank's own weights:
// expert parallelism (moe/ep_model_experts.h) sends the tokens to the ranks holding their experts.
// The model runs the gate and the shared expert on its own tokens and hands over the rest.
class RoutedExperts {
 public:
  virtual ~RoutedExperts() = default;
  // x [n, hidden] f32 and the gate's choice (ids [n, top_k] i32 logical experts, weights [n, top_k]
  // f32); adds the routed experts' weighted sum into out [n, hidden]. n may be 0 (an idle rank's
  // pass: its peers' exchanges still need it). Called for every MoE layer in layer order.
  virtual Status forward(int64_t layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                         Tensor& out) = 0;
  // Before each pass (real or idle): facts gathered over the whole group, the same on every rank,
  // from which an implementation picks how tokens travel in this pass (every rank the same way).
  virtual void begin_step(int64_t group_max_tokens, bool group_extends) = 0;
  // Before capturing a CUDA graph of a decode pass of `tokens` tokens per rank: the exchange a
  // replay will make, set up as begin_step(tokens, false) does, without counting as a group step
  // (captures are not passes of the group; an implementation that follows the group's steps, as
  // online rebalancing does, must not see them).
  virtual void begin_capture(int64_t tokens) { begin_step(tokens, false); }
  // CUDA graphs (GPU EP decode). Whether the pass begun by begin_step may replay a graph captured
  // with this hook: true only for an implementation whose forward has no host synchronisation and
  // makes, in this pass, exactly the calls it made while being captured.
  virtual bool graph_safe_pass() const { return false; }
  // Around each replay: before (host work the captured calls skipped, e.g. meeting the peers the
  // first time) and after, once the stream is synchronised (the report of the exchanges, which a
  // replay cannot return otherwise).
  virtual Status before_replay() { return ok_status(); }
  virtual Status after_replay() { return ok_status(); }
};

struct ForwardOptions {
  bool all_logits = false;         // logits of every new token instead of each sequence's last
  bool force_absorbed = false;     // use the absorbed MLA form for prefill too (tests)
  RoutingTrace* routing = nullptr;
  ExpertCounts* expert_counts = nullptr;  // filled for every MoE layer of the pass
  RoutedExperts* routed = nullptr;  // nullptr: every expert is local
};

// The CPU reference blocks (f32): a gated MLP, and the routed experts for given routing (ids,
// weights [n, top_k]) plus the shared expert. Public so that other implementations (EP MoE) are
// tested against the very code the model runs.
Tensor mlp_forward(const MlpWeights& m, const Tensor& x);
Tensor moe_experts_forward(const MoeWeights& m, const Tensor& x, const Tensor& ids, const Tensor& weights);

// The checks every backend's forward makes: non-empty batch and sequences, page tables covering
// prefix + new tokens with pages inside [0, num_pages), token ids inside the vocabulary.
Status validate_batch(const ModelConfig& cfg, const std::vector<SequenceInput>& batch, int64_t num_pages,
                      int64_t page_size);
// validate_batch for a rank under expert parallelism: a refused batch still runs `idle_pass` (the
// model's idle_forward), or the peers would wait in their token exchanges until the timeout.
// Without a hook (idle_pass empty) the same as validate_batch.
Status validate_batch_or_idle(const ModelConfig& cfg, const std::vector<SequenceInput>& batch, int64_t num_pages,
                              int64_t page_size, const std::function<Status()>& idle_pass);

class DeepseekV3Model {
 public:
  // Loads config.json from `dir` and weights as `opts` says. kAuto reads safetensors and fails with
  // a hint when there are none.
  static Result<std::unique_ptr<DeepseekV3Model>> load(const std::filesystem::path& dir, const LoadOptions& opts);
  static std::unique_ptr<DeepseekV3Model> from_weights(ModelConfig cfg, ModelWeights w);

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }

  // A pool sized for `max_tokens` tokens of cache over all layers.
  std::unique_ptr<LatentKvPool> make_kv_pool(int64_t max_tokens, int64_t page_size) const;

  // Runs new tokens of several sequences as one batch, writes their latents into the cache and
  // returns f32 logits: [num_sequences, vocab] (last token of each), or [total_new_tokens, vocab]
  // with all_logits. Sequences with one new token and a prefix use the absorbed decode form;
  // others the expanded prefill form. Errors for ids out of range or uncovered page tables.
  // With opts.routed, a batch that fails validation still runs an idle pass (idle_forward) before
  // the error returns, so that the rank's peers are not left waiting in their exchanges.
  Result<Tensor> forward(const std::vector<SequenceInput>& batch, LatentKvPool& pool,
                         const ForwardOptions& opts = {}) const;

  // A pass without tokens (SGLang's idle batch under expert parallelism): every MoE layer's routed
  // part with n = 0, in layer order, so that a rank with no requests takes part in its peers'
  // token exchanges.
  Status idle_forward(RoutedExperts& routed) const;

 private:
  DeepseekV3Model(ModelConfig cfg, ModelWeights w) : cfg_(std::move(cfg)), w_(std::move(w)) {}
  Tensor attention(int64_t layer, const Tensor& x, const std::vector<SequenceInput>& batch,
                   const Tensor& positions, LatentKvPool& pool, const ForwardOptions& opts) const;
  Result<Tensor> moe(int64_t layer, const Tensor& x, const ForwardOptions& opts) const;

  ModelConfig cfg_;
  ModelWeights w_;
  ops::RopeTable rope_;
  float softmax_scale_ = 1.0f;
};

}  // namespace pdserve::model
