// CUDA rotary embedding (YaRN table from ops::make_rope_table, interleaved pairs) and the fused
// rope + paged latent-cache write of the MLA KV path (model-spec §2.3, §2.4).
//
// The table (inv_freq, at most 64 entries, and attention_factor) travels by value as a
// __grid_constant__ kernel parameter: nothing to copy to the device or keep alive, and a captured
// CUDA graph holds its own copy. cos/sin are computed per token in f32 exactly as the CPU op does
// ((float)position * inv_freq[i], then * attention_factor); the rotation is done in f32 with the
// CPU op's rounding order and rounded once to the tensor's dtype.
#pragma once

#include "ops/rope.h"
#include "tensor/tensor.h"

namespace pdserve::ops::cuda {

// ops::apply_rope_interleaved for device tensors: x [T, H, D] f32 or bf16 (last dim contiguous,
// the other strides free, e.g. q viewed as [T, 128, 192] with the rope span at offset 128, or k_pe
// as [T, 1, 64]); positions [T] i32 or i64 on the device.
void apply_rope_interleaved(Tensor& x, int64_t offset, const Tensor& positions, const RopeTable& table);

// Fused MLA KV step for T tokens, one launch:
//   - q [T, H, D] rotated in place over [q_offset, q_offset + rotary_dim) (as above);
//   - pool row slot_mapping[t] (= page * page_size + offset in page) receives
//     [latent[t, 0:L], rope(k_pe[t, 0:R])], where latent is the kv_a_layernorm output (not
//     modified) and k_pe the un-rotated rope part of kv_a_proj's output (not modified; only the
//     rotated copy is stored).
// q, latent, k_pe: one dtype, f32 or bf16; latent [T, L] and k_pe [T, R = rotary_dim] may be
// strided views (last dim contiguous). positions, slot_mapping: [T] i32 or i64 on the device.
// pool: [pages, page_size, L + R] f32 or bf16, contiguous. A negative slot (a padding token of a
// CUDA-graph batch) or one at or past pages * page_size skips the cache write for that token; the
// kernel never writes outside the pool.
void rope_kv_write(Tensor& q, int64_t q_offset, const Tensor& latent, const Tensor& k_pe, const Tensor& positions,
                   const RopeTable& table, const Tensor& slot_mapping, Tensor& pool);

}  // namespace pdserve::ops::cuda
