// ZIP archives as torch.save writes them (PyTorchStreamWriter: stored, uncompressed records, each record's data aligned
// to 64 bytes by padding in the local header's extra field, ZIP64 records past 4 GiB).
//
// ZipArchive reads the central directory (ZIP64 end records included), validates every entry's span against the file,
// and hands out stored records as spans of the mapped file (no copy); deflated records are inflated on request.
// Encrypted, multi-disk and other compression methods are refused by name. ZipWriter streams records into an
// AtomicFileWriter the same way torch does.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/atomic_file.hpp"
#include "dreambooth/io/mapped_file.hpp"

namespace dreambooth::io {

struct ZipEntry {
  std::string name;
  std::uint16_t method = 0;  // 0 stored, 8 deflated
  std::uint32_t crc32 = 0;
  std::uint64_t compressed_size = 0, size = 0;
  std::uint64_t data_offset = 0;  // within the archive's bytes
};

class ZipArchive {
 public:
  // `origin` names the archive in errors.
  ZipArchive(std::span<const std::byte> bytes, std::string origin) : bytes_(bytes), origin_(std::move(origin)) { read_directory(); }

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &entries_[it->second];
  }

  // A stored record's bytes, without a copy.
  std::span<const std::byte> stored(const ZipEntry& e) const {
    if (e.method != 0) fail(origin_, ": zip record \"", e.name, "\" is compressed (method ", e.method, "); torch writes stored records");
    return bytes_.subspan(static_cast<std::size_t>(e.data_offset), static_cast<std::size_t>(e.size));
  }

