// safetensors: a memory-mapped reader that validates everything the format requires, and an atomic writer.
//
// Format: u64 little-endian N, N bytes of UTF-8 JSON, then the data buffer. The JSON object maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (relative to the buffer) plus an optional
// "__metadata__" object of strings. A valid file has N <= 100,000,000, byte spans equal to
// product(shape) * dtype size, offsets contiguous from 0 covering the buffer exactly, no overlaps, no
// duplicate names. Tensors are read lazily by name: opening a file parses only its header.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/dtype.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/core/shape.hpp"
#include "dreambooth/core/tensor.hpp"

namespace dreambooth::io {

// Every dtype the safetensors format defines (the library computes in F32 / F16 / BF16; the rest can be
// read raw, and the numeric ones converted to float).
enum class StDType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };

inline std::optional<StDType> parse_st_dtype(std::string_view name) {
  static constexpr std::pair<std::string_view, StDType> kNames[] = {
      {"BOOL", StDType::BOOL}, {"U8", StDType::U8},     {"I8", StDType::I8},   {"I16", StDType::I16},         {"U16", StDType::U16},
      {"F16", StDType::F16},   {"BF16", StDType::BF16}, {"I32", StDType::I32}, {"U32", StDType::U32},         {"F32", StDType::F32},
      {"F64", StDType::F64},   {"I64", StDType::I64},   {"U64", StDType::U64}, {"F8_E4M3", StDType::F8_E4M3}, {"F8_E5M2", StDType::F8_E5M2}};
  for (const auto& [n, d] : kNames)
    if (n == name) return d;
  return std::nullopt;
}

constexpr std::string_view st_dtype_name(StDType d) {
  constexpr std::string_view kNames[] = {"BOOL", "U8",  "I8",  "I16", "U16", "F16",     "BF16",   "I32",
                                         "U32",  "F32", "F64", "I64", "U64", "F8_E4M3", "F8_E5M2"};
  return kNames[static_cast<int>(d)];
}

constexpr std::size_t st_dtype_size(StDType d) {
  switch (d) {
    case StDType::BOOL:
    case StDType::U8:
    case StDType::I8:
    case StDType::F8_E4M3:
    case StDType::F8_E5M2: return 1;
    case StDType::I16:
    case StDType::U16:
    case StDType::F16:
    case StDType::BF16: return 2;
    case StDType::I32:
    case StDType::U32:
    case StDType::F32: return 4;
    case StDType::F64:
    case StDType::I64:
    case StDType::U64: return 8;
  }
  return 0;
}

constexpr StDType to_st_dtype(DType d) {
  switch (d) {
    case DType::F32: return StDType::F32;
    case DType::F16: return StDType::F16;
    case DType::BF16: return StDType::BF16;
    case DType::I32: return StDType::I32;
  }
  return StDType::F32;
}

struct TensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets into the data buffer
  std::uint64_t end = 0;
  std::uint64_t bytes() const { return end - begin; }
};

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

