// config.json parsing (model::parse_model_config), both the Hub and the transformers-5 layout,
// and the derived values every loader computes from an accepted config.
#include <cmath>
#include <cstdlib>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto cfg = pdserve::model::parse_model_config(std::string(pdserve::fuzz::as_view(data, size)), "fuzz/config.json");
  if (!cfg) {
    if (cfg.error().message().empty()) std::abort();
    return 0;
  }
  // An accepted config must give a usable model shape (the loaders divide and allocate by these).
  if (cfg->hidden_size <= 0 || cfg->num_hidden_layers <= 0 || cfg->vocab_size <= 0 || cfg->num_attention_heads <= 0)
    std::abort();
  auto dims = cfg->mla_dims();
  auto gate = cfg->gate_params();
  const float scale = cfg->softmax_scale();
  (void)dims;
  (void)gate;
  if (!std::isfinite(scale)) std::abort();
  for (int64_t layer = 0; layer < cfg->num_hidden_layers && layer < 4; ++layer) (void)cfg->is_moe_layer(layer);
  return 0;
}
