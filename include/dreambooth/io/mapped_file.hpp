// MappedFile: a whole file memory-mapped read-only, shared by every reader that points into it (a safetensors file, a
// torch checkpoint's zip records, the members of a .nemo tar). Nothing is read until a byte is touched.
//
// ByteReader: bounds-checked little-endian reads over a span, for the binary parsers (zip, tar, pickle); every read past
// the end fails with the origin named.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"

namespace dreambooth::io {

class MappedFile {
 public:
  // `what` names the kind of file in errors ("safetensors file", "checkpoint", ...).
  MappedFile(const std::filesystem::path& path, const std::string& what) : path_(path.string()) {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(what, " ", path_, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      fail(what, " ", path_, ": cannot stat: ", std::strerror(err));
    }
    if (S_ISDIR(st.st_mode)) {
      ::close(fd);
      fail(what, " ", path_, ": is a directory, not a file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (mapped == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        fail(what, " ", path_, ": cannot map: ", std::strerror(err));
      }
      data_ = static_cast<const std::byte*>(mapped);
    }
    ::close(fd);
  }
  // Owns bytes held in memory (a decompressed member, a test's buffer) under the name `origin`.
  MappedFile(std::vector<std::byte> bytes, std::string origin) : path_(std::move(origin)), owned_(std::move(bytes)) {
    data_ = owned_.data();
    size_ = owned_.size();
  }
  ~MappedFile() {
    if (data_ && owned_.empty()) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  std::size_t size() const { return size_; }

 private:
  std::string path_;
  std::vector<std::byte> owned_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// Bounds-checked reads; `origin` prefixes every error.
class ByteReader {
 public:
  ByteReader(std::span<const std::byte> bytes, std::string origin) : bytes_(bytes), origin_(std::move(origin)) {}

  std::size_t position() const { return position_; }
  std::size_t size() const { return bytes_.size(); }
  std::size_t remaining() const { return bytes_.size() - position_; }
  bool at_end() const { return position_ >= bytes_.size(); }
  void seek(std::size_t position) {
    if (position > bytes_.size()) fail(origin_, ": offset ", position, " is past the end (", bytes_.size(), " bytes)");
    position_ = position;
  }

  std::span<const std::byte> take(std::size_t n) {
    if (n > remaining()) fail(origin_, ": truncated: ", n, " bytes needed at offset ", position_, ", ", remaining(), " left");
    const auto out = bytes_.subspan(position_, n);
    position_ += n;
    return out;
  }
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)[0]); }
  template <class T>
  T le() {  // little-endian unsigned or signed integer
    const auto b = take(sizeof(T));
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<std::uint64_t>(b[i]) << (8 * i);
    return static_cast<T>(v);
  }
  std::string text(std::size_t n) {
    const auto b = take(n);
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
  const std::string& origin() const { return origin_; }

 private:
  std::span<const std::byte> bytes_;
  std::string origin_;
  std::size_t position_ = 0;
};

}  // namespace dreambooth::io
