// The one place that maps parameter names between checkpoint layouts. The models name their parameters as diffusers /
// transformers do (module paths = diffusers keys); every other layout is a Layout: per component (UNet, VAE, text
// encoder) a naming scheme and a key prefix. For each model parameter a Layout gives a Binding: the stored tensor's name
// and, for fused tensors, which slice of it the parameter is. Loaders read through bindings, exporters write through the
// same bindings, so every conversion runs both ways from one table.
//
// UNet (diffusers -> original CompVis / LDM; L = layers_per_block, SD 1.5 has L = 2):
//   time_embedding.linear_1/2 -> time_embed.0/2; conv_in -> input_blocks.0.0; conv_norm_out -> out.0; conv_out -> out.2;
//   down_blocks.i.resnets.j / attentions.j -> input_blocks.{(L+1) i + j + 1}.0 / .1;
//   down_blocks.i.downsamplers.0.conv -> input_blocks.{(L+1)(i+1)}.0.op;
//   mid_block.resnets.j -> middle_block.{2j}; mid_block.attentions.0 -> middle_block.1;
//   up_blocks.i.resnets.j / attentions.j -> output_blocks.{(L+1) i + j}.0 / .1;
//   up_blocks.i.upsamplers.0 -> output_blocks.{(L+1) i + L}.{2 if the block has attention else 1};
//   ResNet norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut -> in_layers.0, in_layers.2, emb_layers.1,
//   out_layers.0, out_layers.3, skip_connection.
// NeMo's UNet (openaimodel.py) is the original with two changes, each detected from the keys present:
//   fused GroupNorm + SiLU (all NeMo files): in_layers.2 -> in_layers.1, out_layers.3 -> out_layers.2, out.2 -> out.1;
//   norms inside the attention modules (NeMo since April 2024): transformer_blocks.k.norm1 / norm2 / norm3 ->
//   attn1.norm / attn2.norm / ff.net.0, ff.net.0.proj -> ff.net.1.proj, ff.net.2 -> ff.net.3.
// VAE (diffusers -> original = NeMo): encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j; downsamplers.0 ->
//   downsample; decoder.up_blocks.i -> decoder.up.{levels-1-i} (resnets -> block, upsamplers.0 -> upsample);
//   mid_block.resnets.j -> mid.block_{j+1}; mid_block.attentions.0 -> mid.attn_1 with group_norm -> norm, to_q / to_k /
//   to_v / to_out.0 -> q / k / v / proj_out (1x1 convolutions [C, C, 1, 1] in the file); conv_shortcut -> nin_shortcut;
//   conv_norm_out -> norm_out.
// Text encoder (transformers CLIPTextModel names text_model.*):
//   Transformers: the same names (SD 1.x single files; some omit the "text_model." level);
//   OpenCLIP (SD 2.x single files, cond_stage_model.model.*): token_embedding.weight, positional_embedding,
//     transformer.resblocks.i.{ln_1, attn.in_proj_weight / in_proj_bias (q, k, v stacked), attn.out_proj, ln_2,
//     mlp.c_fc, mlp.c_proj}, ln_final; resblock 23 (diffusers drops the last layer), text_projection and logit_scale are
//     not used;
//   Megatron (NeMo's CLIP): language_model.embedding.word_embeddings.weight, .position_embeddings,
//     language_model.encoder.layers.i.{input_layernorm, self_attention.query_key_value (q, k, v stacked as [3, heads,
//     head_dim] with megatron_legacy, per head [heads, 3, head_dim] without), self_attention.dense,
//     post_attention_layernorm, mlp.dense_h_to_4h, mlp.dense_4h_to_h}, language_model.encoder.final_layernorm; head.weight
//     (the projection) is not used.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/text.hpp"
#include "dreambooth/io/tensor_source.hpp"
#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/models/unet.hpp"
#include "dreambooth/models/unet_config.hpp"
#include "dreambooth/models/vae.hpp"

