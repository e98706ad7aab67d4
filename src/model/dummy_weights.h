// `--load-format dummy`: deterministic random weights with the config's shapes and dtypes.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace pdserve::model {

// Every element is a pure function of (seed, tensor name, index), so the same seed gives the same
// model on any machine and thread count. Matrices are uniform in ±sqrt(3/fan_in) * gain (unit
// output variance for unit input, so activations stay O(1) through any depth: every sublayer
// reads an RMS-normalized input); norms are 1, the correction bias small. With a quantization
// config the projection and expert weights are fp8 with 128x128 block scales, as in the published
// checkpoints; otherwise bf16.
// routed_experts = false leaves every MoE layer's experts out (ModelWeights::dummy_experts_seed).
ModelWeights make_dummy_weights(const ModelConfig& cfg, uint64_t seed, bool routed_experts = true);

// Routed experts [begin, end) of MoE layer `layer`: bit for bit those of make_dummy_weights(cfg, seed).
std::vector<MlpWeights> make_dummy_experts(const ModelConfig& cfg, uint64_t seed, int64_t layer, int64_t begin, int64_t end);

}  // namespace pdserve::model
