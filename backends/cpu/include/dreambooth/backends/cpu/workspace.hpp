// Scratch memory of the CPU ops that need large temporaries (the convolutions' padded images, im2col columns and
// Winograd tiles): one block, grown to the largest request and kept between calls. A fresh allocation of that size
// comes back as unmapped pages, one fault per 4 KiB on first touch: measured at about 0.7 ms per MB on the 2-core
// development machine, more than the Winograd transforms of the same data take.
#pragma once

#include <array>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace dreambooth::cpu {

class Workspace {
 public:
  // Pieces of counts[i] values of T, each 64-byte aligned, valid until the next take(); their contents are undefined.
  template <class T, std::size_t K>
  std::array<T*, K> take(const std::array<std::size_t, K>& counts) {
    std::size_t bytes = 0;
    for (auto n : counts) bytes += aligned(n * sizeof(T));
    if (bytes > bytes_) {
      block_.reset();
      bytes_ = 0;
      block_.reset(static_cast<std::byte*>(std::aligned_alloc(64, bytes)));
      if (!block_) throw std::bad_alloc();
      bytes_ = bytes;
    }
    std::array<T*, K> pieces{};
    std::size_t offset = 0;
    for (std::size_t i = 0; i < K; ++i) {
      pieces[i] = reinterpret_cast<T*>(block_.get() + offset);
      offset += aligned(counts[i] * sizeof(T));
    }
    return pieces;
  }
  std::size_t bytes() const { return bytes_; }
  // Gives the block back to the system.
  void release() {
    block_.reset();
    bytes_ = 0;
  }

 private:
  static std::size_t aligned(std::size_t bytes) { return (bytes + 63) / 64 * 64; }
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte[], Free> block_;
  std::size_t bytes_ = 0;
};

}  // namespace dreambooth::cpu
