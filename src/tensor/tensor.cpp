#include "tensor/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace pdserve {

std::shared_ptr<Storage> Storage::allocate_host(size_t bytes) {
  auto s = std::shared_ptr<Storage>(new Storage());
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  s->data_ = std::aligned_alloc(64, rounded);
  if (!s->data_) throw std::bad_alloc();
  std::memset(s->data_, 0, rounded);
  s->bytes_ = bytes;
  s->owned_ = true;
  return s;
}

std::shared_ptr<Storage> Storage::borrow(void* data, size_t bytes, std::shared_ptr<void> keep_alive,
                                         Device device) {
  auto s = std::shared_ptr<Storage>(new Storage());
  s->data_ = data;
  s->bytes_ = bytes;
  s->device_ = device;
  s->keep_alive_ = std::move(keep_alive);
  return s;
}

void free_device_memory(void* p, size_t bytes);  // device_storage.cpp

Storage::~Storage() {
  if (!owned_) return;
  if (device_ == Device::kCuda) {
    free_device_memory(data_, bytes_);
  } else {
    std::free(data_);
  }
}

std::string shape_to_string(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

static Shape row_major_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("Tensor::empty: negative dimension " + shape_to_string(shape));
  auto storage = Storage::allocate_host(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  return from_storage(std::move(storage), 0, shape, dtype);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  if (device == Device::kCpu) return empty(shape, dtype);
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("Tensor::empty: negative dimension " + shape_to_string(shape));
  auto storage = Storage::allocate_device(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  return from_storage(std::move(storage), 0, shape, dtype);
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                            DType dtype) {
  size_t need = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  if (byte_offset + need > storage->bytes())
    throw std::out_of_range(fmt::format("Tensor view {} at offset {} exceeds storage of {} bytes",
                                        shape_to_string(shape), byte_offset, storage->bytes()));
  Tensor t;
  t.storage_ = std::move(storage);
  t.byte_offset_ = byte_offset;
  t.shape_ = shape;
  t.strides_ = row_major_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  return from_storage(Storage::borrow(data, bytes, nullptr, device), 0, shape, dtype);
}

bool Tensor::is_contiguous() const { return strides_ == row_major_strides(shape_); }

Tensor Tensor::reshape(const Shape& shape) const {
  if (!is_contiguous()) throw std::logic_error("reshape of a non-contiguous tensor");
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer >= 0) throw std::invalid_argument("reshape: more than one -1");
      infer = static_cast<int64_t>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) s[infer] = known ? numel() / known : 0;
  if (shape_numel(s) != numel())
    throw std::invalid_argument("reshape " + shape_to_string(shape_) + " to " + shape_to_string(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = row_major_strides(s);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t begin, int64_t end) const {
  if (d < 0) d += dim();
  if (d < 0 || d >= dim() || begin < 0 || end < begin || end > shape_[d])
    throw std::out_of_range(fmt::format("slice dim {} [{}, {}) of {}", d, begin, end, shape_to_string(shape_)));
  Tensor t = *this;
  t.byte_offset_ += static_cast<size_t>(begin * strides_[d]) * dtype_size(dtype_);
  t.shape_[d] = end - begin;
  return t;
}

Tensor Tensor::select(int64_t index) const {
  if (dim() == 0 || index < 0 || index >= shape_[0])
    throw std::out_of_range(fmt::format("select {} of {}", index, shape_to_string(shape_)));
  Tensor t = *this;
  t.byte_offset_ += static_cast<size_t>(index * strides_[0]) * dtype_size(dtype_);
  t.shape_.erase(t.shape_.begin());
  t.strides_.erase(t.strides_.begin());
  return t;
}

// Copies a possibly strided tensor into contiguous memory element by element (recursive on dims).
static void copy_strided(const Tensor& src, char* dst) {
  size_t es = dtype_size(src.dtype());
  if (src.is_contiguous()) {
    std::memcpy(dst, src.raw_data(), src.nbytes());
    return;
  }
  if (src.dim() == 1) {
    auto* base = static_cast<const char*>(src.raw_data());
    for (int64_t i = 0; i < src.size(0); ++i) std::memcpy(dst + i * es, base + i * src.strides()[0] * es, es);
    return;
  }
  size_t inner = static_cast<size_t>(shape_numel(Shape(src.shape().begin() + 1, src.shape().end()))) * es;
  for (int64_t i = 0; i < src.size(0); ++i) copy_strided(src.select(i), dst + i * inner);
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n);  // device_storage.cpp

Tensor Tensor::to(Device target) const {
  if (device() == Device::kCpu && target == Device::kCpu) return clone();
  if (!is_contiguous()) {
    if (device() != Device::kCpu) throw std::logic_error("Tensor::to: non-contiguous device tensor");
    return clone().to(target);
  }
  Tensor out = empty(shape_, dtype_, target);
  copy_bytes(out.raw_data(), target, raw_data(), device(), nbytes());
  return out;
}

Tensor Tensor::clone() const {
  if (device() != Device::kCpu) throw std::logic_error("clone of a device tensor");
  Tensor out = empty(shape_, dtype_);
  copy_strided(*this, static_cast<char*>(out.raw_data()));
  return out;
}

Tensor Tensor::to_f32() const {
  Tensor c = clone();
  if (dtype_ == DType::kF32) return c;
  if (dtype_ == DType::kI32 || dtype_ == DType::kI64) throw std::logic_error("to_f32 of an integer tensor");
  Tensor out = empty(shape_, DType::kF32);
  convert_to_f32(dtype_, c.raw_data(), out.data<float>(), static_cast<size_t>(numel()));
  return out;
}

void Weight::dequantize_rows(int64_t r0, int64_t r1, float* dst) const {
  const int64_t n = cols();
  if (!weight.is_contiguous()) throw std::logic_error("Weight must be contiguous");
  const size_t es = dtype_size(weight.dtype());
  const char* base = static_cast<const char*>(weight.raw_data());
  for (int64_t r = r0; r < r1; ++r) {
    float* out = dst + (r - r0) * n;
    convert_to_f32(weight.dtype(), base + static_cast<size_t>(r * n) * es, out, static_cast<size_t>(n));
    if (is_block_fp8()) {
      const float* srow = scale_inv.data<float>() + (r / kBlock) * scale_inv.size(1);
      for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
        const float s = srow[c0 / kBlock];
        const int64_t c1 = std::min(n, c0 + kBlock);
        for (int64_t c = c0; c < c1; ++c) out[c] *= s;
      }
    }
  }
}

Tensor Weight::to_f32() const {
  Tensor out = Tensor::empty({rows(), cols()}, DType::kF32);
  dequantize_rows(0, rows(), out.data<float>());
  return out;
}

}  // namespace pdserve
