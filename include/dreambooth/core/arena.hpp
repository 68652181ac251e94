// Arena: one backend allocation carved into tensors by a bump pointer.
//
// Parameters, gradients and the optimizer's moments each live in one arena whose size is known before the first step
// (Arena::plan sums a list of shapes). Activations do not: they are tensors allocated per op from the backend, whose
// allocator keeps freed blocks by size and hands them out again (the same shapes come back every step). reset()
// empties an arena for reuse. Tensors handed out share ownership of the arena's buffer, so they stay valid after the
// Arena object goes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dreambooth/core/tensor.hpp"

namespace dreambooth {

template <BackendMemory B>
class Arena {
 public:
  static constexpr std::size_t kAlignment = 256;  // a cache line / a CUDA-friendly boundary

  static constexpr std::size_t aligned(std::size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

  // Bytes an arena needs to hold tensors of these shapes and dtypes.
  static std::size_t plan(const std::vector<std::pair<Shape, DType>>& tensors) {
    std::size_t total = 0;
    for (const auto& [shape, dtype] : tensors) total += aligned(static_cast<std::size_t>(shape.numel()) * dtype_size(dtype));
    return total;
  }

  Arena(B& backend, std::size_t capacity_bytes, std::string name = "arena")
      : buffer_(std::make_shared<Buffer<B>>(backend, capacity_bytes)), name_(std::move(name)) {}

  Tensor<B> allocate(Shape shape, DType dtype = DType::F32) {
    const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
    DB_CHECK(used_ + aligned(bytes) <= buffer_->bytes(), name_, ": out of memory allocating ", shape.str(), " ", dtype_name(dtype), " (", bytes,
             " bytes; ", used_, " of ", buffer_->bytes(), " used)");
    Tensor<B> t(buffer_, used_, shape, dtype);
    used_ += aligned(bytes);
    high_water_ = std::max(high_water_, used_);
    return t;
  }

  // Zeroes the whole buffer, the alignment padding between tensors included.
  void set_zero() { Tensor<B>(buffer_, 0, Shape{static_cast<std::int64_t>(buffer_->bytes() / sizeof(float))}, DType::F32).set_zero(); }

  // Forgets every allocation (their memory will be handed out again); the high-water mark stays.
  void reset() { used_ = 0; }

  std::size_t capacity() const { return buffer_->bytes(); }
  std::size_t used() const { return used_; }
  std::size_t high_water() const { return high_water_; }

 private:
  std::shared_ptr<Buffer<B>> buffer_;
  std::string name_;
  std::size_t used_ = 0;
  std::size_t high_water_ = 0;
};

}  // namespace dreambooth
