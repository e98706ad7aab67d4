// Tensor: a typed, shaped view over memory that is either owned (shared storage) or borrowed
// (an mmap'ed checkpoint, a caller's buffer). Row-major strides by default; views keep the storage
// alive. Device is part of the type so ops can pick the CPU or CUDA path.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace pdserve {

enum class Device : uint8_t { kCpu, kCuda };

// Memory behind tensors. Owning storage frees on destruction; borrowed storage holds a keep-alive
// handle (e.g. the mmap of a safetensors shard) so views never dangle.
class Storage {
 public:
  static std::shared_ptr<Storage> allocate_host(size_t bytes);  // zero-filled, 64-byte aligned
  // cudaMalloc'ed, not initialised. Throws std::runtime_error in a build without CUDA or when the
  // device is out of memory (the message says how much was asked and how much is free).
  static std::shared_ptr<Storage> allocate_device(size_t bytes);
  static std::shared_ptr<Storage> borrow(void* data, size_t bytes, std::shared_ptr<void> keep_alive,
                                         Device device = Device::kCpu);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::kCpu;
  bool owned_ = false;
  std::shared_ptr<void> keep_alive_;
};

using Shape = std::vector<int64_t>;
std::string shape_to_string(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // A new zero-filled host tensor.
  static Tensor empty(const Shape& shape, DType dtype);
  // A new tensor on `device` (device memory is not initialised).
  static Tensor empty(const Shape& shape, DType dtype, Device device);
  // A view over existing storage at a byte offset, row-major.
  static Tensor from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                             DType dtype);
  // A row-major view over memory the caller owns and keeps alive for the view's life (workspace
  // carvings handed to ops that take Tensors); nothing is freed when the view goes.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::kCpu; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const { return shape_[d < 0 ? d + dim() : d]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* raw_data() const { return static_cast<char*>(storage_->data()) + byte_offset_; }
  template <typename T>
  T* data() const { return static_cast<T*>(raw_data()); }

  // Views sharing storage.
  Tensor reshape(const Shape& shape) const;           // requires contiguous; one dim may be -1
  Tensor slice(int64_t dim, int64_t begin, int64_t end) const;  // [begin, end) along dim
  Tensor select(int64_t index) const;                  // drops dim 0

  // A contiguous host f32 copy (dequantizes nothing: fp8 scales are not applied here).
  Tensor to_f32() const;
  Tensor clone() const;  // contiguous copy, same dtype
  // A contiguous copy on `device` (host <-> device through cudaMemcpy; synchronous).
  Tensor to(Device device) const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t byte_offset_ = 0;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::kF32;
};

// A linear layer's weight [out, in] in its stored dtype. For fp8 checkpoints `scale_inv` is the
// f32 block scale tensor [ceil(out/128), ceil(in/128)] (DeepSeek's 128x128 blocks): the real
// value is fp8 * scale_inv[r/128][c/128]. For other dtypes `scale_inv` is undefined.
struct Weight {
  Tensor weight;
  Tensor scale_inv;
  static constexpr int64_t kBlock = 128;

  int64_t rows() const { return weight.size(0); }
  int64_t cols() const { return weight.size(1); }
  bool is_block_fp8() const { return weight.dtype() == DType::kF8E4M3; }
  // Dequantizes rows [r0, r1) into dst (row-major, cols() floats per row).
  void dequantize_rows(int64_t r0, int64_t r1, float* dst) const;
  // Full f32 copy: only for small weights (norms, biases, tests).
  Tensor to_f32() const;
  Weight to(Device device) const { return Weight{weight.to(device), scale_inv.defined() ? scale_inv.to(device) : Tensor()}; }
};

}  // namespace pdserve
