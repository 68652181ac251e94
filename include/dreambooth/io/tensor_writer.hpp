// TensorWriter: what every weights writer shares. Tensors are collected in order (name, stored dtype, shape, packed
// little-endian bytes), each name once, then write(path) produces the file atomically. Implementations:
// SafetensorsWriter (safetensors.hpp) and TorchCheckpointWriter (torch_checkpoint_writer.hpp).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/dtype.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/core/shape.hpp"
#include "dreambooth/core/tensor.hpp"
#include "dreambooth/io/tensor_source.hpp"

namespace dreambooth::io {

class TensorWriter {
 public:
  virtual ~TensorWriter() = default;

  // Text metadata (safetensors' __metadata__; formats without a place for it drop it).
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  void add_raw(const std::string& name, StDType dtype, Shape shape, std::span<const std::byte> data) {
    DB_CHECK(name != "__metadata__", "tensor writer: \"__metadata__\" is reserved");
    DB_CHECK(!names_.count(name), "tensor writer: tensor \"", name, "\" added twice");
    const auto expected = static_cast<std::size_t>(shape.numel()) * st_dtype_size(dtype);
    DB_CHECK(data.size() == expected, "tensor writer: tensor \"", name, "\" has ", data.size(), " bytes, ", st_dtype_name(dtype), " ",
             shape.str(), " needs ", expected);
    names_.insert(name);
    entries_.push_back({name, dtype, shape, static_cast<std::uint64_t>(buffer_.size())});
    buffer_.insert(buffer_.end(), data.begin(), data.end());
  }

  // Adds floats stored as `dtype` (converted with round-to-nearest-even).
  void add(const std::string& name, Shape shape, std::span<const float> values, DType dtype = DType::F32) {
    DB_CHECK(static_cast<std::int64_t>(values.size()) == shape.numel(), "tensor writer: tensor \"", name, "\" has ", values.size(),
             " values for shape ", shape.str());
    std::vector<std::byte> stored(values.size() * dtype_size(dtype));
    convert_from_f32(values, dtype, stored.data());
    add_raw(name, to_st_dtype(dtype), shape, stored);
  }

  template <class B>
  void add(const std::string& name, const Tensor<B>& tensor, std::optional<DType> dtype = std::nullopt) {
    add(name, tensor.shape(), tensor.to_host(), dtype.value_or(tensor.dtype()));
  }

  std::size_t size() const { return entries_.size(); }

  virtual void write(const std::filesystem::path& path) const = 0;

 protected:
  struct Entry {
    std::string name;
    StDType dtype;
    Shape shape;
    std::uint64_t offset;  // into buffer_
    std::uint64_t bytes() const { return static_cast<std::uint64_t>(shape.numel()) * st_dtype_size(dtype); }
  };
  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::vector<std::byte> buffer_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace dreambooth::io