namespace dreambooth::io {

// Where one model parameter is stored.
struct Binding {
  std::string stored;  // the stored tensor's full name
  // A slice of a fused tensor: dim 0 viewed as [groups, parts, rows]; the parameter is part `part` of every group.
  int part = 0, parts = 1;
  std::int64_t groups = 1;
  bool conv1x1 = false;  // stored as a 1x1 convolution [O, I, 1, 1] (a Linear [O, I] in the model)
  bool fused() const { return parts > 1; }
};

enum class UNetNaming { Diffusers, Original, NeMo, NeMoLegacyNorms };
enum class VAENaming { Diffusers, Original };
enum class TextNaming { Transformers, TransformersFlat, OpenCLIP, Megatron, MegatronInterleaved };

// A checkpoint layout: naming and key prefix per component, and the stored names that are not weights.
struct Layout {
  std::string name;  // for messages
  UNetNaming unet = UNetNaming::Diffusers;
  std::string unet_prefix;
  VAENaming vae = VAENaming::Diffusers;
  std::string vae_prefix;
  TextNaming text = TextNaming::Transformers;
  std::string text_prefix;
  // The UNet's EMA copy instead of its weights, where the file holds one as CompVis' LitEma stores it:
  // model_ema.<"diffusion_model." + original name, dots removed> (original layout only).
  bool ema = false;

  static Layout diffusers() { return {"diffusers", UNetNaming::Diffusers, "", VAENaming::Diffusers, "", TextNaming::Transformers, ""}; }
  // One original file as CompVis, A1111, ComfyUI and stable-diffusion.cpp read it (SD 1.x text encoder).
  static Layout original() {
    return {"original (CompVis)", UNetNaming::Original,     "model.diffusion_model.",       VAENaming::Original,
            "first_stage_model.", TextNaming::Transformers, "cond_stage_model.transformer."};
  }
  // The same with SD 2.x's OpenCLIP text encoder.
  static Layout original_sd2() {
    auto l = original();
    l.name = "original SD 2.x (CompVis, OpenCLIP)";
    l.text = TextNaming::OpenCLIP;
    l.text_prefix = "cond_stage_model.model.";
    return l;
  }
  // NeMo's MegatronDreamBooth state dict (model.unet / model.vae / model.text_encoder).
  static Layout nemo_dreambooth(TextNaming text = TextNaming::Transformers) {
    return nemo("NeMo DreamBooth", "model.unet.", "model.vae.", "model.text_encoder.", text);
  }
  // NeMo's MegatronLatentDiffusion state dict (model.model.diffusion_model / model.first_stage_model / model.cond_stage_model).
  static Layout nemo_stable_diffusion(TextNaming text = TextNaming::Transformers) {
    return nemo("NeMo Stable Diffusion", "model.model.diffusion_model.", "model.first_stage_model.", "model.cond_stage_model.", text);
  }
  // A NeMo state dict: the UNet under NeMo's names, the VAE under the original ones, and the text encoder below
  // `text_root` (transformers' CLIP in `transformer.`, OpenCLIP in `model.`).
  static Layout nemo(const char* name, const char* unet_prefix, const char* vae_prefix, const std::string& text_root, TextNaming text) {
    return {name,
            UNetNaming::NeMo,
            unet_prefix,
            VAENaming::Original,
            vae_prefix,
            text,
            text_root + (text == TextNaming::Transformers ? "transformer." : "model.")};
  }

