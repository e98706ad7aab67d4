// Rotary position embedding: default and YaRN frequencies, interleaved-pair rotation. x is f32 on
// the CPU; device tensors may also be bf16 (angles and products in f32).
#pragma once

#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace pdserve::ops {

struct RopeParams {
  int64_t rotary_dim = 64;   // qk_rope_head_dim
  double theta = 10000.0;
  std::string type = "default";  // "default" or "yarn"
  // YaRN only:
  double factor = 1.0;
  double original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0 = unset
  double mscale_all_dim = 0.0;  // 0 = unset
  double attention_factor = 0.0;  // 0 = unset (derived as HF does)
  bool truncate = true;
};

struct RopeTable {
  std::vector<float> inv_freq;  // rotary_dim / 2 entries, computed in f32 as HF does
  float attention_factor = 1.0f;  // multiplies cos and sin
};

// inv_freq and attention factor exactly as transformers 5.17 computes them (model-spec §2.4).
RopeTable make_rope_table(const RopeParams& p);

// yarn_get_mscale(scale, mscale) = 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1.
double yarn_get_mscale(double scale, double mscale);

// Rotates, in place, x[t, h, offset + 2i] and x[t, h, offset + 2i + 1] by angle positions[t] *
// inv_freq[i] (pairs stay in place: GPT-J / DeepSeek convention; HF's de-interleaved output is a
// permutation of this that leaves every q.k product unchanged). x: [T, H, D] f32 with last dim
// contiguous (rows may be strided); positions: [T] i32. cos/sin are computed in f32 from
// (float)position * inv_freq and multiplied by attention_factor.
void apply_rope_interleaved(Tensor& x, int64_t offset, const Tensor& positions, const RopeTable& table);

}  // namespace pdserve::ops
