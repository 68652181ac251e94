// The one place that maps diffusers UNet parameter names to the original (CompVis / LDM) checkpoint names.
//   time_embedding.linear_1/2 -> time_embed.0/2; conv_in -> input_blocks.0.0; conv_norm_out -> out.0; conv_out -> out.2;
//   down_blocks.i.resnets.j / attentions.j -> input_blocks.{(L+1) i + j + 1}.0 / .1;
//   down_blocks.i.downsamplers.0.conv -> input_blocks.{(L+1)(i+1)}.0.op;
//   mid_block.resnets.j -> middle_block.{2j}; mid_block.attentions.0 -> middle_block.1;
//   up_blocks.i.resnets.j / attentions.j -> output_blocks.{(L+1) i + j}.0 / .1;
//   up_blocks.i.upsamplers.0 -> output_blocks.{(L+1) i + L}.{2 if the block has attention else 1};
//   inside a ResNet: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut ->
//   in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection.
// (L = layers_per_block; SD 1.5 has L = 2, so input_blocks.{3i+j+1} and output_blocks.{3i+j}.)
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/models/unet_config.hpp"

namespace dreambooth::io {

inline const std::string kUNetOriginalPrefix = "model.diffusion_model.";

namespace unet_names_detail {
inline std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (std::size_t dot; (dot = s.find('.', start)) != std::string::npos; start = dot + 1) parts.push_back(s.substr(start, dot - start));
  parts.push_back(s.substr(start));
  return parts;
}
inline std::string join(const std::vector<std::string>& parts, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < parts.size(); ++i) out += (i > from ? "." : "") + parts[i];
  return out;
}
inline std::string resnet_part(const std::string& rest, const std::string& full) {
  static const std::pair<const char*, const char*> kMap[] = {{"norm1", "in_layers.0"},          {"conv1", "in_layers.2"},
                                                             {"time_emb_proj", "emb_layers.1"}, {"norm2", "out_layers.0"},
                                                             {"conv2", "out_layers.3"},         {"conv_shortcut", "skip_connection"}};
  for (const auto& [from, to] : kMap) {
    const std::string prefix = std::string(from) + ".";
    if (rest.rfind(prefix, 0) == 0) return to + rest.substr(prefix.size() - 1);
  }
  fail("UNet name map: no original name for \"", full, "\"");
}
}  // namespace unet_names_detail

// diffusers name -> original name, without the model.diffusion_model. prefix.
inline std::string unet_original_name(const std::string& name, const models::UNetConfig& config) {
  using namespace unet_names_detail;
  const auto L = config.layers_per_block;
  const auto p = split(name);
  const auto last = p.back();
  if (name.rfind("time_embedding.linear_1.", 0) == 0) return "time_embed.0." + last;
  if (name.rfind("time_embedding.linear_2.", 0) == 0) return "time_embed.2." + last;
  if (name.rfind("conv_in.", 0) == 0) return "input_blocks.0.0." + last;
  if (name.rfind("conv_norm_out.", 0) == 0) return "out.0." + last;
  if (name.rfind("conv_out.", 0) == 0) return "out.2." + last;
  if (p.size() >= 5 && p[0] == "down_blocks") {
    const auto i = std::stoll(p[1]);
    if (p[2] == "resnets") return "input_blocks." + std::to_string((L + 1) * i + std::stoll(p[3]) + 1) + ".0." + resnet_part(join(p, 4), name);
    if (p[2] == "attentions") return "input_blocks." + std::to_string((L + 1) * i + std::stoll(p[3]) + 1) + ".1." + join(p, 4);
    if (p[2] == "downsamplers" && p[4] == "conv") return "input_blocks." + std::to_string((L + 1) * (i + 1)) + ".0.op." + join(p, 5);
  }
  if (p.size() >= 4 && p[0] == "mid_block") {
    if (p[1] == "resnets") return "middle_block." + std::to_string(2 * std::stoll(p[2])) + "." + resnet_part(join(p, 3), name);
    if (p[1] == "attentions") return "middle_block.1." + join(p, 3);
  }
  if (p.size() >= 5 && p[0] == "up_blocks") {
    const auto i = std::stoll(p[1]);
    if (p[2] == "resnets") return "output_blocks." + std::to_string((L + 1) * i + std::stoll(p[3])) + ".0." + resnet_part(join(p, 4), name);
    if (p[2] == "attentions") return "output_blocks." + std::to_string((L + 1) * i + std::stoll(p[3])) + ".1." + join(p, 4);
    if (p[2] == "upsamplers" && p[4] == "conv") {
      const bool has_attention = models::UNetConfig::has_cross_attention(config.up_block_types[static_cast<std::size_t>(i)]);
      return "output_blocks." + std::to_string((L + 1) * i + L) + (has_attention ? ".2" : ".1") + ".conv." + join(p, 5);
    }
  }
  fail("UNet name map: no original name for \"", name, "\"");
}

}  // namespace dreambooth::io
