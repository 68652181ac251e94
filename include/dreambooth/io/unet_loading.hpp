// Loading a UNet: from a diffusers folder (unet/ or the folder itself: config.json + diffusion_pytorch_model.safetensors
// or .bin), or from any weights file (safetensors, .ckpt / .pt / .bin) in any layout name_conversion.hpp knows (original,
// NeMo, a bare diffusers state dict), found from its keys. A weights file holds no configuration: the caller gives it, or
// SD 1.5's is used (SD 2.x's when the file's text encoder is OpenCLIP).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/io/name_conversion.hpp"
#include "dreambooth/io/open_tensors.hpp"
#include "dreambooth/models/unet.hpp"

namespace dreambooth::io {

namespace fs = std::filesystem;

// The first weights file of `names` in a component folder.
inline fs::path component_weights(const fs::path& folder, std::initializer_list<const char*> names, const std::string& what) {
  for (const char* name : names)
    if (fs::exists(folder / name)) return folder / name;
  std::string list;
  for (const char* name : names) list += (list.empty() ? "" : " or ") + std::string(name);
  fail(what, ": missing weights file in ", folder.string(), " (", list, ")");
}

// A model of `config` whose parameters are read from `source` (names in `layout`, under its `prefix` member): every
// component's loader (UNet, VAE, CLIP text encoder) is this.
template <class Model, class B, class Config>
std::unique_ptr<Model> load_model_from(B& backend, const TensorSource& source, const Layout& layout, const Config& config,
                                       std::string Layout::*prefix) {
  auto model = std::make_unique<Model>(config);
  model->allocate(backend);
  load_parameters(*model, source, name_map(*model, layout), {layout.*prefix}, &layout);
  return model;
}

// A component of a diffusers / transformers folder (`subfolder`/ or the folder itself): config.json, and the first of
// `weights` that exists.
template <class Model, class Config, class B>
std::unique_ptr<Model> load_model_folder(B& backend, const fs::path& path, const std::string& subfolder, const std::string& what,
                                         std::initializer_list<const char*> weights, std::string Layout::*prefix) {
  const auto folder = component_folder(path, subfolder, what);
  const auto source = open_tensor_source(component_weights(folder, weights, what));
  return load_model_from<Model>(backend, *source, Layout::diffusers(), Config::from_file(folder / "config.json"), prefix);
}

template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_from(B& backend, const TensorSource& source, const Layout& layout,
                                                                const models::UNetConfig& config) {
  return load_model_from<models::UNet2DConditionModel<B>>(backend, source, layout, config, &Layout::unet_prefix);
}

template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_diffusers(B& backend, const fs::path& path) {
  return load_model_folder<models::UNet2DConditionModel<B>, models::UNetConfig>(
      backend, path, "unet", "UNet", {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"}, &Layout::unet_prefix);
}

// A UNet from a single weights file (its layout found from its keys).
template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_single_file(B& backend, const fs::path& file, std::optional<models::UNetConfig> config) {
  const auto source = open_tensor_source(file);
  Layout layout;
  if (!detect_unet(*source, layout))
    fail("UNet: ", file.string(), " holds no UNet weights (no key such as model.diffusion_model.input_blocks.0.0.weight or conv_in.weight)");
  detect_text(*source, layout);
  if (!config) config = layout.text == TextNaming::OpenCLIP ? models::UNetConfig::sd2() : models::UNetConfig::sd15();
  return load_unet_from(backend, *source, layout, *config);
}

// A diffusers folder, or a single weights file (with `config`, or SD 1.x / 2.x's as above).
template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet(B& backend, const fs::path& path,
                                                           std::optional<models::UNetConfig> config = std::nullopt) {
  if (fs::is_directory(path)) return load_unet_diffusers(backend, path);
  if (!fs::exists(path)) fail("UNet: model path ", path.string(), " does not exist");
  return load_unet_single_file(backend, path, std::move(config));
}

}  // namespace dreambooth::io
