// Loading the CLIP text encoder: from a transformers folder (text_encoder/: config.json + model.safetensors or
// pytorch_model.bin) or from any weights file in a layout name_conversion.hpp knows (SD 1.x's
// cond_stage_model.transformer.*, SD 2.x's OpenCLIP cond_stage_model.model.*, NeMo's model.text_encoder.*). Without a
// configuration a single file gets ViT-L/14's (SD 1.x), or ViT-H/14's 23 layers for an OpenCLIP encoder (SD 2.x).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/io/name_conversion.hpp"
#include "dreambooth/io/open_tensors.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/models/clip_text.hpp"

namespace dreambooth::io {

template <class B>
std::unique_ptr<models::CLIPTextModel<B>> load_clip_text_from(B& backend, const TensorSource& source, const Layout& layout,
                                                              const models::CLIPTextConfig& config) {
  return load_model_from<models::CLIPTextModel<B>>(backend, source, layout, config, &Layout::text_prefix);
}

template <class B>
std::unique_ptr<models::CLIPTextModel<B>> load_clip_text(B& backend, const std::filesystem::path& path,
                                                         std::optional<models::CLIPTextConfig> config = std::nullopt) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path))
    return load_model_folder<models::CLIPTextModel<B>, models::CLIPTextConfig>(backend, path, "text_encoder", "CLIP text encoder",
                                                                               {"model.safetensors", "pytorch_model.bin"}, &Layout::text_prefix);
  if (!fs::exists(path)) fail("CLIP text encoder: model path ", path.string(), " does not exist");
  const auto source = open_tensor_source(path);
  Layout layout;
  if (!detect_text(*source, layout))
    fail("CLIP text encoder: ", path.string(), " holds no text encoder weights (no key such as cond_stage_model.transformer.text_model.*)");
  if (!config) config = layout.text == TextNaming::OpenCLIP ? models::CLIPTextConfig::vit_h14() : models::CLIPTextConfig::vit_l14();
  return load_clip_text_from(backend, *source, layout, *config);
}

}  // namespace dreambooth::io