// Parses and validates a whole file image (the first 8 bytes, the header, and the data buffer's size).
// `origin` names the file in error messages.
inline void parse_safetensors_header(std::span<const std::byte> file, const std::string& origin, std::map<std::string, TensorInfo>& tensors,
                                     std::map<std::string, std::string>& metadata, std::uint64_t& data_start) {
  const auto bad = [&](auto&&... parts) { fail("safetensors file ", origin, ": ", parts...); };
  if (file.size() < 8) bad("only ", file.size(), " bytes; a file starts with an 8-byte header length");
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<std::uint64_t>(file[static_cast<std::size_t>(i)]) << (8 * i);
  if (header_len > kMaxHeaderBytes) bad("header length ", header_len, " exceeds the format's limit of ", kMaxHeaderBytes, " bytes");
  if (header_len > file.size() - 8) bad("header length ", header_len, " runs past the end of the file (", file.size(), " bytes)");
  if (header_len < 2) bad("header length ", header_len, " is too short to hold a JSON object");
  const auto* header_begin = reinterpret_cast<const char*>(file.data() + 8);

  // Parse, refusing duplicate names at the top level (JSON parsers otherwise keep one silently).
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json header;
  try {
    header =
        nlohmann::json::parse(header_begin, header_begin + header_len, [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
          if (depth == 1 && event == nlohmann::json::parse_event_t::key) {
            const auto key = parsed.get<std::string>();
            if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
          }
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    bad("header is not valid JSON: ", e.what());
  }
  if (!duplicate.empty()) bad("tensor \"", duplicate, "\" appears twice in the header");
  if (!header.is_object()) bad("header is not a JSON object");

  std::vector<const TensorInfo*> by_offset;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) bad("__metadata__ is not an object");
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string()) bad("__metadata__ value for \"", key, "\" is not a string");
        metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const auto where = "tensor \"" + name + "\": ";
    if (!entry.is_object()) bad(where, "entry is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) bad(where, "missing or non-string \"dtype\"");
    if (!entry.contains("shape") || !entry["shape"].is_array()) bad(where, "missing or non-array \"shape\"");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
      bad(where, "\"data_offsets\" must be an array of two integers");
    TensorInfo info;
    info.name = name;
    const auto dtype_text = entry["dtype"].get<std::string>();
    const auto dtype = parse_st_dtype(dtype_text);
    if (!dtype) bad(where, "unknown dtype \"", dtype_text, "\"");
    info.dtype = *dtype;
    if (entry["shape"].size() > static_cast<std::size_t>(Shape::kMaxRank)) bad(where, "rank ", entry["shape"].size(), " exceeds ", Shape::kMaxRank);
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const auto& dim : entry["shape"]) {
      if (!dim.is_number_unsigned()) bad(where, "shape entry ", dim.dump(), " is not a non-negative integer");
      const auto value = dim.get<std::uint64_t>();
      if (value > static_cast<std::uint64_t>(INT64_MAX)) overflow = true;
      if (value != 0 && numel > UINT64_MAX / value) overflow = true;
      numel *= value;
      info.shape.push_back(static_cast<std::int64_t>(std::min<std::uint64_t>(value, INT64_MAX)));
    }
    if (overflow || numel > UINT64_MAX / st_dtype_size(info.dtype)) bad(where, "shape ", entry["shape"].dump(), " overflows its byte size");
    for (const auto& offset : entry["data_offsets"])
      if (!offset.is_number_unsigned()) bad(where, "data offset ", offset.dump(), " is not a non-negative integer");
    info.begin = entry["data_offsets"][0].get<std::uint64_t>();
    info.end = entry["data_offsets"][1].get<std::uint64_t>();
    if (info.begin > info.end) bad(where, "data_offsets [", info.begin, ", ", info.end, "] end before they begin");
    const std::uint64_t expected = numel * st_dtype_size(info.dtype);
    if (info.end - info.begin != expected)
      bad(where, "data_offsets span ", info.end - info.begin, " bytes but ", st_dtype_name(info.dtype), " ", info.shape.str(), " needs ", expected);
    tensors.emplace(name, std::move(info));
  }
  for (const auto& [name, info] : tensors) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  data_start = 8 + header_len;
  const std::uint64_t buffer_size = file.size() - data_start;
  std::uint64_t cursor = 0;
  for (const TensorInfo* info : by_offset) {
    if (info->begin < cursor) bad("tensor \"", info->name, "\" at bytes [", info->begin, ", ", info->end, ") overlaps the tensor before it");
    if (info->begin > cursor) bad("tensor \"", info->name, "\" starts at byte ", info->begin, " leaving a gap after byte ", cursor);
    if (info->end > buffer_size)
      bad("tensor \"", info->name, "\" ends at byte ", info->end, " past the data buffer of ", buffer_size, " bytes (truncated file?)");
    cursor = info->end;
  }
  if (cursor != buffer_size) bad("data buffer holds ", buffer_size, " bytes but the tensors cover ", cursor);
}

// A safetensors file, memory-mapped read-only. Opening validates the header; data is touched only when read.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path) : path_(path.string()) {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("safetensors file ", path_, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      fail("safetensors file ", path_, ": cannot stat: ", std::strerror(err));
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (mapped == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        fail("safetensors file ", path_, ": cannot map: ", std::strerror(err));
      }
      data_ = static_cast<const std::byte*>(mapped);
    }
    ::close(fd);
    try {
      parse_safetensors_header({data_, size_}, path_, tensors_, metadata_, data_start_);
    } catch (...) {
      unmap();
      throw;
    }
  }
  ~SafetensorsFile() { unmap(); }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  const TensorInfo& info(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) fail("safetensors file ", path_, ": no tensor named \"", name, "\"");
    return it->second;
  }

  // The stored bytes of a tensor (little-endian, C order).
  std::span<const std::byte> bytes(const std::string& name) const {
    const TensorInfo& i = info(name);
    return {data_ + data_start_ + i.begin, static_cast<std::size_t>(i.bytes())};
  }

  // The tensor converted to floats (F32, F16, BF16, F64 and the integer dtypes).
  std::vector<float> read_f32(const std::string& name) const {
    const TensorInfo& i = info(name);
    const auto raw = bytes(name);
    const std::size_t n = static_cast<std::size_t>(i.shape.numel());
    std::vector<float> out(n);
    switch (i.dtype) {
      case StDType::F32: convert_to_f32(raw.data(), DType::F32, out); break;
      case StDType::F16: convert_to_f32(raw.data(), DType::F16, out); break;
      case StDType::BF16: convert_to_f32(raw.data(), DType::BF16, out); break;
      case StDType::F64:
        for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<float>(load<double>(raw, k));
        break;
      case StDType::I64:
        for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<float>(load<std::int64_t>(raw, k));
        break;
      case StDType::I32:
        for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<float>(load<std::int32_t>(raw, k));
        break;
      case StDType::U8:
        for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<float>(load<std::uint8_t>(raw, k));
        break;
      default: fail("safetensors file ", path_, ": tensor \"", name, "\" has dtype ", st_dtype_name(i.dtype), ", which does not convert to float");
    }
    return out;
  }

  // Loads a tensor into backend memory as `dtype` (converting), checking the expected shape when one is given.
  template <class B>
  Tensor<B> load(B& backend, const std::string& name, DType dtype = DType::F32, std::optional<Shape> expected = std::nullopt) const {
    const TensorInfo& i = info(name);
    if (expected && !(*expected == i.shape))
      fail("safetensors file ", path_, ": tensor \"", name, "\" has shape ", i.shape.str(), ", expected ", expected->str());
    return Tensor<B>::from_host(backend, i.shape, read_f32(name), dtype);
  }

 private:
  template <class V>
  static V load(std::span<const std::byte> raw, std::size_t index) {
    V value;
    std::memcpy(&value, raw.data() + index * sizeof(V), sizeof(V));  // little-endian host
    return value;
  }
  void unmap() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
  }

  std::string path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors, then writes them atomically: to `path.tmp-<pid>`, flushed and synced, then renamed.