  // A record's bytes, inflated when deflated; the CRC-32 is checked.
  std::vector<std::byte> read(const ZipEntry& e) const {
    std::vector<std::byte> out;
    if (e.method == 0) {
      const auto s = stored(e);
      out.assign(s.begin(), s.end());
    } else if (e.method == 8) {
      if (e.size > (std::uint64_t{1} << 32)) fail(origin_, ": zip record \"", e.name, "\" inflates to ", e.size, " bytes; too large to hold");
      out.resize(static_cast<std::size_t>(e.size));
      z_stream z{};
      if (inflateInit2(&z, -MAX_WBITS) != Z_OK) fail(origin_, ": zlib could not start");
      z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(bytes_.data() + e.data_offset));
      z.avail_in = static_cast<uInt>(std::min<std::uint64_t>(e.compressed_size, UINT32_MAX));
      z.next_out = reinterpret_cast<Bytef*>(out.data());
      z.avail_out = static_cast<uInt>(out.size());
      const int rc = inflate(&z, Z_FINISH);
      const auto produced = z.total_out;
      inflateEnd(&z);
      if (rc != Z_STREAM_END || produced != e.size) fail(origin_, ": zip record \"", e.name, "\" does not inflate to its recorded size");
    } else {
      fail(origin_, ": zip record \"", e.name, "\" uses compression method ", e.method, " (only stored and deflated are read)");
    }
    const auto crc = ::crc32(0L, reinterpret_cast<const Bytef*>(out.data()), static_cast<uInt>(out.size()));
    if (out.size() <= UINT32_MAX && crc != e.crc32) fail(origin_, ": zip record \"", e.name, "\" fails its CRC-32 check (damaged file?)");
    return out;
  }

 private:
  static constexpr std::uint32_t kLocal = 0x04034b50, kCentral = 0x02014b50, kEnd = 0x06054b50, kEnd64 = 0x06064b50, kLocator64 = 0x07064b50;

  [[noreturn]] void bad(auto&&... parts) const { fail(origin_, ": not a valid zip archive: ", parts...); }

  void read_directory() {
    if (bytes_.size() < 22) bad("only ", bytes_.size(), " bytes");
    // The end-of-central-directory record: the last signature within the final 64 KiB + 22 bytes.
    std::optional<std::size_t> end;
    const std::size_t lowest = bytes_.size() > 65557 ? bytes_.size() - 65557 : 0;
    for (std::size_t p = bytes_.size() - 22 + 1; p-- > lowest;) {
      ByteReader r(bytes_.subspan(p, 4), origin_);
      if (r.le<std::uint32_t>() == kEnd) {
        end = p;
        break;
      }
    }
    if (!end) bad("no end-of-central-directory record");
    ByteReader e(bytes_, origin_);
    e.seek(*end + 4);
    const auto disk = e.le<std::uint16_t>(), cd_disk = e.le<std::uint16_t>();
    (void)e.le<std::uint16_t>();
    std::uint64_t count = e.le<std::uint16_t>(), cd_size = e.le<std::uint32_t>(), cd_offset = e.le<std::uint32_t>();
    if (disk != 0 || cd_disk != 0) bad("multi-disk archives are not supported");
    if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {  // ZIP64
      if (*end < 20) bad("ZIP64 fields without a ZIP64 locator");
      ByteReader l(bytes_, origin_);
      l.seek(*end - 20);
      if (l.le<std::uint32_t>() != kLocator64) bad("ZIP64 fields without a ZIP64 locator");
      (void)l.le<std::uint32_t>();
      const auto end64 = l.le<std::uint64_t>();
      ByteReader z(bytes_, origin_);
      if (end64 > bytes_.size()) bad("ZIP64 end record offset past the end of the file");
      z.seek(static_cast<std::size_t>(end64));
      if (z.le<std::uint32_t>() != kEnd64) bad("no ZIP64 end-of-central-directory record where the locator points");
      (void)z.le<std::uint64_t>();  // record size
      (void)z.le<std::uint16_t>();
      (void)z.le<std::uint16_t>();
      (void)z.le<std::uint32_t>();
      (void)z.le<std::uint32_t>();
      (void)z.le<std::uint64_t>();
      count = z.le<std::uint64_t>();
      cd_size = z.le<std::uint64_t>();
      cd_offset = z.le<std::uint64_t>();
    }
    if (cd_offset > bytes_.size() || cd_size > bytes_.size() - cd_offset) bad("central directory [", cd_offset, ", +", cd_size, ") past the end");
    if (count > cd_size / 46) bad(count, " entries cannot fit in a central directory of ", cd_size, " bytes");
    ByteReader c(bytes_.subspan(static_cast<std::size_t>(cd_offset), static_cast<std::size_t>(cd_size)), origin_ + " (central directory)");
    for (std::uint64_t i = 0; i < count; ++i) {
      if (c.le<std::uint32_t>() != kCentral) bad("central directory entry ", i, " has a bad signature");
      (void)c.le<std::uint16_t>();
      (void)c.le<std::uint16_t>();
      const auto flags = c.le<std::uint16_t>();
      ZipEntry entry;
      entry.method = c.le<std::uint16_t>();
      (void)c.le<std::uint32_t>();  // time, date
      entry.crc32 = c.le<std::uint32_t>();
      entry.compressed_size = c.le<std::uint32_t>();
      entry.size = c.le<std::uint32_t>();
      const auto name_len = c.le<std::uint16_t>(), extra_len = c.le<std::uint16_t>(), comment_len = c.le<std::uint16_t>();
      (void)c.le<std::uint16_t>();
      (void)c.le<std::uint16_t>();
      (void)c.le<std::uint32_t>();
      std::uint64_t local = c.le<std::uint32_t>();
      entry.name = c.text(name_len);
      ByteReader extra(c.take(extra_len), origin_);
      (void)c.take(comment_len);
      if (flags & 1) bad("record \"", entry.name, "\" is encrypted");
      while (extra.remaining() >= 4) {  // the ZIP64 extended information holds the fields that overflowed, in order
        const auto id = extra.le<std::uint16_t>(), len = extra.le<std::uint16_t>();
        ByteReader field(extra.take(len), origin_);
        if (id != 1) continue;
        if (entry.size == 0xFFFFFFFF) entry.size = field.le<std::uint64_t>();
        if (entry.compressed_size == 0xFFFFFFFF) entry.compressed_size = field.le<std::uint64_t>();
        if (local == 0xFFFFFFFF) local = field.le<std::uint64_t>();
      }
      if (local > bytes_.size() || bytes_.size() - local < 30) bad("record \"", entry.name, "\" has its local header past the end");
      ByteReader h(bytes_, origin_);
      h.seek(static_cast<std::size_t>(local));
      if (h.le<std::uint32_t>() != kLocal) bad("record \"", entry.name, "\" has no local header where the directory points");
      h.seek(static_cast<std::size_t>(local) + 26);
      const auto local_name = h.le<std::uint16_t>(), local_extra = h.le<std::uint16_t>();
      entry.data_offset = local + 30 + local_name + local_extra;
      if (entry.method == 0 && entry.compressed_size != entry.size) bad("stored record \"", entry.name, "\" has two different sizes");
      if (entry.data_offset > bytes_.size() || entry.compressed_size > bytes_.size() - entry.data_offset)
        bad("record \"", entry.name, "\" (", entry.compressed_size, " bytes) runs past the end of the file (truncated?)");
      if (!by_name_.emplace(entry.name, entries_.size()).second) bad("record \"", entry.name, "\" appears twice");
      entries_.push_back(std::move(entry));
    }
  }

  std::span<const std::byte> bytes_;
  std::string origin_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, std::size_t> by_name_;
};

// Writes stored records, each one's data aligned to 64 bytes, then the central directory (with ZIP64 records when an
// offset or size needs them, or always with `force_zip64`, which the tests use to exercise them on small files).
class ZipWriter {
 public:
  explicit ZipWriter(AtomicFileWriter& out, bool force_zip64 = false) : out_(&out), force_zip64_(force_zip64) {}

