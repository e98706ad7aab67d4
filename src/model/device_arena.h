// A bump allocator over one device buffer for the activations of a forward pass. cudaMalloc and
// cudaFree synchronize the device, so a forward never calls them: it takes views of the arena,
// which is reset at the start of each pass. A captured CUDA graph keeps the addresses it saw, so
// an arena used for capture must never be reallocated afterwards (see DeepseekV3GpuModel).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "tensor/tensor.h"

namespace pdserve::model {

// Thrown by take() when the arena is too small; the caller grows it (outside any capture) and
// runs the pass again.
struct ArenaFull : std::runtime_error {
  explicit ArenaFull(size_t need) : std::runtime_error("device arena full"), needed(need) {}
  size_t needed;  // bytes the pass had asked for when it ran out (a lower bound of what it needs)
};

class DeviceArena {
 public:
  DeviceArena() = default;
  // Replaces the buffer with one of `bytes` (the old one must no longer be in use).
  void reserve(size_t bytes);
  void reset() { used_ = 0; }
  size_t capacity() const { return storage_ ? storage_->bytes() : 0; }
  size_t used() const { return used_; }
  size_t high_water() const { return high_; }
  // A device tensor of `shape`, 256-byte aligned; contents are whatever the last pass left.
  Tensor take(const Shape& shape, DType dtype);

 private:
  std::shared_ptr<Storage> storage_;
  size_t used_ = 0, high_ = 0;
};

}  // namespace pdserve::model
