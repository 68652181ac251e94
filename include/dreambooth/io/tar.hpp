// tar archives as Python's tarfile writes them (NeMo's .nemo files: uncompressed since NeMo 1.7, gzip before).
//
// read_tar() lists the regular files of an uncompressed archive as spans of its bytes: ustar and GNU headers, GNU long
// names ('L'), pax extended headers ('x': path and size), base-256 sizes; every header's checksum is verified and every
// member's span is checked against the archive. Names lose a leading "./". open_tar_file() maps a file, inflating a
// gzip-compressed one into an unlinked temporary file first (so even a multi-GiB member is read lazily from the map).
// TarWriter streams members into an AtomicFileWriter as ustar records (GNU base-256 sizes past 8 GiB).
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/atomic_file.hpp"
#include "dreambooth/io/mapped_file.hpp"

namespace dreambooth::io {

struct TarMember {
  std::string name;  // without a leading "./"
  std::uint64_t offset = 0, size = 0;
};

namespace tar_detail {
inline std::string field(std::span<const std::byte> block, std::size_t offset, std::size_t length) {
  std::string s(reinterpret_cast<const char*>(block.data() + offset), length);
  if (const auto nul = s.find('\0'); nul != std::string::npos) s.resize(nul);
  return s;
}
// An octal number field (spaces and NULs around it), or GNU's base-256 (first byte 0x80).
inline std::uint64_t number(std::span<const std::byte> block, std::size_t offset, std::size_t length, const std::string& origin) {
  const auto first = static_cast<std::uint8_t>(block[offset]);
  if (first == 0x80) {
    std::uint64_t v = 0;
    for (std::size_t i = 1; i < length; ++i) {
      if (v >> 56) fail(origin, ": a tar number field overflows 64 bits");
      v = (v << 8) | static_cast<std::uint8_t>(block[offset + i]);
    }
    return v;
  }
  if (first & 0x80) fail(origin, ": a negative base-256 number in a tar header");
  std::uint64_t v = 0;
  bool digits = false;
  for (std::size_t i = 0; i < length; ++i) {
    const char c = static_cast<char>(block[offset + i]);
    if (c == ' ' || c == '\0') {
      if (digits) break;
      continue;
    }
    if (c < '0' || c > '7') fail(origin, ": a tar header number field holds '", c, "'");
    if (v >> 60) fail(origin, ": a tar number field overflows 64 bits");
    v = v * 8 + static_cast<std::uint64_t>(c - '0');
    digits = true;
  }
  return v;
}
inline std::string strip_dot_slash(std::string name) {
  while (name.rfind("./", 0) == 0) name.erase(0, 2);
  return name;
}
}  // namespace tar_detail

inline std::vector<TarMember> read_tar(std::span<const std::byte> bytes, const std::string& origin) {
  using namespace tar_detail;
  std::vector<TarMember> members;
  std::string long_name;
  std::map<std::string, std::string> pax;
  std::size_t at = 0;
  while (true) {
    if (bytes.size() - at < 512) {
      if (at == bytes.size() && !members.empty()) break;  // some writers omit the two zero blocks
      fail(origin, ": truncated tar archive (a header needs 512 bytes at offset ", at, ")");
    }
    const auto block = bytes.subspan(at, 512);
    bool zero = true;
    for (auto b : block) zero = zero && b == std::byte{0};
    if (zero) break;
    // checksum: the header's bytes summed with the checksum field read as spaces
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? 32u : static_cast<std::uint8_t>(block[i]);
    if (number(block, 148, 8, origin) != sum) fail(origin, ": tar header at offset ", at, " fails its checksum (not a tar file, or damaged)");
    const char type = static_cast<char>(block[156]);
    std::uint64_t size = number(block, 124, 12, origin);
    std::string name = field(block, 0, 100);
    const auto magic = field(block, 257, 6);
    if (magic.rfind("ustar", 0) == 0) {
      const auto prefix = field(block, 345, 155);
      if (!prefix.empty()) name = prefix + "/" + name;
    }
    if (pax.count("size")) {
      try {
        size = std::stoull(pax["size"]);
      } catch (const std::exception&) {
        fail(origin, ": a pax header's size \"", pax["size"], "\" is not a number");
      }
    }
    const auto data = at + 512;
    if (size > bytes.size() - data) fail(origin, ": tar member \"", name, "\" (", size, " bytes) runs past the end of the archive (truncated?)");
    const auto next = data + (size + 511) / 512 * 512;
    const auto payload = bytes.subspan(data, static_cast<std::size_t>(size));
    if (type == 'L') {  // GNU long name for the next member
      long_name = std::string(reinterpret_cast<const char*>(payload.data()), payload.size());
      if (const auto nul = long_name.find('\0'); nul != std::string::npos) long_name.resize(nul);
    } else if (type == 'x') {  // pax: "<length> key=value\n" records for the next member
      pax.clear();
      std::size_t p = 0;
      const std::string text(reinterpret_cast<const char*>(payload.data()), payload.size());
      while (p < text.size()) {
        const auto space = text.find(' ', p);
        if (space == std::string::npos) fail(origin, ": a malformed pax record");
        std::size_t length = 0;
        try {
          length = std::stoull(text.substr(p, space - p));
        } catch (const std::exception&) {
          fail(origin, ": a malformed pax record length");
        }
        if (length == 0 || length > text.size() - p) fail(origin, ": a pax record runs past its header");
        const auto record = text.substr(space + 1, p + length - space - 1);
        const auto eq = record.find('=');
        if (eq != std::string::npos) pax[record.substr(0, eq)] = record.substr(eq + 1, record.size() - eq - 1 - (record.ends_with('\n') ? 1 : 0));
        p += length;
      }
    } else if (type == 'g' || type == 'K') {
      // global pax headers and long link names change nothing here
    } else {
      if (pax.count("path")) name = pax["path"];
      if (!long_name.empty()) name = long_name;
      if (type == '0' || type == '\0' || type == '7') members.push_back({strip_dot_slash(name), data, size});
      long_name.clear();
      pax.clear();
    }
    if (next > bytes.size()) break;  // the last member's padding may be cut off
    at = static_cast<std::size_t>(next);
  }
  return members;
}

// Maps a tar or .tar.gz file; `what` names it in errors. A gzip stream is inflated to an unlinked temporary file.
inline std::shared_ptr<const MappedFile> open_tar_file(const std::filesystem::path& path, const std::string& what) {
  auto file = std::make_shared<MappedFile>(path, what);
  const auto b = file->bytes();
  if (b.size() < 2 || b[0] != std::byte{0x1f} || b[1] != std::byte{0x8b}) return file;
  const auto dir = std::filesystem::temp_directory_path();
  const auto tmp = dir / ("dreambooth-inflate-" + std::to_string(::getpid()) + "-" + std::to_string(std::time(nullptr)) + ".tar");
  {
    AtomicFileWriter out(tmp, what + " " + path.string() + " (inflating gzip)");
    z_stream z{};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) fail(what, " ", path.string(), ": zlib could not start");
    std::vector<unsigned char> chunk(1 << 20);
    std::size_t done = 0;
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
      if (z.avail_in == 0) {
        const auto n = std::min<std::size_t>(b.size() - done, std::size_t{1} << 30);
        if (n == 0) {
          inflateEnd(&z);
          fail(what, " ", path.string(), ": the gzip stream ends early (truncated file?)");
        }
        z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(b.data() + done));
        z.avail_in = static_cast<uInt>(n);
        done += n;
      }
      z.next_out = chunk.data();
      z.avail_out = static_cast<uInt>(chunk.size());
      rc = inflate(&z, Z_NO_FLUSH);
      if (rc != Z_OK && rc != Z_STREAM_END) {
        inflateEnd(&z);
        fail(what, " ", path.string(), ": not a valid gzip stream (", z.msg ? z.msg : "inflate failed", ")");
      }
      out.write(chunk.data(), chunk.size() - z.avail_out);
    }
    inflateEnd(&z);
    out.commit();
  }
  auto inflated = std::make_shared<MappedFile>(tmp, what);
  std::filesystem::remove(tmp);  // the map keeps the data until it is released
  return inflated;
}

