// NeMo's model configuration (the `model:` section of a training YAML, or a .nemo's model_config.yaml) translated to the
// diffusers configurations the models take, and back for the .nemo files we write.
//
//   unet_config (openaimodel.UNetModel): model_channels x channel_mult -> block_out_channels; num_res_blocks ->
//     layers_per_block; a level (downsampling factor ds = 2^level) attends when ds is in attention_resolutions, in both
//     its down and its mirrored up block; num_heads (num_head_channels = -1) -> that many heads everywhere, or
//     num_head_channels -> channels / num_head_channels heads per level; transformer_depth -> transformer_layers_per_block;
//     context_dim -> cross_attention_dim; use_linear_in_transformer -> use_linear_projection; resblock_gn_groups -> groups.
//   first_stage_config.ddconfig (AutoencoderKL): ch x ch_mult -> block_out_channels; num_res_blocks -> layers_per_block;
//     z_channels = embed_dim -> latent_channels; model.scale_factor -> scaling_factor.
//   noise_scheduler (or the top-level LDM keys): linear_start / linear_end / timesteps; beta_schedule "linear" is
//     diffusers' "scaled_linear" (linspace of square roots, squared); parameterization eps / v -> epsilon / v_prediction.
//   a Megatron CLIP's text config: hidden_size, num_layers, num_attention_heads, ffn_hidden_size,
//     max_position_embeddings, activation (approx-gelu = quick_gelu), layernorm_epsilon, megatron_legacy.
// Keys that would build something these models do not implement are refused by name.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/models/unet_config.hpp"
#include "dreambooth/models/vae.hpp"
#include "dreambooth/schedulers/schedulers.hpp"

