// CPU reference for the interleaved-pair rotary embedding.
#pragma once

#include "ops/rope.h"

namespace pdserve::ops::cpu {

void apply_rope_interleaved(Tensor& x, int64_t offset, const Tensor& positions, const RopeTable& table);

}  // namespace pdserve::ops::cpu
