// A grow-only host buffer that hands out tensor views, so the EP exchange reuses its memory step
// after step, as DeepEP's Buffer does. Why it matters on CPU ranks too: fresh host memory costs a
// page fault per page on first touch, and on the CI VM a new 115 MB tensor took 1.0 s (measured;
// docs/parallelism.md), which dwarfed the exchange itself.
#pragma once

#include <cstring>
#include <memory>

#include "tensor/tensor.h"

namespace pdserve::moe {

class ReusableBuffer {
 public:
  // A view of `shape`; its contents are whatever the last user left (zero = true clears it). A view
  // handed out earlier stays valid memory (it keeps its storage alive) but may be overwritten by the
  // next view of this buffer.
  Tensor view(const Shape& shape, DType dtype, bool zero = false) {
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    if (!storage_ || storage_->bytes() < bytes) storage_ = Storage::allocate_host(bytes);
    Tensor t = Tensor::from_storage(storage_, 0, shape, dtype);
    if (zero) std::memset(t.raw_data(), 0, bytes);
    return t;
  }

 private:
  std::shared_ptr<Storage> storage_;
};

}  // namespace pdserve::moe
