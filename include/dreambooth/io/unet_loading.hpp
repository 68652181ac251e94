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

template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_from(B& backend, const TensorSource& source, const Layout& layout,
                                                                 const models::UNetConfig& config) {
  auto model = std::make_unique<models::UNet2DConditionModel<B>>(config);
  model->allocate(backend);
  load_parameters(*model, source, name_map(*model, layout), {layout.unet_prefix}, &layout);
  return model;
}

template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_diffusers(B& backend, const fs::path& path) {
  const auto folder = component_folder(path, "unet", "UNet");
  const auto source = open_tensor_source(component_weights(folder, {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"}, "UNet"));
  return load_unet_from(backend, *source, Layout::diffusers(), models::UNetConfig::from_file(folder / "config.json"));
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
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet(B& backend, const fs::path& path, std::optional<models::UNetConfig> config = std::nullopt) {
  if (fs::is_directory(path)) return load_unet_diffusers(backend, path);
  if (!fs::exists(path)) fail("UNet: model path ", path.string(), " does not exist");
  return load_unet_single_file(backend, path, std::move(config));
}

}  // namespace dreambooth::io
