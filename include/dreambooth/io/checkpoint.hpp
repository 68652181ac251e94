// Loading a model's parameters from safetensors files: a walk over the model's named parameters, each looked up
// by its (mapped) name, its shape and dtype checked. Errors name the tensor and the file.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "dreambooth/io/safetensors.hpp"
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
}  // namespace checkpoint_detail

// Loads every parameter the model visits. `stored_name` maps a model name to the file's name; every file tensor whose
// name starts with `owned_prefix` must be consumed (an unexpected tensor there is an error too).
template <class Model, class B>
void load_parameters(B& /*backend*/, Model& model, const SafetensorsFile& file, const std::function<std::string(const std::string&)>& stored_name,
                     const std::string& owned_prefix = "") {
  std::set<std::string> used;
  model.visit([&](const std::string& name, nn::Param<B>& p) {
    const auto key = stored_name(name);
    if (!file.contains(key)) fail("checkpoint ", file.path(), ": missing tensor \"", key, "\" (parameter ", name, ")");
    const auto& info = file.info(key);
    if (info.dtype != StDType::F32 && info.dtype != StDType::F16 && info.dtype != StDType::BF16)
      fail("checkpoint ", file.path(), ": tensor \"", key, "\" has dtype ", st_dtype_name(info.dtype), "; expected F32, F16 or BF16");
    if (!checkpoint_detail::compatible(info.shape, p.shape))
      fail("checkpoint ", file.path(), ": tensor \"", key, "\" has shape ", info.shape.str(), "; the model expects ", p.shape.str());
    p.value.copy_from_host(file.read_f32(key));
    used.insert(key);
  });
  for (const auto& [key, info] : file.tensors())
    if (key.rfind(owned_prefix, 0) == 0 && !used.count(key) && !(key.size() >= 12 && key.ends_with("position_ids")))  // a buffer, not a weight
      fail("checkpoint ", file.path(), ": unexpected tensor \"", key, "\" (shape ", info.shape.str(), ") that the model has no place for");
}

// A component folder in a pipeline's layout: `path` itself when it holds config.json, else `path/subfolder`.
inline std::filesystem::path component_folder(const std::filesystem::path& path, const std::string& subfolder, const std::string& what) {
  if (std::filesystem::exists(path / "config.json")) return path;
  if (std::filesystem::exists(path / subfolder / "config.json")) return path / subfolder;
  fail(what, ": no config.json in ", path.string(), " or ", (path / subfolder).string());
}

// Builds a model from a component folder (config.json read by Config::from_file, weights in `weights_name`, named as
// the model names its parameters), allocates it and loads it.
template <class Model, class Config, class B>
std::unique_ptr<Model> load_from_folder(B& backend, const std::filesystem::path& folder, const std::string& weights_name, const std::string& what) {
  auto model = std::make_unique<Model>(Config::from_file(folder / "config.json"));
  const auto weights = folder / weights_name;
  if (!std::filesystem::exists(weights)) fail(what, ": missing weights file ", weights.string());
  model->allocate(backend);
  load_parameters(backend, *model, SafetensorsFile(weights), [](const std::string& name) { return name; });
  return model;
}

// Writes every parameter the model visits (values, or gradients / other tensors through `pick`) to one safetensors
// file under `stored_name(name)`, atomically.
template <class B, class Model>
void save_parameters(Model& model, const std::filesystem::path& path, const std::function<std::string(const std::string&)>& stored_name,
                     const std::map<std::string, std::string>& metadata = {}) {
  SafetensorsWriter writer;
  for (const auto& [k, v] : metadata) writer.set_metadata(k, v);
  model.visit([&](const std::string& name, nn::Param<B>& p) { writer.add(stored_name(name), p.value.reshape(p.shape)); });
  writer.write(path);
}

}  // namespace dreambooth::io