namespace dreambooth::io {

namespace nemo_config_detail {
// A child of a YAML mapping, read as T; `fallback` when absent or null. `where` names the node in errors.
template <class T>
T get(const YAML::Node& node, const std::string& key, const T& fallback, const std::string& where) {
  const auto child = node[key];
  if (!child || child.IsNull()) return fallback;
  try {
    return child.as<T>();
  } catch (const YAML::Exception&) {
    fail(where, ".", key, ": ", YAML::Dump(child), " is not a valid value");
  }
}
inline std::vector<std::int64_t> get_list(const YAML::Node& node, const std::string& key, const std::vector<std::int64_t>& fallback,
                                          const std::string& where) {
  const auto child = node[key];
  if (!child || child.IsNull()) return fallback;
  if (child.IsScalar()) return {get<std::int64_t>(node, key, 0, where)};
  return get<std::vector<std::int64_t>>(node, key, fallback, where);
}
}  // namespace nemo_config_detail

// `where` names the node in errors ("model_config.yaml of x.nemo: unet_config").
inline models::UNetConfig unet_config_from_nemo(const YAML::Node& n, const std::string& where) {
  using namespace nemo_config_detail;
  if (!n || !n.IsMap()) fail(where, ": missing (a mapping of UNetModel arguments is expected)");
  models::UNetConfig c;
  c.in_channels = get<std::int64_t>(n, "in_channels", 4, where);
  c.out_channels = get<std::int64_t>(n, "out_channels", 4, where);
  c.sample_size = get<std::int64_t>(n, "image_size", 64, where);
  const auto model_channels = get<std::int64_t>(n, "model_channels", 320, where);
  const auto mult = get_list(n, "channel_mult", {1, 2, 4, 4}, where);
  const auto resolutions = get_list(n, "attention_resolutions", {4, 2, 1}, where);
  const auto res_blocks = get_list(n, "num_res_blocks", {2}, where);
  if (res_blocks.empty() || std::any_of(res_blocks.begin(), res_blocks.end(), [&](auto r) { return r != res_blocks[0]; }))
    fail(where, ".num_res_blocks: a different count per level is not supported");
  c.layers_per_block = res_blocks[0];
  c.transformer_layers_per_block = get<std::int64_t>(n, "transformer_depth", 1, where);
  if (n["transformer_depth_middle"] && !n["transformer_depth_middle"].IsNull() &&
      get<std::int64_t>(n, "transformer_depth_middle", 1, where) != c.transformer_layers_per_block)
    fail(where, ".transformer_depth_middle: a middle depth unlike transformer_depth is not supported");
  c.cross_attention_dim = get<std::int64_t>(n, "context_dim", 768, where);
  c.use_linear_projection = get<bool>(n, "use_linear_in_transformer", false, where);
  c.norm_num_groups = get<std::int64_t>(n, "resblock_gn_groups", 32, where);
  const auto num_heads = get<std::int64_t>(n, "num_heads", -1, where);
  const auto head_channels = get<std::int64_t>(n, "num_head_channels", -1, where);
  if (!get<bool>(n, "use_spatial_transformer", true, where)) fail(where, ".use_spatial_transformer: false (no cross-attention) is not supported");
  if (get<bool>(n, "use_scale_shift_norm", false, where)) fail(where, ".use_scale_shift_norm: true is not supported");
  if (get<bool>(n, "resblock_updown", false, where)) fail(where, ".resblock_updown: true is not supported");
  if (n["num_classes"] && !n["num_classes"].IsNull()) fail(where, ".num_classes: class conditioning is not supported");
  if (get<std::int64_t>(n, "dims", 2, where) != 2) fail(where, ".dims: only 2-D UNets are supported");
  if (!get<bool>(n, "conv_resample", true, where)) fail(where, ".conv_resample: false is not supported");
  c.block_out_channels.clear();
  c.down_block_types.clear();
  c.up_block_types.clear();
  c.attention_heads.clear();
  for (std::size_t level = 0; level < mult.size(); ++level) {
    const auto ch = model_channels * mult[level];
    c.block_out_channels.push_back(ch);
    const bool attends = std::find(resolutions.begin(), resolutions.end(), std::int64_t{1} << level) != resolutions.end();
    c.down_block_types.push_back(attends ? "CrossAttnDownBlock2D" : "DownBlock2D");
    if (head_channels > 0) {
      if (ch % head_channels) fail(where, ": ", ch, " channels do not split into heads of num_head_channels ", head_channels);
      c.attention_heads.push_back(ch / head_channels);
    } else {
      if (num_heads < 1) fail(where, ": num_heads or num_head_channels must be positive");
      c.attention_heads.push_back(num_heads);
    }
  }
  for (std::size_t i = mult.size(); i-- > 0;)
    c.up_block_types.push_back(c.down_block_types[i] == "CrossAttnDownBlock2D" ? "CrossAttnUpBlock2D" : "UpBlock2D");
  c.validate(where);
  return c;
}

inline models::VAEConfig vae_config_from_nemo(const YAML::Node& first_stage, double scale_factor, const std::string& where) {
  using namespace nemo_config_detail;
  if (!first_stage || !first_stage.IsMap()) fail(where, ": missing (a mapping of AutoencoderKL arguments is expected)");
  const auto dd = first_stage["ddconfig"];
  const auto dd_where = where + ".ddconfig";
  if (!dd || !dd.IsMap()) fail(dd_where, ": missing");
  models::VAEConfig c;
  c.in_channels = get<std::int64_t>(dd, "in_channels", 3, dd_where);
  c.out_channels = get<std::int64_t>(dd, "out_ch", 3, dd_where);
  c.latent_channels = get<std::int64_t>(dd, "z_channels", 4, dd_where);
  const auto embed = get<std::int64_t>(first_stage, "embed_dim", c.latent_channels, where);
  if (embed != c.latent_channels) fail(where, ".embed_dim ", embed, " differs from ddconfig.z_channels ", c.latent_channels, " (not supported)");
  if (!get<bool>(dd, "double_z", true, dd_where)) fail(dd_where, ".double_z: false is not supported (a KL autoencoder has mean and log-variance)");
  const auto ch = get<std::int64_t>(dd, "ch", 128, dd_where);
  c.block_out_channels.clear();
  for (auto m : get_list(dd, "ch_mult", {1, 2, 4, 4}, dd_where)) c.block_out_channels.push_back(ch * m);
  c.layers_per_block = get<std::int64_t>(dd, "num_res_blocks", 2, dd_where);
  if (!get_list(dd, "attn_resolutions", {}, dd_where).empty()) fail(dd_where, ".attn_resolutions: attention inside the levels is not supported");
  c.scaling_factor = scale_factor;
  c.validate(where);  // the ranges a diffusers config.json is held to, named by the diffusers key
  return c;
}

// The training noise schedule from NeMo's keys (noise_scheduler, or the LDM top-level keys of a Stable Diffusion model).
inline schedulers::SchedulerConfig scheduler_config_from_nemo(const YAML::Node& n, const std::string& where) {
  using namespace nemo_config_detail;
  schedulers::SchedulerConfig c;
  c.num_train_timesteps = get<int>(n, "timesteps", 1000, where);
  c.beta_start = get<double>(n, "linear_start", 0.00085, where);
  c.beta_end = get<double>(n, "linear_end", 0.012, where);
  const auto schedule = get<std::string>(n, "beta_schedule", "linear", where);
  if (schedule != "linear") fail(where, ".beta_schedule \"", schedule, "\" is not supported (linear)");
  c.beta_schedule = "scaled_linear";  // LDM's "linear" is linspace(sqrt(start), sqrt(end))^2
  if (n["given_betas"] && !n["given_betas"].IsNull()) fail(where, ".given_betas: explicit betas are not supported");
  const auto parameterization = get<std::string>(n, "parameterization", "eps", where);
  if (parameterization == "eps")
    c.prediction_type = "epsilon";
  else if (parameterization == "v")
    c.prediction_type = "v_prediction";
  else
    fail(where, ".parameterization \"", parameterization, "\" is not supported (eps or v)");
  c.validate(where);
  return c;
}

// A Megatron CLIP text tower's configuration (its model_config.yaml `text:` section); the vocabulary size comes from
// the weights.
struct MegatronTextConfig {
  models::CLIPTextConfig clip;
  bool megatron_legacy = true;  // q, k, v stacked whole ([3, heads, head_dim]); false: per head
};
inline MegatronTextConfig megatron_text_config(const YAML::Node& text, std::int64_t vocab_size, const std::string& where) {
  using namespace nemo_config_detail;
  if (!text || !text.IsMap()) fail(where, ": missing (the CLIP model's text: section)");
  MegatronTextConfig m;
  auto& c = m.clip;
  c.vocab_size = vocab_size;
  c.hidden_size = get<std::int64_t>(text, "hidden_size", 768, where);
  c.num_hidden_layers = get<std::int64_t>(text, "num_layers", 12, where);
  c.num_attention_heads = get<std::int64_t>(text, "num_attention_heads", 12, where);
  c.intermediate_size = get<std::int64_t>(text, "ffn_hidden_size", 4 * c.hidden_size, where);
  c.max_position_embeddings = get<std::int64_t>(text, "max_position_embeddings", 77, where);
  c.layer_norm_eps = get<double>(text, "layernorm_epsilon", 1e-5, where);
  const auto activation = get<std::string>(text, "activation", "approx-gelu", where);
  if (get<bool>(text, "openai_gelu", false, where) || activation == "gelu")
    c.hidden_act = "gelu";
  else if (activation == "approx-gelu" || activation == "quick_gelu")
    c.hidden_act = "quick_gelu";
  else
    fail(where, ".activation \"", activation, "\" is not supported (approx-gelu or gelu)");
  if (get<std::string>(text, "normalization", "layernorm", where) != "layernorm") fail(where, ".normalization: only layernorm is supported");
  if (get<std::string>(text, "transformer_block_type", "pre_ln", where) != "pre_ln") fail(where, ".transformer_block_type: only pre_ln is supported");
  if (get<std::string>(text, "position_embedding_type", "learned_parameters", where) != "learned_parameters")
    fail(where, ".position_embedding_type: only learned_parameters is supported (FrozenMegatronCLIPEmbedder's requirement)");
  m.megatron_legacy = get<bool>(text, "megatron_legacy", true, where);
  c.validate(where);  // sizes in range, hidden_size splitting into the heads (a zero head count no longer divides by zero)
  return m;
}

// A YAML tree as JSON (scalars typed as YAML 1.2 core reads them: null, true/false, integers, floats, else strings).
inline nlohmann::json yaml_to_json(const YAML::Node& n) {
  if (!n || n.IsNull()) return nullptr;
  if (n.IsSequence()) {
    auto a = nlohmann::json::array();
    for (const auto& item : n) a.push_back(yaml_to_json(item));
    return a;
  }
  if (n.IsMap()) {
    auto o = nlohmann::json::object();
    for (const auto& item : n) o[item.first.as<std::string>()] = yaml_to_json(item.second);
    return o;
  }
  const auto text = n.as<std::string>();
  if (n.Tag() == "!" || n.Tag() == "tag:yaml.org,2002:str") return text;  // quoted
  if (text == "true" || text == "True") return true;
  if (text == "false" || text == "False") return false;
  if (text == "null" || text == "~") return nullptr;
  try {
    std::size_t used = 0;
    const auto i = std::stoll(text, &used);
    if (used == text.size()) return i;
    const auto d = std::stod(text, &used);
    if (used == text.size()) return d;
  } catch (const std::exception&) {
  }
  return text;
}

// ---- back to NeMo, for the .nemo files we write ----

inline YAML::Node nemo_unet_config(const models::UNetConfig& c) {
  // NeMo's SpatialTransformer normalises in 32 groups whatever resblock_gn_groups says (attention.py Normalize)
  if (c.norm_num_groups != 32) fail("NeMo export: NeMo's UNet normalises in groups of 32; this UNet uses ", c.norm_num_groups);
  const auto n = c.block_out_channels.size();
  const auto base = c.block_out_channels[0];
  YAML::Node y;
  y["_target_"] = "nemo.collections.multimodal.modules.stable_diffusion.diffusionmodules.openaimodel.UNetModel";
  y["from_pretrained"] = YAML::Node(YAML::NodeType::Null);
  y["from_NeMo"] = true;
  y["image_size"] = c.sample_size;
  y["in_channels"] = c.in_channels;
  y["out_channels"] = c.out_channels;
  y["model_channels"] = base;
  std::vector<std::int64_t> mult, resolutions;
  bool same_heads = true, same_head_channels = true;
  for (std::size_t i = 0; i < n; ++i) {
    if (c.block_out_channels[i] % base) fail("NeMo export: block_out_channels ", c.block_out_channels[i], " is not a multiple of ", base);
    mult.push_back(c.block_out_channels[i] / base);
    const bool down = models::UNetConfig::has_cross_attention(c.down_block_types[i]);
    const bool up = models::UNetConfig::has_cross_attention(c.up_block_types[n - 1 - i]);
    if (down != up) fail("NeMo export: level ", i, " attends in only one direction; NeMo's UNet attends in both or neither");
    if (down) resolutions.push_back(std::int64_t{1} << i);
    same_heads = same_heads && c.attention_heads[i] == c.attention_heads[0];
    same_head_channels = same_head_channels && c.block_out_channels[i] / c.attention_heads[i] == base / c.attention_heads[0];
  }
  y["attention_resolutions"] = resolutions;
  y["num_res_blocks"] = c.layers_per_block;
  y["channel_mult"] = mult;
  if (same_heads) {
    y["num_heads"] = c.attention_heads[0];
  } else if (same_head_channels) {
    y["num_heads"] = -1;
    y["num_head_channels"] = base / c.attention_heads[0];
  } else {
    fail("NeMo export: the head counts per level fit neither num_heads nor num_head_channels");
  }
  y["use_spatial_transformer"] = true;
  y["transformer_depth"] = c.transformer_layers_per_block;
  y["context_dim"] = c.cross_attention_dim;
  y["use_linear_in_transformer"] = c.use_linear_projection;
  y["resblock_gn_groups"] = c.norm_num_groups;
  y["use_checkpoint"] = false;
  y["legacy"] = false;
  y["use_flash_attention"] = false;
  return y;
}

inline YAML::Node nemo_first_stage_config(const models::VAEConfig& c) {
  if (c.norm_num_groups != 32) fail("NeMo export: NeMo's VAE normalises in groups of 32; this VAE uses ", c.norm_num_groups);
  YAML::Node y;
  y["_target_"] = "nemo.collections.multimodal.models.text_to_image.stable_diffusion.ldm.autoencoder.AutoencoderKL";
  y["from_pretrained"] = YAML::Node(YAML::NodeType::Null);
  y["embed_dim"] = c.latent_channels;
  y["monitor"] = "val/rec_loss";
  YAML::Node dd;
  dd["double_z"] = true;
  dd["z_channels"] = c.latent_channels;
  dd["resolution"] = 256;
  dd["in_channels"] = c.in_channels;
  dd["out_ch"] = c.out_channels;
  const auto ch = c.block_out_channels[0];
  std::vector<std::int64_t> mult;
  for (auto b : c.block_out_channels) mult.push_back(b / ch);
  dd["ch"] = ch;
  dd["ch_mult"] = mult;
  dd["num_res_blocks"] = c.layers_per_block;
  dd["attn_resolutions"] = std::vector<std::int64_t>{};
  dd["dropout"] = 0.0;
  y["ddconfig"] = dd;
  y["lossconfig"]["target"] = "torch.nn.Identity";
  return y;
}

inline YAML::Node nemo_noise_scheduler(const schedulers::SchedulerConfig& c) {
  YAML::Node y;
  y["_target_"] = "nemo.collections.multimodal.models.text_to_image.dreambooth.util.sd_noise_scheduler";
  y["parameterization"] = c.prediction_type == "v_prediction" ? "v" : "eps";
  y["v_posterior"] = 0;
  y["given_betas"] = YAML::Node(YAML::NodeType::Null);
  if (c.beta_schedule != "scaled_linear") fail("NeMo export: beta_schedule \"", c.beta_schedule, "\" has no NeMo equivalent (scaled_linear)");
  y["beta_schedule"] = "linear";
  y["timesteps"] = c.num_train_timesteps;
  y["linear_start"] = c.beta_start;
  y["linear_end"] = c.beta_end;
  y["cosine_s"] = 8e-3;
  return y;
}

}  // namespace dreambooth::io
