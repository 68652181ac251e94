// TensorSource: the one interface behind every weight loader. A source lists its tensors (name, stored dtype, shape)
// when it is opened and reads a tensor's data only when asked for it by name. Implementations: SafetensorsFile
// (safetensors.hpp), TorchCheckpoint (torch_checkpoint.hpp: torch.save's zip and legacy formats, .ckpt / .pt / .bin),
// and the weights inside a .nemo archive (nemo_archive.hpp). open_tensor_source() (open_tensors.hpp) picks one by the
// file's first bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dreambooth/core/dtype.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/core/shape.hpp"
#include "dreambooth/core/tensor.hpp"

namespace dreambooth::io {

// Every dtype a stored tensor can have (safetensors' names; torch's storages map onto the same set). The library
// computes in F32 / F16 / BF16; the numeric rest converts to float when read.
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

// F32 / F16 / BF16 as the library's DType; nothing for the rest.
constexpr std::optional<DType> to_dtype(StDType d) {
  switch (d) {
    case StDType::F32: return DType::F32;
    case StDType::F16: return DType::F16;
    case StDType::BF16: return DType::BF16;
    default: return std::nullopt;
  }
}

struct TensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets of the data, where the source has one contiguous span (safetensors)
  std::uint64_t end = 0;
  std::uint64_t bytes() const { return static_cast<std::uint64_t>(shape.numel()) * st_dtype_size(dtype); }
};

// Converts `n` stored values of `dtype` (little-endian, packed) to float. `what` names the tensor in errors.
inline void stored_to_f32(StDType dtype, std::span<const std::byte> raw, std::span<float> out, const std::string& what) {
  const std::size_t n = out.size();
  DB_CHECK(raw.size() >= n * st_dtype_size(dtype), what, ": ", raw.size(), " bytes for ", n, " ", st_dtype_name(dtype), " values");
  const auto widen = [&]<class V>(V) {  // each stored value (little-endian host) as float
    for (std::size_t k = 0; k < n; ++k) {
      V value;
      std::memcpy(&value, raw.data() + k * sizeof(V), sizeof(V));
      out[k] = static_cast<float>(value);
    }
  };
  switch (dtype) {
    case StDType::F32: convert_to_f32(raw.data(), DType::F32, out); return;
    case StDType::F16: convert_to_f32(raw.data(), DType::F16, out); return;
    case StDType::BF16: convert_to_f32(raw.data(), DType::BF16, out); return;
    case StDType::F64: widen(double{}); return;
    case StDType::I64: widen(std::int64_t{}); return;
    case StDType::I32: widen(std::int32_t{}); return;
    case StDType::I16: widen(std::int16_t{}); return;
    case StDType::I8: widen(std::int8_t{}); return;
    case StDType::U8:
    case StDType::BOOL: widen(std::uint8_t{}); return;
    default: fail(what, " has dtype ", st_dtype_name(dtype), ", which does not convert to float");
  }
}

class TensorSource {
 public:
  virtual ~TensorSource() = default;

  // Names the source in errors: a file, or an archive and its member ("model.nemo:model_weights.ckpt").
  virtual const std::string& path() const = 0;
  virtual const std::map<std::string, TensorInfo>& tensors() const = 0;
  virtual const std::map<std::string, std::string>& metadata() const {
    static const std::map<std::string, std::string> none;
    return none;
  }
  // The format, for messages ("safetensors", "torch zip", "torch legacy").
  virtual std::string_view format() const = 0;

  bool contains(const std::string& name) const { return tensors().count(name) != 0; }
  const TensorInfo& info(const std::string& name) const {
    const auto it = tensors().find(name);
    if (it == tensors().end()) fail(format(), " file ", path(), ": no tensor named \"", name, "\"");
    return it->second;
  }

  // The stored values in C order, packed, little-endian (numel * dtype size bytes).
  std::vector<std::byte> read_raw(const std::string& name) const {
    const TensorInfo& i = info(name);
    if (const auto span = contiguous(i)) return {span->begin(), span->end()};
    std::vector<std::byte> out(static_cast<std::size_t>(i.bytes()));
    gather(i, out.data());
    return out;
  }

  // The tensor converted to floats (F32, F16, BF16, F64 and the integer dtypes).
  std::vector<float> read_f32(const std::string& name) const {
    const TensorInfo& i = info(name);
    std::vector<float> out(static_cast<std::size_t>(i.shape.numel()));
    const std::string what = std::string(format()) + " file " + path() + ": tensor \"" + name + "\"";
    if (const auto span = contiguous(i)) {
      stored_to_f32(i.dtype, *span, out, what);
    } else {
      std::vector<std::byte> raw(static_cast<std::size_t>(i.bytes()));
      gather(i, raw.data());
      stored_to_f32(i.dtype, raw, out, what);
    }
    return out;
  }

  // Loads a tensor into backend memory as `dtype` (converting), checking the expected shape when one is given.
  template <class B>
  Tensor<B> load(B& backend, const std::string& name, DType dtype = DType::F32, std::optional<Shape> expected = std::nullopt) const {
    const TensorInfo& i = info(name);
    if (expected && !(*expected == i.shape))
      fail(format(), " file ", path(), ": tensor \"", name, "\" has shape ", i.shape.str(), ", expected ", expected->str());
    return Tensor<B>::from_host(backend, i.shape, read_f32(name), dtype);
  }

 protected:
  // The stored bytes when the source holds the tensor as one packed span (no copy); nothing otherwise.
  virtual std::optional<std::span<const std::byte>> contiguous(const TensorInfo& info) const = 0;
  // Writes the packed C-order bytes of a tensor the source does not hold contiguously.
  virtual void gather(const TensorInfo& info, std::byte* out) const = 0;
};

}  // namespace dreambooth::io
