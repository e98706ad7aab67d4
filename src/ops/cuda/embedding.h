// CUDA embedding lookup: rows of a bf16 / f32 / f16 table, or of an fp8 table with DeepSeek's
// 128x128 block scales (value = fp8 * scale_inv[row / 128][col / 128] in f32), into f32 or bf16.
#pragma once

#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// out[i, :] = table[ids[i], :]; ids: [n] i32 or i64 on the device; out: [n, hidden] f32 or bf16,
// contiguous. The table lives on the device (Weight::to(Device::kCuda)).
//
// Out-of-range ids (< 0 or >= rows) cannot throw from a kernel: their output row is written as
// zeros, the table is never read out of bounds, and, when error_flag is given (a device i32
// tensor of one element that the caller zeroes beforehand), the kernel stores 1 into it. The kernel
// never clears the flag, so one flag can collect a whole forward pass and be read once at the end.
// ops::embedding on device tensors calls this without a flag.
void embedding(const Tensor& ids, const Weight& table, Tensor& out, Tensor* error_flag = nullptr);

}  // namespace pdserve::ops::cuda
