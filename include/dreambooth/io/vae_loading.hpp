// Loading the VAE from a diffusers folder (vae/: config.json + diffusion_pytorch_model.safetensors) or from an
// original single file (first_stage_model.*). The VAE name map (diffusers -> original):
//   encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j; encoder.down_blocks.i.downsamplers.0 -> encoder.down.i.downsample;
//   decoder.up_blocks.i -> decoder.up.{levels - 1 - i} (resnets -> block, upsamplers.0 -> upsample);
//   mid_block.resnets.j -> mid.block_{j+1}; mid_block.attentions.0 -> mid.attn_1 with group_norm -> norm,
//   to_q / to_k / to_v / to_out.0 -> q / k / v / proj_out (1x1 convolutions [C, C, 1, 1] in the original file);
//   conv_shortcut -> nin_shortcut; conv_norm_out -> norm_out.
#pragma once

#include <filesystem>
#include <memory>

#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/models/vae.hpp"

namespace dreambooth::io {

inline const std::string kVAEOriginalPrefix = "first_stage_model.";

inline std::string vae_original_name(const std::string& name, const models::VAEConfig& config) {
  std::vector<std::string> p;
  {
    std::size_t start = 0;
    for (std::size_t dot; (dot = name.find('.', start)) != std::string::npos; start = dot + 1) p.push_back(name.substr(start, dot - start));
    p.push_back(name.substr(start));
  }
  const auto join = [&](std::size_t from) {
    std::string out;
    for (std::size_t i = from; i < p.size(); ++i) {
      const auto& part = p[i];
      out += (i > from ? "." : "") + (part == "conv_shortcut"   ? std::string("nin_shortcut")
                                      : part == "conv_norm_out" ? std::string("norm_out")
                                                                : part);
    }
    return out;
  };
  if (p[0] != "encoder" && p[0] != "decoder") return name;  // quant_conv, post_quant_conv
  const auto& side = p[0];
  if (p.size() > 4 && p[1] == "down_blocks") {
    if (p[3] == "resnets") return "encoder.down." + p[2] + ".block." + p[4] + "." + join(5);
    if (p[3] == "downsamplers") return "encoder.down." + p[2] + ".downsample." + join(5);
  }
  if (p.size() > 4 && p[1] == "up_blocks") {
    const auto level = std::to_string(config.levels() - 1 - std::stoll(p[2]));
    if (p[3] == "resnets") return "decoder.up." + level + ".block." + p[4] + "." + join(5);
    if (p[3] == "upsamplers") return "decoder.up." + level + ".upsample." + join(5);
  }
  if (p.size() > 4 && p[1] == "mid_block" && p[2] == "resnets") return side + ".mid.block_" + std::to_string(std::stoll(p[3]) + 1) + "." + join(4);
  if (p.size() > 4 && p[1] == "mid_block" && p[2] == "attentions") {
    const std::string& proj = p[4];
    const std::string mapped = proj == "group_norm" ? "norm" : proj == "to_q" ? "q" : proj == "to_k" ? "k" : proj == "to_v" ? "v" : "proj_out";
    return side + ".mid.attn_1." + mapped + "." + p.back();
  }
  return side + "." + join(1);
}

template <class B>
std::unique_ptr<models::AutoencoderKL<B>> load_vae(B& backend, const std::filesystem::path& path,
                                                   std::optional<models::VAEConfig> config = std::nullopt) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path))
    return load_from_folder<models::AutoencoderKL<B>, models::VAEConfig>(backend, component_folder(path, "vae", "VAE"),
                                                                         "diffusion_pytorch_model.safetensors", "VAE");
  if (!fs::exists(path)) fail("VAE: model path ", path.string(), " does not exist");
  const auto cfg = config.value_or(models::VAEConfig::sd());
  auto model = std::make_unique<models::AutoencoderKL<B>>(cfg);
  model->allocate(backend);
  load_parameters(
      backend, *model, SafetensorsFile(path), [&](const std::string& name) { return kVAEOriginalPrefix + vae_original_name(name, cfg); },
      kVAEOriginalPrefix);
  return model;
}

}  // namespace dreambooth::io
