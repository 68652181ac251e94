// Moving a model's parameters in and out of checkpoints: a walk over the model's named parameters, each found through
// its Binding (name_conversion.hpp) in any TensorSource, its shape and dtype checked, fused tensors sliced; and the same
// walk backwards into a TensorWriter. Errors name the tensor and the file.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>

#include "dreambooth/io/name_conversion.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/io/tensor_source.hpp"
#include "dreambooth/io/tensor_writer.hpp"
#include "dreambooth/nn/modules.hpp"

namespace dreambooth::io {

namespace checkpoint_detail {
// Equal shapes, or equal up to trailing unit dimensions ([C, C, 1, 1] 1x1-convolution weights against a
// Linear's [C, C], which checkpoints use interchangeably).
inline bool compatible(const Shape& stored, const Shape& expected) {
  if (stored == expected) return true;
  if (stored.numel() != expected.numel()) return false;
  const auto strip = [](const Shape& s) {
    int r = s.rank();
    while (r > 1 && s[r - 1] == 1) --r;
    return Shape(s.begin(), s.begin() + r);
  };
  return strip(stored) == strip(expected);
}

// The stored shape of a fused tensor holding `parts` parameters of `shape`: dim 0 times `parts`.
inline Shape fused_shape(const Shape& shape, int parts) {
  Shape s = shape;
  s[0] = shape[0] * parts;
  return s;
}

// Copies part `b.part` of a fused tensor ([groups, parts, rows, ...] along dim 0) into `out`, or back (`into_fused`).
inline void slice_fused(std::vector<float>& fused, std::vector<float>& part, const Shape& part_shape, const Binding& b, bool into_fused) {
  const auto rows = part_shape[0], row = part_shape.numel() / std::max<std::int64_t>(1, rows);
  DB_CHECK(rows % b.groups == 0, "fused tensor \"", b.stored, "\": ", rows, " rows do not split into ", b.groups, " groups");
  const auto per = rows / b.groups;
  for (std::int64_t g = 0; g < b.groups; ++g)
    for (std::int64_t r = 0; r < per; ++r) {
      const auto src = ((g * b.parts + b.part) * per + r) * row, dst = (g * per + r) * row;
      if (into_fused)
        std::copy_n(part.begin() + dst, row, fused.begin() + src);
      else
        std::copy_n(fused.begin() + src, row, part.begin() + dst);
    }
}
}  // namespace checkpoint_detail

// Loads every parameter the model visits from `source`, each from where `map` binds it. Every stored tensor whose name
// starts with one of `owned_prefixes` must be consumed, unless `layout` says it holds no weight (a buffer, an unused
// projection); an unexpected tensor there is an error, so a wrong configuration cannot load silently.
template <class Model>
void load_parameters(Model& model, const TensorSource& source, const NameMap& map, const std::vector<std::string>& owned_prefixes,
                     const Layout* layout = nullptr) {
  std::unordered_map<std::string, const Binding*> bindings;
  for (const auto& [name, b] : map) bindings[name] = &b;
  std::set<std::string> used;
  std::string fused_name;
  std::vector<float> fused_values;  // the last fused tensor read (its parts come one after another)
  model.visit([&](const std::string& name, auto& p) {
    const auto it = bindings.find(name);
    if (it == bindings.end()) fail("checkpoint ", source.path(), ": no stored name for parameter ", name);
    const Binding& b = *it->second;
    if (!source.contains(b.stored)) fail("checkpoint ", source.path(), ": missing tensor \"", b.stored, "\" (parameter ", name, ")");
    const auto& info = source.info(b.stored);
    if (info.dtype != StDType::F32 && info.dtype != StDType::F16 && info.dtype != StDType::BF16 && info.dtype != StDType::F64)
      fail("checkpoint ", source.path(), ": tensor \"", b.stored, "\" has dtype ", st_dtype_name(info.dtype), "; expected F32, F16, BF16 or F64");
    used.insert(b.stored);
    if (b.fused()) {
      const auto expected = checkpoint_detail::fused_shape(p.shape, b.parts);
      if (!(info.shape == expected))
        fail("checkpoint ", source.path(), ": fused tensor \"", b.stored, "\" has shape ", info.shape.str(), "; ", b.parts, " parameters of shape ",
             p.shape.str(), " need ", expected.str());
      if (fused_name != b.stored) fused_values = source.read_f32(b.stored), fused_name = b.stored;
      std::vector<float> values(static_cast<std::size_t>(p.shape.numel()));
      checkpoint_detail::slice_fused(fused_values, values, p.shape, b, false);
      p.value.copy_from_host(values);
      return;
    }
    if (!checkpoint_detail::compatible(info.shape, p.shape))
      fail("checkpoint ", source.path(), ": tensor \"", b.stored, "\" has shape ", info.shape.str(), "; the model expects ", p.shape.str());
    p.value.copy_from_host(source.read_f32(b.stored));
  });
  for (const auto& [key, info] : source.tensors()) {
    if (used.count(key) || (layout && layout->ignored(key)) || key.ends_with("position_ids")) continue;
    for (const auto& prefix : owned_prefixes)
      if (key.rfind(prefix, 0) == 0)
        fail("checkpoint ", source.path(), ": unexpected tensor \"", key, "\" (shape ", info.shape.str(), ") that the model has no place for");
  }
}

// Adds every parameter the model visits to `writer` under its binding (fused tensors assembled from their parts,
// 1x1-convolution weights given their two unit dimensions), as `dtype`.
template <class Model>
void write_parameters(Model& model, const NameMap& map, TensorWriter& writer, DType dtype = DType::F32) {
  std::unordered_map<std::string, std::pair<Shape, std::vector<float>>> values;
  model.visit([&](const std::string& name, auto& p) { values[name] = {p.shape, p.value.to_host()}; });
  std::map<std::string, std::vector<const std::pair<std::string, Binding>*>> fused;
  std::vector<std::string> order;
  for (const auto& entry : map) {
    const auto& [name, b] = entry;
    const auto it = values.find(name);
    if (it == values.end()) fail("checkpoint writer: the model has no parameter ", name);
    if (!b.fused()) {
      auto shape = it->second.first;
      if (b.conv1x1 && shape.rank() == 2) shape = Shape{shape[0], shape[1], 1, 1};
      writer.add(b.stored, shape, it->second.second, dtype);
      continue;
    }
    if (!fused.count(b.stored)) order.push_back(b.stored);
    fused[b.stored].push_back(&entry);
  }
  for (const auto& stored : order) {
    const auto& parts = fused[stored];
    const auto& first = values[parts.front()->first];
    const auto shape = checkpoint_detail::fused_shape(first.first, parts.front()->second.parts);
    if (static_cast<int>(parts.size()) != parts.front()->second.parts) fail("checkpoint writer: fused tensor \"", stored, "\" is missing parts");
    std::vector<float> out(static_cast<std::size_t>(shape.numel()));
    for (const auto* entry : parts) checkpoint_detail::slice_fused(out, values[entry->first].second, first.first, entry->second, true);
    writer.add(stored, shape, out, dtype);
  }
}

// The model's parameters under their own (diffusers) names: the project's checkpoints and component weights files.
template <class Model>
NameMap own_names(Model& model) {
  NameMap m;
  model.visit([&](const std::string& n, auto&) { m.emplace_back(n, Binding{n}); });
  return m;
}
template <class Model>
void load_parameters(Model& model, const TensorSource& source) {
  load_parameters(model, source, own_names(model), {""});
}
template <class Model>
void save_parameters(Model& model, const std::filesystem::path& path, const std::map<std::string, std::string>& metadata = {},
                     DType dtype = DType::F32) {
  SafetensorsWriter writer;
  for (const auto& [k, v] : metadata) writer.set_metadata(k, v);
  write_parameters(model, own_names(model), writer, dtype);
  writer.write(path);
}

// A component folder in a pipeline's layout: `path` itself when it holds config.json, else `path/subfolder`.
inline std::filesystem::path component_folder(const std::filesystem::path& path, const std::string& subfolder, const std::string& what) {
  if (std::filesystem::exists(path / "config.json")) return path;
  if (std::filesystem::exists(path / subfolder / "config.json")) return path / subfolder;
  fail(what, ": no config.json in ", path.string(), " or ", (path / subfolder).string());
}

}  // namespace dreambooth::io
