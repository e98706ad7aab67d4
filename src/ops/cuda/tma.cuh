// Hopper tensor-memory-accelerator (TMA) loads and the shared-memory mbarriers they complete on
// (PTX ISA 8.x: cp.async.bulk.tensor, mbarrier), plus the host-side tensor map encoding. One thread
// issues a whole tile; the hardware writes it in the layout the tensor map names (here the
// 128-byte swizzle wgmma reads) and counts the bytes on the barrier; every consumer waits on the
// barrier's phase.
#pragma once

#include <cuda.h>  // CUtensorMap and its enums (header only: encode() reaches the driver through the runtime)
#include <cuda_runtime.h>

#include <cstdint>

namespace pdserve::ops::cuda::tma {

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes barrier initialisation visible to the async proxy (the TMA unit completes on it).
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// One arrival that also announces `bytes` of transactions; the phase completes when they landed.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// One plain arrival (a consumer saying it is done with the buffer the barrier guards).
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the barrier's phase with this parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Box (x = innermost coordinate, y) of a 2-D tensor map into shared memory at dst, completing on bar.
__device__ __forceinline__ void load_2d(uint32_t dst, const CUtensorMap* map, int x, int y, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
}

// A row-major bf16 matrix [rows][cols] (row stride `row_bytes`) read in boxes of box_rows x 64
// columns with the 128-byte swizzle. False when the driver lacks the call or refuses the shape.
bool encode_bf16_2d_sw128(CUtensorMap* map, const void* base, uint64_t rows, uint64_t cols, uint64_t row_bytes,
                          uint32_t box_rows);
// A byte tensor of `rank` (<= 5) dimensions, dims innermost first, strides in bytes of dims
// 1..rank-1, read in boxes whose innermost side is 128 bytes, with the 128-byte swizzle and zeros
// outside (the FP8 operands of the masked expert kernel). Returns the driver's CUresult (0 =
// success), or -1 when the driver has no cuTensorMapEncodeTiled.
int encode_u8_sw128(CUtensorMap* map, const void* base, uint32_t rank, const cuuint64_t* dims, const cuuint64_t* strides,
                    const cuuint32_t* box);

}  // namespace pdserve::ops::cuda::tma