  // Stored tensors under a component prefix that hold no weight of ours (buffers, projection heads, unused layers).
  bool ignored(const std::string& stored) const {
    const auto ends = [&](const char* s) { return stored.ends_with(s); };
    if (ends("position_ids") || stored.find("_extra_state") != std::string::npos) return true;
    if (ema && stored.rfind("model.diffusion_model.", 0) == 0) return true;  // the non-EMA weights, when the EMA copy is read
    if (!text_prefix.empty() && stored.rfind(text_prefix, 0) == 0) {
      if (text == TextNaming::OpenCLIP &&
          (ends("text_projection") || ends("logit_scale") || stored.find("transformer.resblocks.23.") != std::string::npos))
        return true;
      if ((text == TextNaming::Megatron || text == TextNaming::MegatronInterleaved) && ends("head.weight")) return true;
    }
    return false;
  }
};

namespace names_detail {
inline std::vector<std::string> split(const std::string& s) { return text::split(s, '.'); }
inline std::string join(const std::vector<std::string>& parts, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < parts.size(); ++i) out += (i > from ? "." : "") + parts[i];
  return out;
}
inline bool starts(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
inline std::int64_t index(const std::string& s, const std::string& full) {
  try {
    std::size_t used = 0;
    const auto v = std::stoll(s, &used);
    if (used != s.size() || v < 0) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    fail("name map: \"", full, "\" has \"", s, "\" where an index belongs");
  }
}
// A ResNet's diffusers sub-name -> original (or NeMo, with fused GroupNorm + SiLU).
inline std::string resnet_part(const std::string& rest, const std::string& full, bool fused) {
  const std::pair<const char*, const char*> kMap[] = {
      {"norm1", "in_layers.0"},  {"conv1", fused ? "in_layers.1" : "in_layers.2"},   {"time_emb_proj", "emb_layers.1"},
      {"norm2", "out_layers.0"}, {"conv2", fused ? "out_layers.2" : "out_layers.3"}, {"conv_shortcut", "skip_connection"}};
  for (const auto& [from, to] : kMap) {
    const std::string prefix = std::string(from) + ".";
    if (starts(rest, prefix)) return to + rest.substr(prefix.size() - 1);
  }
  fail("UNet name map: no original name for \"", full, "\"");
}
// Inside a Transformer2DModel: NeMo (2024+) keeps the block's norms inside its attention and feed-forward modules.
inline std::string attention_part(const std::string& rest, bool norms_inside) {
  if (!norms_inside) return rest;
  static const std::pair<const char*, const char*> kMap[] = {{".norm1.", ".attn1.norm."},
                                                             {".norm2.", ".attn2.norm."},
                                                             {".norm3.", ".ff.net.0."},
                                                             {".ff.net.0.proj.", ".ff.net.1.proj."},
                                                             {".ff.net.2.", ".ff.net.3."}};
  for (const auto& [from, to] : kMap)
    if (const auto at = rest.find(from); at != std::string::npos && rest.find("transformer_blocks.") < at)
      return rest.substr(0, at) + to + rest.substr(at + std::string(from).size());
  return rest;
}
}  // namespace names_detail

// A diffusers UNet parameter name in `naming` (without a prefix).
inline std::string unet_stored_name(const std::string& name, const models::UNetConfig& config, UNetNaming naming) {
  using namespace names_detail;
  if (naming == UNetNaming::Diffusers) return name;
  const bool fused = naming == UNetNaming::NeMo || naming == UNetNaming::NeMoLegacyNorms;
  const bool norms_inside = naming == UNetNaming::NeMo;
  const auto L = config.layers_per_block;
  const auto p = split(name);
  const auto& last = p.back();
  if (starts(name, "time_embedding.linear_1.")) return "time_embed.0." + last;
  if (starts(name, "time_embedding.linear_2.")) return "time_embed.2." + last;
  if (starts(name, "conv_in.")) return "input_blocks.0.0." + last;
  if (starts(name, "conv_norm_out.")) return "out.0." + last;
  if (starts(name, "conv_out.")) return std::string(fused ? "out.1." : "out.2.") + last;
  if (p.size() >= 5 && p[0] == "down_blocks") {
    const auto i = index(p[1], name);
    if (p[2] == "resnets")
      return "input_blocks." + std::to_string((L + 1) * i + index(p[3], name) + 1) + ".0." + resnet_part(join(p, 4), name, fused);
    if (p[2] == "attentions")
      return "input_blocks." + std::to_string((L + 1) * i + index(p[3], name) + 1) + ".1." + attention_part("." + join(p, 4), norms_inside).substr(1);
    if (p[2] == "downsamplers" && p[4] == "conv") return "input_blocks." + std::to_string((L + 1) * (i + 1)) + ".0.op." + join(p, 5);
  }
  if (p.size() >= 4 && p[0] == "mid_block") {
    if (p[1] == "resnets") return "middle_block." + std::to_string(2 * index(p[2], name)) + "." + resnet_part(join(p, 3), name, fused);
    if (p[1] == "attentions") return "middle_block.1." + attention_part("." + join(p, 3), norms_inside).substr(1);
  }
  if (p.size() >= 5 && p[0] == "up_blocks") {
    const auto i = index(p[1], name);
    if (p[2] == "resnets") return "output_blocks." + std::to_string((L + 1) * i + index(p[3], name)) + ".0." + resnet_part(join(p, 4), name, fused);
    if (p[2] == "attentions")
      return "output_blocks." + std::to_string((L + 1) * i + index(p[3], name)) + ".1." + attention_part("." + join(p, 4), norms_inside).substr(1);
    if (p[2] == "upsamplers" && p[4] == "conv") {
      if (i < 0 || i >= static_cast<std::int64_t>(config.up_block_types.size())) fail("UNet name map: \"", name, "\" has no up block ", i);
      const bool has_attention = models::UNetConfig::has_cross_attention(config.up_block_types[static_cast<std::size_t>(i)]);
      return "output_blocks." + std::to_string((L + 1) * i + L) + (has_attention ? ".2" : ".1") + ".conv." + join(p, 5);
    }
  }
  fail("UNet name map: no original name for \"", name, "\"");
}

// A diffusers VAE parameter name in `naming` (without a prefix); `conv1x1` is set for the mid-block attention
// projections, which the original layout stores as 1x1 convolutions.
inline std::string vae_stored_name(const std::string& name, const models::VAEConfig& config, VAENaming naming, bool* conv1x1 = nullptr) {
  using namespace names_detail;
  if (conv1x1) *conv1x1 = false;
  if (naming == VAENaming::Diffusers) return name;
  const auto p = split(name);
  const auto rename = [&](std::size_t from) {
    std::string out;
    for (std::size_t i = from; i < p.size(); ++i)
      out += (i > from ? "." : "") + (p[i] == "conv_shortcut"   ? std::string("nin_shortcut")
                                      : p[i] == "conv_norm_out" ? std::string("norm_out")
                                                                : p[i]);
    return out;
  };
  if (p[0] != "encoder" && p[0] != "decoder") return name;  // quant_conv, post_quant_conv
  const auto& side = p[0];
  if (p.size() > 4 && p[1] == "down_blocks") {
    if (p[3] == "resnets") return "encoder.down." + p[2] + ".block." + p[4] + "." + rename(5);
    if (p[3] == "downsamplers") return "encoder.down." + p[2] + ".downsample." + rename(5);
  }
  if (p.size() > 4 && p[1] == "up_blocks") {
    const auto level = config.levels() - 1 - index(p[2], name);
    if (level < 0) fail("VAE name map: \"", name, "\" has no decoder level");
    if (p[3] == "resnets") return "decoder.up." + std::to_string(level) + ".block." + p[4] + "." + rename(5);
    if (p[3] == "upsamplers") return "decoder.up." + std::to_string(level) + ".upsample." + rename(5);
  }
  if (p.size() > 4 && p[1] == "mid_block" && p[2] == "resnets") return side + ".mid.block_" + std::to_string(index(p[3], name) + 1) + "." + rename(4);
  if (p.size() > 4 && p[1] == "mid_block" && p[2] == "attentions") {
    const std::string& proj = p[4];
    const std::string mapped = proj == "group_norm" ? "norm" : proj == "to_q" ? "q" : proj == "to_k" ? "k" : proj == "to_v" ? "v" : "proj_out";
    if (conv1x1) *conv1x1 = mapped != "norm" && p.back() == "weight";
    return side + ".mid.attn_1." + mapped + "." + p.back();
  }
  return side + "." + rename(1);
}

// Where a transformers CLIPTextModel parameter is stored in `naming` (with `prefix`).
inline Binding text_binding(const std::string& name, const models::CLIPTextConfig& config, TextNaming naming, const std::string& prefix) {
  using namespace names_detail;
  if (naming == TextNaming::Transformers) return {prefix + name};
  if (naming == TextNaming::TransformersFlat) {  // older single files without the text_model. level
    if (!starts(name, "text_model.")) fail("text encoder name map: \"", name, "\" is not under text_model.");
    return {prefix + name.substr(11)};
  }
  const bool openclip = naming == TextNaming::OpenCLIP;
  if (name == "text_model.embeddings.token_embedding.weight")
    return {prefix + (openclip ? "token_embedding.weight" : "language_model.embedding.word_embeddings.weight")};
  if (name == "text_model.embeddings.position_embedding.weight")
    return {prefix + (openclip ? "positional_embedding" : "language_model.embedding.position_embeddings")};
  if (starts(name, "text_model.final_layer_norm."))
    return {prefix + (openclip ? "ln_final." : "language_model.encoder.final_layernorm.") + name.substr(28)};
  const auto p = split(name);
  if (p.size() >= 6 && p[1] == "encoder" && p[2] == "layers") {
    const auto layer = (openclip ? "transformer.resblocks." : "language_model.encoder.layers.") + p[3] + ".";
    const auto module = join(p, 4);  // e.g. self_attn.q_proj.weight
    const auto& leaf = p.back();
    const std::pair<const char*, const char*> kOpenCLIP[] = {{"self_attn.out_proj.", "attn.out_proj."},
                                                             {"layer_norm1.", "ln_1."},
                                                             {"layer_norm2.", "ln_2."},
                                                             {"mlp.fc1.", "mlp.c_fc."},
                                                             {"mlp.fc2.", "mlp.c_proj."}};
    const std::pair<const char*, const char*> kMegatron[] = {{"self_attn.out_proj.", "self_attention.dense."},
                                                             {"layer_norm1.", "input_layernorm."},
                                                             {"layer_norm2.", "post_attention_layernorm."},
                                                             {"mlp.fc1.", "mlp.dense_h_to_4h."},
                                                             {"mlp.fc2.", "mlp.dense_4h_to_h."}};
    for (const auto& [from, to] : openclip ? std::span(kOpenCLIP) : std::span(kMegatron))
      if (starts(module, from)) return {prefix + layer + to + leaf};
    for (int part = 0; part < 3; ++part) {
      const char* proj[] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};
      if (!starts(module, proj[part])) continue;
      Binding b;
      b.stored =
          prefix + layer + (openclip ? (leaf == "weight" ? "attn.in_proj_weight" : "attn.in_proj_bias") : "self_attention.query_key_value." + leaf);
      b.part = part;
      b.parts = 3;
      b.groups = naming == TextNaming::MegatronInterleaved ? config.num_attention_heads : 1;
      return b;
    }
  }
  fail("text encoder name map: no ", openclip ? "OpenCLIP" : "Megatron", " name for \"", name, "\"");
}

