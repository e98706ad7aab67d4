// The replica draw of --ep-dispatch-algorithm dynamic, one function for the host and the device so
// the CPU op (the reference) and the CUDA kernel pick the same copies: a counter-based hash of
// (seed, draw, entry) instead of a stateful generator, so each entry's choice is independent of
// every other entry's and of the launch shape, and a CUDA graph replays a fresh draw by reading the
// draw counter from device memory.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PDSERVE_HOST_DEVICE __host__ __device__
#else
#define PDSERVE_HOST_DEVICE
#endif

namespace pdserve::ops {

// SplitMix64's finaliser: a bijection of 64-bit words whose output bits each depend on every input bit.
PDSERVE_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A copy index in [0, copies) (copies >= 1), uniform up to 2^-32: the high 32 bits of the hash
// scaled by copies (a multiply-shift instead of %, which would favour the low indices more).
PDSERVE_HOST_DEVICE inline uint32_t pick_replica(uint64_t seed, uint64_t draw, uint64_t entry, uint32_t copies) {
  const uint64_t h = mix64(seed ^ mix64(draw * 0x9E3779B97F4A7C15ull + entry));
  return static_cast<uint32_t>(((h >> 32) * copies) >> 32);
}

}  // namespace pdserve::ops
