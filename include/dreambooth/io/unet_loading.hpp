// Loading a UNet from a diffusers folder (unet/ or the folder itself: config.json +
// diffusion_pytorch_model.safetensors) or from an original single-file checkpoint (model.diffusion_model.*).
#pragma once

#include <filesystem>
#include <memory>

#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/io/unet_names.hpp"
#include "dreambooth/models/unet.hpp"

namespace dreambooth::io {

namespace fs = std::filesystem;

template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_diffusers(B& backend, const fs::path& path) {
  const auto folder = component_folder(path, "unet", "UNet");
  if (!fs::exists(folder / "diffusion_pytorch_model.safetensors") && fs::exists(folder / "diffusion_pytorch_model.bin"))
    fail("UNet: ", folder.string(), " has only diffusion_pytorch_model.bin (PyTorch pickle); convert it to safetensors");
  return load_from_folder<models::UNet2DConditionModel<B>, models::UNetConfig>(backend, folder, "diffusion_pytorch_model.safetensors", "UNet");
}

// An original single-file checkpoint holds no configuration: the caller gives it (UNetConfig::sd15() for SD 1.x).
template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_single_file(B& backend, const fs::path& file, const models::UNetConfig& config) {
  auto model = std::make_unique<models::UNet2DConditionModel<B>>(config);
  model->allocate(backend);
  load_parameters(
      backend, *model, SafetensorsFile(file), [&](const std::string& name) { return kUNetOriginalPrefix + unet_original_name(name, config); },
      kUNetOriginalPrefix);
  return model;
}

// A diffusers folder, or a single .safetensors file (with `config`, or SD 1.5's when none is given).
template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet(B& backend, const fs::path& path,
                                                           std::optional<models::UNetConfig> config = std::nullopt) {
  if (fs::is_directory(path)) return load_unet_diffusers(backend, path);
  if (!fs::exists(path)) fail("UNet: model path ", path.string(), " does not exist");
  return load_unet_single_file(backend, path, config.value_or(models::UNetConfig::sd15()));
}

}  // namespace dreambooth::io