inline Binding unet_binding(const std::string& name, const models::UNetConfig& config, const Layout& layout) {
  const auto stored = unet_stored_name(name, config, layout.unet);
  if (!layout.ema) return {layout.unet_prefix + stored};
  if (layout.unet_prefix != "model.diffusion_model.") fail("the EMA copy is read from original (CompVis) files only, not from ", layout.name);
  std::string dotless = "diffusion_model." + stored;
  dotless.erase(std::remove(dotless.begin(), dotless.end(), '.'), dotless.end());
  return {"model_ema." + dotless};
}
// Whether a source holds a LitEma copy of its UNet.
inline bool has_unet_ema(const TensorSource& source) { return source.contains("model_ema.diffusion_modelinput_blocks00weight"); }
inline Binding vae_binding(const std::string& name, const models::VAEConfig& config, const Layout& layout) {
  Binding b;
  b.stored = layout.vae_prefix + vae_stored_name(name, config, layout.vae, &b.conv1x1);
  return b;
}

// (model parameter name, binding) for every parameter a model visits, in visit order.
using NameMap = std::vector<std::pair<std::string, Binding>>;

template <class B>
NameMap name_map(models::UNet2DConditionModel<B>& unet, const Layout& layout) {
  NameMap m;
  unet.visit([&](const std::string& n, nn::Param<B>&) { m.emplace_back(n, unet_binding(n, unet.config, layout)); });
  return m;
}
template <class B>
NameMap name_map(models::AutoencoderKL<B>& vae, const Layout& layout) {
  NameMap m;
  vae.visit([&](const std::string& n, nn::Param<B>&) { m.emplace_back(n, vae_binding(n, vae.config, layout)); });
  return m;
}
template <class B>
NameMap name_map(models::CLIPTextModel<B>& text, const Layout& layout) {
  NameMap m;
  text.visit([&](const std::string& n, nn::Param<B>&) { m.emplace_back(n, text_binding(n, text.config, layout.text, layout.text_prefix)); });
  return m;
}

