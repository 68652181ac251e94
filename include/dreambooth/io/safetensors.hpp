// safetensors: a memory-mapped reader that validates everything the format requires, and an atomic writer.
//
// Format: u64 little-endian N, N bytes of UTF-8 JSON, then the data buffer. The JSON object maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (relative to the buffer) plus an optional
// "__metadata__" object of strings. A valid file has N <= 100,000,000, byte spans equal to
// product(shape) * dtype size, offsets contiguous from 0 covering the buffer exactly, no overlaps, no
// duplicate names. Tensors are read lazily by name: opening a file parses only its header.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
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
#include "dreambooth/io/atomic_file.hpp"
#include "dreambooth/io/mapped_file.hpp"
#include "dreambooth/io/tensor_source.hpp"
#include "dreambooth/io/tensor_writer.hpp"

namespace dreambooth::io {

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
  } catch (const nlohmann::json::parse_error& e) {
    // nlohmann's byte is 1-based, at the offending character; the header starts after the 8-byte length
    const auto at = e.byte > 0 ? e.byte - 1 : 0;
    bad("header is not valid JSON at byte ", 8 + at, " of the file (byte ", at, " of the header): ", e.what());
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
class SafetensorsFile final : public TensorSource {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path) : file_(std::make_shared<MappedFile>(path, "safetensors file")) {
    parse_safetensors_header(file_->bytes(), file_->path(), tensors_, metadata_, data_start_);
  }
  // A safetensors image inside a larger mapped file (an archive member); `origin` names it in errors.
  SafetensorsFile(std::shared_ptr<const MappedFile> file, std::size_t offset, std::size_t size, std::string origin)
      : file_(std::move(file)), offset_(offset), origin_(std::move(origin)) {
    parse_safetensors_header(file_->bytes().subspan(offset_, size), origin_, tensors_, metadata_, data_start_);
  }

  const std::string& path() const override { return origin_.empty() ? file_->path() : origin_; }
  std::string_view format() const override { return "safetensors"; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const override { return tensors_; }

  // The stored bytes of a tensor (little-endian, C order).
  std::span<const std::byte> bytes(const std::string& name) const { return *contiguous(info(name)); }

 protected:
  std::optional<std::span<const std::byte>> contiguous(const TensorInfo& i) const override {
    return file_->bytes().subspan(offset_ + static_cast<std::size_t>(data_start_ + i.begin), static_cast<std::size_t>(i.end - i.begin));
  }
  void gather(const TensorInfo& i, std::byte* out) const override {
    const auto span = *contiguous(i);
    std::memcpy(out, span.data(), span.size());
  }

 private:
  std::shared_ptr<const MappedFile> file_;
  std::size_t offset_ = 0;
  std::string origin_;
  std::uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors, then writes them atomically (atomic_file.hpp) as one safetensors file.
class SafetensorsWriter final : public TensorWriter {
 public:
  using TensorWriter::add;

  void write(const std::filesystem::path& path) const override {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    auto metadata = metadata_;
    metadata.emplace("format", "pt");  // what transformers' and diffusers' loaders look for; a writer's own value wins
    header["__metadata__"] = metadata;
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

    AtomicFileWriter out(path, "safetensors writer");
    out.write(length, 8);
    out.write(text);
    out.write(buffer_);
    out.commit();
  }
};

}  // namespace dreambooth::io
