// The project's one way to publish a file: AtomicFileWriter writes it under a temporary name beside its target
// (`<target>.tmp-<pid>`), checks every write, syncs and closes it, renames it over the target and syncs the folder, so a
// reader (or a machine that lost power) sees the old file or the whole new one, never a part. Every failed write, sync,
// close or rename throws naming the file and removes the temporary; so does a writer destroyed before commit() (an
// exception on the way). publish() does the same for a finished folder of such files (a checkpoint, an export).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/fault.hpp"

namespace dreambooth::io {

// Syncs a folder's entries (a rename into it is durable once this returns).
inline void sync_directory(const std::filesystem::path& dir, const std::string& what) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(what, ": cannot open folder ", dir.string(), " to sync it: ", std::strerror(errno));
  const int synced = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (synced != 0 && err != EINVAL) fail(what, ": cannot sync folder ", dir.string(), ": ", std::strerror(err));  // EINVAL: no sync there
}

// Publishes a finished temporary folder (its files written and synced) or file: `tmp` renamed to `target`, replacing
// what had that name, and the parent synced.
inline void publish(const std::filesystem::path& tmp, const std::filesystem::path& target, const std::string& what) {
  if (std::filesystem::is_directory(tmp)) sync_directory(tmp, what);
  std::error_code ec;
  std::filesystem::remove_all(target, ec);
  if (ec) fail(what, ": cannot replace ", target.string(), ": ", ec.message());
  std::filesystem::rename(tmp, target, ec);
  if (ec) fail(what, ": cannot rename ", tmp.string(), " to ", target.string(), ": ", ec.message());
  sync_directory(target.parent_path(), what);
}

class AtomicFileWriter {
 public:
  // `what` names the kind of file in errors ("safetensors writer", "checkpoint writer", ...).
  AtomicFileWriter(std::filesystem::path target, std::string what)
      : target_(std::move(target)),
        tmp_(target_.string() + ".tmp-" + std::to_string(::getpid())),
        what_(std::move(what)),
        injected_full_disk_(fault::write_fails(target_.filename().string())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(what_, ": cannot create ", tmp_.string(), ": ", std::strerror(errno));
  }
  ~AtomicFileWriter() { abandon(); }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t n) {
    const auto* c = static_cast<const char*>(data);
    while (n > 0) {
      if (injected_full_disk_ && written_ > 0) {  // the test's full disk: part of the file is written, then ENOSPC
        abandon();
        fail(what_, ": writing ", tmp_.string(), ": ", std::strerror(ENOSPC));
      }
      const ssize_t w = ::write(fd_, c, injected_full_disk_ ? std::max<std::size_t>(1, n / 2) : n);
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
    sync_directory(target_.parent_path(), what_);
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
  bool injected_full_disk_ = false;  // DREAMBOOTH_FAULT=enospc:<this file's name> (core/fault.hpp)
};

// Writes a whole small file (text, JSON) atomically.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view contents, const std::string& what) {
  AtomicFileWriter out(path, what);
  out.write(contents);
  out.commit();
}

}  // namespace dreambooth::io
