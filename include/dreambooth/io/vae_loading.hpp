// Loading the VAE: from a diffusers folder (vae/: config.json + diffusion_pytorch_model.safetensors or .bin) or from any
// weights file in a layout name_conversion.hpp knows (first_stage_model.*, NeMo's model.vae.*, a bare state dict).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/io/name_conversion.hpp"
#include "dreambooth/io/open_tensors.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/models/vae.hpp"

namespace dreambooth::io {

template <class B>
std::unique_ptr<models::AutoencoderKL<B>> load_vae_from(B& backend, const TensorSource& source, const Layout& layout,
                                                        const models::VAEConfig& config) {
  return load_model_from<models::AutoencoderKL<B>>(backend, source, layout, config, &Layout::vae_prefix);
}

template <class B>
std::unique_ptr<models::AutoencoderKL<B>> load_vae(B& backend, const std::filesystem::path& path,
                                                   std::optional<models::VAEConfig> config = std::nullopt) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path))
    return load_model_folder<models::AutoencoderKL<B>, models::VAEConfig>(
        backend, path, "vae", "VAE", {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"}, &Layout::vae_prefix);
  if (!fs::exists(path)) fail("VAE: model path ", path.string(), " does not exist");
  const auto source = open_tensor_source(path);
  Layout layout;
  if (!detect_vae(*source, layout))
    fail("VAE: ", path.string(), " holds no VAE weights (no key such as first_stage_model.encoder.down.0.block.0.conv1.weight)");
  return load_vae_from(backend, *source, layout, config.value_or(models::VAEConfig::sd()));
}

}  // namespace dreambooth::io
