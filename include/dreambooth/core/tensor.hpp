// Tensor<Backend>: a typed, shaped view of backend memory that shares ownership of its buffer.
//
// A tensor either owns a buffer of its own (Tensor::empty / zeros / from_host) or is a view into one
// shared with other tensors (an Arena, a slice, a reshape). Views are contiguous: a reshape, or a
// range of the first dimension.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "dreambooth/backend.hpp"
#include "dreambooth/core/dtype.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/core/shape.hpp"

namespace dreambooth {

// One allocation on a backend, released when the last tensor that uses it goes.
template <class B>
class Buffer {
 public:
  Buffer(B& backend, std::size_t bytes) : backend_(&backend), data_(bytes ? backend.allocate(bytes) : nullptr), bytes_(bytes) {}
  ~Buffer() {
    if (data_) backend_->deallocate(data_, bytes_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  B& backend() const { return *backend_; }
  std::byte* data() const { return static_cast<std::byte*>(data_); }
  std::size_t bytes() const { return bytes_; }

 private:
  B* backend_;
  void* data_;
  std::size_t bytes_;
};

template <BackendMemory B>
class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Buffer<B>> buffer, std::size_t byte_offset, Shape shape, DType dtype)
      : buffer_(std::move(buffer)), offset_(byte_offset), shape_(shape), dtype_(dtype) {
    DB_CHECK(buffer_ != nullptr, "Tensor: null buffer");
    DB_CHECK(offset_ + bytes() <= buffer_->bytes(), "Tensor: view ", shape.str(), " at byte ", offset_, " exceeds its buffer of ", buffer_->bytes(),
             " bytes");
  }

  static Tensor empty(B& backend, Shape shape, DType dtype = DType::F32) {
    const auto bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
    return Tensor(std::make_shared<Buffer<B>>(backend, bytes), 0, shape, dtype);
  }

  static Tensor zeros(B& backend, Shape shape, DType dtype = DType::F32) {
    Tensor t = empty(backend, shape, dtype);
    t.set_zero();
    return t;
  }

  // Copies host floats to a new tensor, converting to `dtype` storage.
  static Tensor from_host(B& backend, Shape shape, std::span<const float> values, DType dtype = DType::F32) {
    Tensor t = empty(backend, shape, dtype);
    t.copy_from_host(values);
    return t;
  }

  bool defined() const { return buffer_ != nullptr; }
  // Whether both are views of one allocation (an arena's tensors are).
  bool shares_buffer_with(const Tensor& other) const { return defined() && buffer_ == other.buffer_; }
  const Shape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  std::int64_t numel() const { return shape_.numel(); }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  B& backend() const {
    DB_CHECK(defined(), "Tensor: use of an undefined tensor");
    return buffer_->backend();
  }

  std::byte* raw() const { return defined() ? buffer_->data() + offset_ : nullptr; }

  // Typed device pointer. Only the element size is checked against the dtype: float for F32, std::uint16_t for F16 and
  // BF16 (the caller knows which 16-bit format it holds).
  template <class T>
  T* data() const {
    DB_CHECK(sizeof(T) == dtype_size(dtype_), "Tensor::data: element size ", sizeof(T), " does not match dtype ", dtype_name(dtype_));
    return reinterpret_cast<T*>(raw());
  }

  // Same memory, another shape of equal element count.
  Tensor reshape(Shape shape) const {
    DB_CHECK(shape.numel() == numel(), "Tensor::reshape: ", shape_.str(), " has ", numel(), " elements, ", shape.str(), " has ", shape.numel());
    return Tensor(buffer_, offset_, shape, dtype_);
  }

  // Rows [begin, end) of the first dimension, sharing memory.
  Tensor slice(std::int64_t begin, std::int64_t end) const {
    DB_CHECK(shape_.rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "Tensor::slice: [", begin, ", ", end, ") out of range for shape ",
             shape_.str());
    Shape sub = shape_;
    sub[0] = end - begin;
    const std::size_t row_bytes = shape_[0] ? bytes() / static_cast<std::size_t>(shape_[0]) : 0;
    return Tensor(buffer_, offset_ + static_cast<std::size_t>(begin) * row_bytes, sub, dtype_);
  }

  // Zeroes the tensor on the backend: a fill with 0 (all-zero bits in every dtype), so that zeroing gradients on a
  // device copies nothing from the host; a host buffer of zeros only where the compute type does not tile the bytes.
  // An undefined tensor (a frozen parameter's gradient) has nothing to zero.
  void set_zero() {
    if (!defined() || bytes() == 0) return;
    using V = typename B::value_type;
    if (bytes() % sizeof(V) == 0 && reinterpret_cast<std::uintptr_t>(raw()) % alignof(V) == 0) {
      backend().fill(reinterpret_cast<V*>(raw()), V(0), bytes() / sizeof(V));
      return;
    }
    std::vector<std::byte> zeros(bytes());
    backend().copy_to_device(raw(), zeros.data(), zeros.size());
  }

  void copy_from_host(std::span<const float> values) {
    DB_CHECK(static_cast<std::int64_t>(values.size()) == numel(), "Tensor::copy_from_host: ", values.size(), " values for shape ", shape_.str());
    std::vector<std::byte> staged(bytes());
    convert_from_f32(values, dtype_, staged.data());
    backend().copy_to_device(raw(), staged.data(), staged.size());
  }

  // Copies to the host as floats (converting from F16 / BF16 storage).
  std::vector<float> to_host() const {
    std::vector<std::byte> staged(bytes());
    if (!staged.empty()) backend().copy_to_host(staged.data(), raw(), staged.size());
    std::vector<float> values(static_cast<std::size_t>(numel()));
    convert_to_f32(staged.data(), dtype_, values);
    return values;
  }

  // Copies another tensor of the same shape and dtype into this one (device to device).
  void copy_from(const Tensor& other) {
    DB_CHECK(other.shape_ == shape_ && other.dtype_ == dtype_, "Tensor::copy_from: ", other.shape_.str(), " ", dtype_name(other.dtype_), " into ",
             shape_.str(), " ", dtype_name(dtype_));
    if (bytes()) backend().copy_device(raw(), other.raw(), bytes());
  }

 private:
  std::shared_ptr<Buffer<B>> buffer_;
  std::size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
};

}  // namespace dreambooth
