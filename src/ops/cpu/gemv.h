// Small-m products against bf16 / fp8 weights without a dequantized copy: each weight row is
// converted in registers and used for all m activation rows at once (AVX2 + FMA when the CPU has
// them), rows split over threads. At decode sizes this reads 2 (bf16) or 1 (fp8) bytes per weight
// instead of dequantizing into a scratch tile and reading it again through sgemm.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace pdserve::ops::cpu {

inline constexpr int64_t kSmallM = 8;

// y[i, :] = x[i, :] @ w^T for i < m <= kSmallM. Returns false (and does nothing) when the weight
// dtype or the CPU is not supported, so the caller falls back to the tiled path.
bool small_m_linear(const float* x, int64_t ldx, int64_t m, const Weight& w, float* y, int64_t ldy);

}  // namespace pdserve::ops::cpu