  void add(const std::string& name, std::span<const std::byte> data) {
    Record r;
    r.name = name;
    r.size = data.size();
    r.crc = crc32_of(data);
    r.offset = out_->written();
    const bool zip64 = force_zip64_ || r.size >= 0xFFFFFFFFull;
    // local header: 30 bytes + name + extra (ZIP64 sizes when needed, then padding so the data starts 64-byte aligned)
    std::size_t extra = zip64 ? 20 : 0;
    const auto unpadded = r.offset + 30 + name.size() + extra + 4;  // +4: the padding field's own header
    const std::size_t pad = static_cast<std::size_t>((64 - unpadded % 64) % 64);
    std::string h;
    put32(h, 0x04034b50);
    put16(h, zip64 ? 45 : 20);
    put16(h, 0x0800);  // UTF-8 names
    put16(h, 0);       // stored
    put16(h, 0);
    put16(h, 0x21);  // 1980-01-01
    put32(h, r.crc);
    put32(h, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(r.size));
    put32(h, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(r.size));
    put16(h, static_cast<std::uint16_t>(name.size()));
    put16(h, static_cast<std::uint16_t>(extra + 4 + pad));
    h += name;
    if (zip64) {
      put16(h, 1);
      put16(h, 16);
      put64(h, r.size);
      put64(h, r.size);
    }
    put16(h, 0x4246);  // "FB": torch's padding field
    put16(h, static_cast<std::uint16_t>(pad));
    h.append(pad, 'Z');
    out_->write(h);
    out_->write(data);
    records_.push_back(std::move(r));
  }

  void finish() {
    const auto cd_offset = out_->written();
    std::string cd;
    for (const auto& r : records_) {
      const bool zip64 = force_zip64_ || r.size >= 0xFFFFFFFFull || r.offset >= 0xFFFFFFFFull;
      put32(cd, 0x02014b50);
      put16(cd, zip64 ? 45 : 20);
      put16(cd, zip64 ? 45 : 20);
      put16(cd, 0x0800);
      put16(cd, 0);
      put16(cd, 0);
      put16(cd, 0x21);
      put32(cd, r.crc);
      put32(cd, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(r.size));
      put32(cd, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(r.size));
      put16(cd, static_cast<std::uint16_t>(r.name.size()));
      put16(cd, zip64 ? 28 : 0);
      put16(cd, 0);
      put16(cd, 0);
      put16(cd, 0);
      put32(cd, 0);
      put32(cd, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(r.offset));
      cd += r.name;
      if (zip64) {
        put16(cd, 1);
        put16(cd, 24);
        put64(cd, r.size);
        put64(cd, r.size);
        put64(cd, r.offset);
      }
    }
    out_->write(cd);
    const auto cd_end = out_->written();
    const bool zip64 = force_zip64_ || records_.size() >= 0xFFFF || cd_end >= 0xFFFFFFFFull;
    std::string end;
    if (zip64) {
      put32(end, 0x06064b50);
      put64(end, 44);
      put16(end, 45);
      put16(end, 45);
      put32(end, 0);
      put32(end, 0);
      put64(end, records_.size());
      put64(end, records_.size());
      put64(end, cd.size());
      put64(end, cd_offset);
      put32(end, 0x07064b50);
      put32(end, 0);
      put64(end, cd_end);
      put32(end, 1);
    }
    put32(end, 0x06054b50);
    put16(end, 0);
    put16(end, 0);
    put16(end, zip64 ? 0xFFFF : static_cast<std::uint16_t>(records_.size()));
    put16(end, zip64 ? 0xFFFF : static_cast<std::uint16_t>(records_.size()));
    put32(end, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(cd.size()));
    put32(end, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(cd_offset));
    put16(end, 0);
    out_->write(end);
  }

  static std::uint32_t crc32_of(std::span<const std::byte> data) {
    uLong crc = ::crc32(0L, Z_NULL, 0);
    for (std::size_t done = 0; done < data.size();) {  // zlib takes 32-bit lengths
      const auto n = std::min<std::size_t>(data.size() - done, std::size_t{1} << 30);
      crc = ::crc32(crc, reinterpret_cast<const Bytef*>(data.data() + done), static_cast<uInt>(n));
      done += n;
    }
    return static_cast<std::uint32_t>(crc);
  }

 private:
  struct Record {
    std::string name;
    std::uint64_t size = 0, offset = 0;
    std::uint32_t crc = 0;
  };
  static void put16(std::string& s, std::uint16_t v) {
    for (int i = 0; i < 2; ++i) s += static_cast<char>(v >> (8 * i));
  }
  static void put32(std::string& s, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) s += static_cast<char>(v >> (8 * i));
  }
  static void put64(std::string& s, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) s += static_cast<char>(v >> (8 * i));
  }

  AtomicFileWriter* out_;
  bool force_zip64_;
  std::vector<Record> records_;
};

}  // namespace dreambooth::io
