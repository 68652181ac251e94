// Shape: up to 8 dimensions, row-major (C order) like PyTorch and safetensors.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "dreambooth/core/error.hpp"

namespace dreambooth {

class Shape {
 public:
  static constexpr int kMaxRank = 8;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) {
    DB_CHECK(dims.size() <= kMaxRank, "Shape: rank ", dims.size(), " exceeds ", kMaxRank);
    for (auto d : dims) push_back(d);
  }
  template <class It>
  Shape(It first, It last) {
    for (; first != last; ++first) push_back(static_cast<std::int64_t>(*first));
  }

  void push_back(std::int64_t dim) {
    DB_CHECK(rank_ < kMaxRank, "Shape: rank exceeds ", kMaxRank);
    DB_CHECK(dim >= 0, "Shape: negative dimension ", dim);
    dims_[static_cast<std::size_t>(rank_++)] = dim;
  }

  int rank() const { return rank_; }
  std::int64_t operator[](int axis) const { return dims_[static_cast<std::size_t>(normalize(axis))]; }
  std::int64_t& operator[](int axis) { return dims_[static_cast<std::size_t>(normalize(axis))]; }
  const std::int64_t* begin() const { return dims_.data(); }
  const std::int64_t* end() const { return dims_.data() + rank_; }

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }

  bool operator==(const Shape& other) const {
    if (rank_ != other.rank_) return false;
    for (int i = 0; i < rank_; ++i)
      if (dims_[static_cast<std::size_t>(i)] != other.dims_[static_cast<std::size_t>(i)]) return false;
    return true;
  }

  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) {
      if (i) s += ", ";
      s += std::to_string(dims_[static_cast<std::size_t>(i)]);
    }
    return s + "]";
  }

 private:
  int normalize(int axis) const {
    const int a = axis < 0 ? axis + rank_ : axis;
    DB_CHECK(a >= 0 && a < rank_, "Shape: axis ", axis, " out of range for rank ", rank_);
    return a;
  }

  std::array<std::int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

}  // namespace dreambooth