// Streams regular files into a tar archive (ustar headers, 512-byte padding, two zero blocks at the end).
class TarWriter {
 public:
  explicit TarWriter(AtomicFileWriter& out) : out_(&out) {}

  // Starts a member of `size` bytes; its data follows through write() (exactly `size` bytes), then end_member().
  void begin_member(const std::string& name, std::uint64_t size) {
    if (name.size() > 99) fail("tar writer: member name \"", name, "\" is longer than 99 bytes");
    std::string h(512, '\0');
    std::copy(name.begin(), name.end(), h.begin());
    octal(h, 100, 8, 0644);
    octal(h, 108, 8, 0);
    octal(h, 116, 8, 0);
    if (size < (std::uint64_t{1} << 33)) {
      octal(h, 124, 12, size);
    } else {  // GNU base-256
      h[124] = static_cast<char>(0x80);
      for (int i = 0; i < 8; ++i) h[135 - static_cast<std::size_t>(i)] = static_cast<char>(size >> (8 * i));
    }
    octal(h, 136, 12, static_cast<std::uint64_t>(std::time(nullptr)));
    h[156] = '0';
    std::copy_n("ustar", 6, h.begin() + 257);
    h[263] = '0';
    h[264] = '0';
    std::copy_n("root", 4, h.begin() + 265);
    std::copy_n("root", 4, h.begin() + 297);
    std::fill_n(h.begin() + 148, 8, ' ');
    std::uint64_t sum = 0;
    for (const char c : h) sum += static_cast<unsigned char>(c);
    octal(h, 148, 7, sum);
    h[155] = ' ';
    out_->write(h);
    remaining_ = size;
    padding_ = static_cast<std::size_t>((512 - size % 512) % 512);
  }
  void write(std::span<const std::byte> data) {
    if (data.size() > remaining_) fail("tar writer: more data than the member's declared size");
    out_->write(data);
    remaining_ -= data.size();
  }
  void end_member() {
    if (remaining_ != 0) fail("tar writer: ", remaining_, " bytes of a member were never written");
    out_->write(std::string(padding_, '\0'));
  }
  void add(const std::string& name, std::span<const std::byte> data) {
    begin_member(name, data.size());
    write(data);
    end_member();
  }
  void add(const std::string& name, const std::string& text) { add(name, {reinterpret_cast<const std::byte*>(text.data()), text.size()}); }
  void finish() { out_->write(std::string(1024, '\0')); }

 private:
  static void octal(std::string& h, std::size_t offset, std::size_t width, std::uint64_t v) {
    // width - 1 digits, zero-padded, then a NUL
    for (std::size_t i = width - 1; i-- > 0;) {
      h[offset + i] = static_cast<char>('0' + (v & 7));
      v >>= 3;
    }
    h[offset + width - 1] = '\0';
  }

  AtomicFileWriter* out_;
  std::uint64_t remaining_ = 0;
  std::size_t padding_ = 0;
};

}  // namespace dreambooth::io