class SafetensorsWriter {
 public:
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  void add_raw(const std::string& name, StDType dtype, Shape shape, std::span<const std::byte> data) {
    DB_CHECK(name != "__metadata__", "safetensors writer: \"__metadata__\" is reserved");
    DB_CHECK(!names_.count(name), "safetensors writer: tensor \"", name, "\" added twice");
    const auto expected = static_cast<std::size_t>(shape.numel()) * st_dtype_size(dtype);
    DB_CHECK(data.size() == expected, "safetensors writer: tensor \"", name, "\" has ", data.size(), " bytes, ", st_dtype_name(dtype), " ",
             shape.str(), " needs ", expected);
    names_.insert(name);
    entries_.push_back({name, dtype, shape, static_cast<std::uint64_t>(buffer_.size())});
    buffer_.insert(buffer_.end(), data.begin(), data.end());
  }

  // Adds floats stored as `dtype` (converted with round-to-nearest-even).
  void add(const std::string& name, Shape shape, std::span<const float> values, DType dtype = DType::F32) {
    DB_CHECK(static_cast<std::int64_t>(values.size()) == shape.numel(), "safetensors writer: tensor \"", name, "\" has ", values.size(),
             " values for shape ", shape.str());
    std::vector<std::byte> stored(values.size() * dtype_size(dtype));
    convert_from_f32(values, dtype, stored.data());
    add_raw(name, to_st_dtype(dtype), shape, stored);
  }

  template <class B>
  void add(const std::string& name, const Tensor<B>& tensor, std::optional<DType> dtype = std::nullopt) {
    add(name, tensor.shape(), tensor.to_host(), dtype.value_or(tensor.dtype()));
  }

  void write(const std::filesystem::path& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const auto& e : entries_) {
      const auto bytes = static_cast<std::uint64_t>(e.shape.numel()) * st_dtype_size(e.dtype);
      header[e.name] = {{"dtype", st_dtype_name(e.dtype)},
                        {"shape", std::vector<std::int64_t>(e.shape.begin(), e.shape.end())},
                        {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data buffer starts 8-byte aligned
    std::byte length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>(static_cast<std::uint64_t>(text.size()) >> (8 * i));

    const std::filesystem::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("safetensors writer: cannot create ", tmp.string(), ": ", std::strerror(errno));
    const auto write_all = [&](const void* p, std::size_t n) {
      const auto* c = static_cast<const char*>(p);
      while (n > 0) {
        const ssize_t w = ::write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          const int err = errno;
          ::close(fd);
          std::filesystem::remove(tmp);
          fail("safetensors writer: writing ", tmp.string(), ": ", std::strerror(err));
        }
        c += w;
        n -= static_cast<std::size_t>(w);
      }
    };
    write_all(length, 8);
    write_all(text.data(), text.size());
    write_all(buffer_.data(), buffer_.size());
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
      std::filesystem::remove(tmp);
      fail("safetensors writer: cannot sync ", tmp.string(), ": ", std::strerror(errno));
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      std::filesystem::remove(tmp);
      fail("safetensors writer: cannot rename ", tmp.string(), " to ", path.string(), ": ", ec.message());
    }
  }

 private:
  struct Entry {
    std::string name;
    StDType dtype;
    Shape shape;
    std::uint64_t offset;
  };
  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::vector<std::byte> buffer_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace dreambooth::io
