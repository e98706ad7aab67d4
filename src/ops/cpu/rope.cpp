#include "ops/cpu/rope.h"

#include <cmath>
#include <vector>

namespace pdserve::ops::cpu {

void apply_rope_interleaved(Tensor& x, int64_t offset, const Tensor& positions, const RopeTable& table) {
  const int64_t t_len = x.size(0), heads = x.size(1);
  const int64_t half = static_cast<int64_t>(table.inv_freq.size());
  const float af = table.attention_factor;
  thread_local std::vector<float> cs;
  cs.resize(static_cast<size_t>(2 * half));
  for (int64_t t = 0; t < t_len; ++t) {
    const int64_t off = t * positions.strides()[0];
    const int64_t pos = positions.dtype() == DType::kI64 ? positions.data<int64_t>()[off]
                                                         : positions.data<int32_t>()[off];
    // HF forms the angle as an f32 product and takes cos/sin in f32; doing the same keeps long
    // positions (where the f32 angle itself is inexact) bit-compatible with the reference.
    const float fpos = static_cast<float>(pos);
    for (int64_t i = 0; i < half; ++i) {
      const float ang = fpos * table.inv_freq[i];
      cs[2 * i] = std::cos(ang) * af;
      cs[2 * i + 1] = std::sin(ang) * af;
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x.data<float>() + t * x.strides()[0] + h * x.strides()[1] + offset;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[2 * i], b = v[2 * i + 1];
        const float c = cs[2 * i], s = cs[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = b * c + a * s;
      }
    }
  }
}

}  // namespace pdserve::ops::cpu
