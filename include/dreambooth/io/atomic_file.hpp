// AtomicFileWriter: a file is written under a temporary name beside its target (`<target>.tmp-<pid>`), flushed and
// synced, then renamed over the target, so a reader sees the old file or the whole new one, never a part. Every
// failed write, sync or rename throws naming the file and removes the temporary; so does a writer destroyed before
// commit() (an exception on the way).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "dreambooth/core/error.hpp"

namespace dreambooth::io {

class AtomicFileWriter {
 public:
  // `what` names the kind of file in errors ("safetensors writer", "checkpoint writer", ...).
  AtomicFileWriter(std::filesystem::path target, std::string what)
      : target_(std::move(target)), tmp_(target_.string() + ".tmp-" + std::to_string(::getpid())), what_(std::move(what)) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(what_, ": cannot create ", tmp_.string(), ": ", std::strerror(errno));
  }
  ~AtomicFileWriter() { abandon(); }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t n) {
    const auto* c = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = w < 0 ? errno : ENOSPC;
        abandon();
        fail(what_, ": writing ", tmp_.string(), ": ", std::strerror(err));
      }
      c += w;
      n -= static_cast<std::size_t>(w);
      written_ += static_cast<std::uint64_t>(w);
    }
  }
  void write(std::span<const std::byte> bytes) { write(bytes.data(), bytes.size()); }
  void write(std::string_view text) { write(text.data(), text.size()); }

  std::uint64_t written() const { return written_; }

  // Syncs the data and renames the temporary file to the target.
  void commit() {
    if (::fsync(fd_) != 0) {
      const int err = errno;
      abandon();
      fail(what_, ": cannot sync ", tmp_.string(), ": ", std::strerror(err));
    }
    const int closed = ::close(fd_);
    fd_ = -1;
    if (closed != 0) {
      const int err = errno;
      abandon();
      fail(what_, ": cannot close ", tmp_.string(), ": ", std::strerror(err));
    }
    std::error_code ec;
    std::filesystem::rename(tmp_, target_, ec);
    if (ec) {
      abandon();
      fail(what_, ": cannot rename ", tmp_.string(), " to ", target_.string(), ": ", ec.message());
    }
    committed_ = true;
  }

 private:
  void abandon() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!committed_) {
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
    }
  }

  std::filesystem::path target_, tmp_;
  std::string what_;
  int fd_ = -1;
  std::uint64_t written_ = 0;
  bool committed_ = false;
};

// Writes a whole small file (text, JSON) atomically.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view contents, const std::string& what) {
  AtomicFileWriter out(path, what);
  out.write(contents);
  out.commit();
}

}  // namespace dreambooth::io