// The reverse direction: stored name -> the model names it holds (several for a fused tensor, in part order).
inline std::map<std::string, std::vector<std::string>> reverse(const NameMap& map) {
  std::map<std::string, std::vector<std::pair<int, std::string>>> parts;
  for (const auto& [name, b] : map) parts[b.stored].emplace_back(b.part, name);
  std::map<std::string, std::vector<std::string>> out;
  for (auto& [stored, list] : parts) {
    std::sort(list.begin(), list.end());
    for (auto& [part, name] : list) out[stored].push_back(name);
  }
  return out;
}

// Which layout a source's names follow, found per component from keys every checkpoint of that layout holds (so a
// file with only some components, a bare UNet state dict, is recognised too). Each detector sets its component's
// naming and prefix in `layout` and returns false when the source holds no such component.
namespace names_detail {
inline bool any_with_prefix(const TensorSource& source, const std::string& prefix) {
  const auto it = source.tensors().lower_bound(prefix);
  return it != source.tensors().end() && starts(it->first, prefix);
}
}  // namespace names_detail

inline bool detect_unet(const TensorSource& source, Layout& layout) {
  const auto has = [&](const std::string& k) { return source.contains(k); };
  for (const std::string prefix : {"model.diffusion_model.", "model.unet.", "model.model.diffusion_model.", "model.unet._orig_mod.",
                                   "model.model.diffusion_model._orig_mod.", ""}) {
    if (has(prefix + "conv_in.weight") && has(prefix + "time_embedding.linear_1.weight")) {
      layout.unet = UNetNaming::Diffusers;
      layout.unet_prefix = prefix;
      return true;
    }
    if (!has(prefix + "input_blocks.0.0.weight")) continue;
    // The ResNet and transformer-block name variants, each recognised by its own keys.
    const bool fused = has(prefix + "input_blocks.1.0.in_layers.1.weight") || has(prefix + "out.1.weight");
    bool norms_inside = false;
    for (auto it = source.tensors().lower_bound(prefix); it != source.tensors().end() && names_detail::starts(it->first, prefix); ++it)
      if (it->first.find(".attn1.norm.weight") != std::string::npos) {
        norms_inside = true;
        break;
      }
    if (!fused && norms_inside) fail("checkpoint ", source.path(), ": UNet keys mix CompVis ResNet names with NeMo transformer-block names");
    layout.unet = fused ? (norms_inside ? UNetNaming::NeMo : UNetNaming::NeMoLegacyNorms) : UNetNaming::Original;
    layout.unet_prefix = prefix;
    return true;
  }
  return false;
}

