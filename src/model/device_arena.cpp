#include "model/device_arena.h"

#include <algorithm>

namespace pdserve::model {

void DeviceArena::reserve(size_t bytes) {
  storage_.reset();  // free first: the old and new buffers need not fit together
  storage_ = Storage::allocate_device(bytes);
  used_ = 0;
}

Tensor DeviceArena::take(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  const size_t offset = (used_ + 255) / 256 * 256;
  used_ = offset + bytes;
  high_ = std::max(high_, used_);
  if (!storage_ || used_ > storage_->bytes()) throw ArenaFull(used_);
  return Tensor::from_storage(storage_, offset, shape, dtype);
}

}  // namespace pdserve::model
