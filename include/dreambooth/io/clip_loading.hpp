// Loading the CLIP text encoder from a transformers folder (text_encoder/: config.json + model.safetensors) or from an
// original single-file checkpoint (cond_stage_model.transformer.* followed by the transformers names).
#pragma once

#include <filesystem>
#include <memory>

#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/models/clip_text.hpp"

namespace dreambooth::io {

inline const std::string kCLIPOriginalPrefix = "cond_stage_model.transformer.";

template <class B>
std::unique_ptr<models::CLIPTextModel<B>> load_clip_text(B& backend, const std::filesystem::path& path,
                                                         std::optional<models::CLIPTextConfig> config = std::nullopt) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path))
    return load_from_folder<models::CLIPTextModel<B>, models::CLIPTextConfig>(backend, component_folder(path, "text_encoder", "CLIP text encoder"),
                                                                              "model.safetensors", "CLIP text encoder");
  if (!fs::exists(path)) fail("CLIP text encoder: model path ", path.string(), " does not exist");
  auto model = std::make_unique<models::CLIPTextModel<B>>(config.value_or(models::CLIPTextConfig::vit_l14()));
  model->allocate(backend);
  const SafetensorsFile file(path);
  // Some SD 1.x files omit the text_model. level (older transformers layouts).
  const bool nested = file.contains(kCLIPOriginalPrefix + "text_model.final_layer_norm.weight");
  load_parameters(
      backend, *model, file,
      [&](const std::string& name) { return kCLIPOriginalPrefix + (nested ? name : name.substr(std::string("text_model.").size())); },
      kCLIPOriginalPrefix);
  return model;
}

}  // namespace dreambooth::io