inline bool detect_vae(const TensorSource& source, Layout& layout) {
  for (const std::string prefix : {"first_stage_model.", "model.vae.", "model.first_stage_model.", ""}) {
    if (source.contains(prefix + "encoder.down.0.block.0.conv1.weight")) {
      layout.vae = VAENaming::Original;
      layout.vae_prefix = prefix;
      return true;
    }
    if (source.contains(prefix + "encoder.down_blocks.0.resnets.0.conv1.weight")) {
      layout.vae = VAENaming::Diffusers;
      layout.vae_prefix = prefix;
      return true;
    }
  }
  return false;
}

inline bool detect_text(const TensorSource& source, Layout& layout) {
  // (a key prefix that identifies the encoder, the component prefix, the naming)
  const std::tuple<std::string, std::string, TextNaming> kCandidates[] = {
      {"cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.", TextNaming::Transformers},
      {"cond_stage_model.transformer.embeddings.", "cond_stage_model.transformer.", TextNaming::TransformersFlat},
      {"cond_stage_model.model.transformer.resblocks.", "cond_stage_model.model.", TextNaming::OpenCLIP},
      {"model.text_encoder.transformer.text_model.", "model.text_encoder.transformer.", TextNaming::Transformers},
      {"model.text_encoder.model.language_model.", "model.text_encoder.model.", TextNaming::Megatron},
      {"model.cond_stage_model.transformer.text_model.", "model.cond_stage_model.transformer.", TextNaming::Transformers},
      {"model.cond_stage_model.model.language_model.", "model.cond_stage_model.model.", TextNaming::Megatron},
      {"model.text_encoder.language_model.", "model.text_encoder.", TextNaming::Megatron},  // a NeMo CLIP model's own .nemo
      {"text_model.", "", TextNaming::Transformers},
  };
  for (const auto& [probe, prefix, naming] : kCandidates) {
    if (!names_detail::any_with_prefix(source, probe)) continue;
    layout.text = naming;
    layout.text_prefix = prefix;
    return true;
  }
  return false;
}

// The whole layout: the first component found names it; nothing when the source holds none of the three.
inline std::optional<Layout> detect_layout(const TensorSource& source) {
  Layout layout = Layout::diffusers();
  const bool unet = detect_unet(source, layout), vae = detect_vae(source, layout), text = detect_text(source, layout);
  if (!unet && !vae && !text) return std::nullopt;
  if (layout.unet_prefix.rfind("model.unet.", 0) == 0 || layout.text_prefix.rfind("model.text_encoder.", 0) == 0 || layout.vae_prefix == "model.vae.")
    layout.name = "NeMo DreamBooth";
  else if (layout.unet_prefix.rfind("model.model.", 0) == 0 || layout.vae_prefix == "model.first_stage_model.")
    layout.name = "NeMo Stable Diffusion";
  else if (layout.text == TextNaming::OpenCLIP)
    layout.name = "original SD 2.x (CompVis, OpenCLIP)";
  else if (layout.unet == UNetNaming::Diffusers && layout.vae == VAENaming::Diffusers)
    layout.name = "diffusers";
  else
    layout.name = "original (CompVis)";
  return layout;
}

}  // namespace dreambooth::io
