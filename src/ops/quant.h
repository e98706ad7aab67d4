// FP8 quantization of activations, DeepSeek-V3 style (model-spec §4.2, `activation_scheme:
// dynamic`): per token, per group of 128 consecutive channels along K.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops {

// For each row r of x [M, K] (f32 or bf16, contiguous) and each group kb of 128 channels (the last
// group may be partial when K % 128 != 0):
//   amax = max(max |x[r, g]|, 1e-4);  s = amax / 448;  q[r, c] = e4m3(x[r, c] / s)
// with IEEE division and round-to-nearest-even, saturating to +-448 (dtype.h's f32_to_fp8e4m3).
// q: [M, K] fp8 e4m3, contiguous. scales: [ceil(K/128), M] f32, contiguous, i.e. scale(r, kb) is
// scales[kb][r] (M-major: the layout cuBLASLt's VEC128_32F mode and DeepGEMM read; the spec's
// [M, K/128] transposed). The CPU and CUDA versions produce the same bytes.
void quantize_fp8_per_token_group(const Tensor& x, Tensor& q, Tensor& scales);

}  // namespace pdserve::ops
