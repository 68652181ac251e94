// The pipeline a training run fine-tunes, assembled as NeMo's DreamBooth assembles it, and the one it samples
// regularization images from.
//   base: model.base_model_path, else model.restore_from_path (any model load_pipeline() reads);
//   UNet: model.unet_config.from_pretrained when set: a diffusers folder (its config.json decides the architecture), a
//     .nemo, or a weights file in any layout whose architecture NeMo's unet_config keys give;
//   VAE: model.first_stage_config.from_pretrained likewise (ddconfig and model.scale_factor);
//   text encoder: model.cond_stage_config: FrozenMegatronCLIPEmbedder with restore_from_path (a CLIP .nemo, whose
//     tokenizer artifacts serve too), or FrozenCLIPEmbedder with version (a local transformers folder); else the base's,
//     whose architecture, for a single file, model.text_encoder_config gives (a transformers CLIPTextConfig: our key);
//   training schedule: model.noise_scheduler's keys when given (NeMo's linear_start / linear_end / timesteps /
//     parameterization), else the base's scheduler config; model.scale_factor sets the latent scale.
// Where a component's weights carry their own configuration and the YAML's architecture keys say otherwise, the weights
// win and a note says which keys were overruled. Weights that carry none (a bare weights file in from_pretrained, or a
// single original file as the base) take the YAML's architecture: model.unet_config's, model.first_stage_config's and
// model.text_encoder_config's keys when they give one; a single base file without them takes SD 1.x's (2.x's) defaults.
// All of it is described as a pipeline::PipelineSpec (training_pipeline_spec) that pipeline::load_pipeline() loads:
// generate loads the same description the same way.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "dreambooth/io/nemo_model_config.hpp"
#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/train/config.hpp"

namespace dreambooth::train {

namespace assembly_detail {
namespace fs = std::filesystem;

// Whether `path` names weights that carry no configuration (neither a folder nor a .nemo), whose architecture the YAML gives.
inline bool bare_weights(const std::string& path) {
  return !path.empty() && fs::exists(path) && !fs::is_directory(path) && pipeline::model_kind(path) != pipeline::ModelKind::Nemo;
}

// The YAML architecture keys a component's own configuration overrules.
inline std::string unet_differences(const YAML::Node& yaml, const models::UNetConfig& actual) {
  if (!yaml || !yaml.IsMap() || !yaml["model_channels"]) return "";
  const auto wanted = io::unet_config_from_nemo(yaml, "model.unet_config");
  std::string d;
  const auto add = [&](const char* what, bool differs) {
    if (differs) d += (d.empty() ? "" : ", ") + std::string(what);
  };
  add("model_channels / channel_mult", wanted.block_out_channels != actual.block_out_channels);
  add("num_res_blocks", wanted.layers_per_block != actual.layers_per_block);
  add("attention_resolutions", wanted.down_block_types != actual.down_block_types);
  add("num_heads / num_head_channels", wanted.attention_heads != actual.attention_heads);
  add("context_dim", wanted.cross_attention_dim != actual.cross_attention_dim);
  add("use_linear_in_transformer", wanted.use_linear_projection != actual.use_linear_projection);
  return d;
}

// The architecture model.text_encoder_config gives a single base file's text encoder, when the file has the key.
inline std::optional<models::CLIPTextConfig> text_encoder_architecture(const TrainingConfig& c) {
  if (!c.text_encoder_config || !c.text_encoder_config.IsMap()) return std::nullopt;
  return models::CLIPTextConfig::from_json(io::yaml_to_json(c.text_encoder_config), "config key model.text_encoder_config");
}
}  // namespace assembly_detail

// The pipeline description NeMo's keys give (pipeline/load_pipeline.hpp's PipelineSpec).
inline pipeline::PipelineSpec training_pipeline_spec(const TrainingConfig& c, const std::function<void(const std::string&)>& note) {
  namespace fs = std::filesystem;
  using assembly_detail::bare_weights;
  const std::string base = c.base_model_path.empty() ? c.restore_from_path : c.base_model_path;
  const bool all_components =
      !c.unet_from_pretrained.empty() && !c.vae_from_pretrained.empty() && (!c.text_restore_from_path.empty() || fs::is_directory(c.text_version));
  pipeline::PipelineSpec s;
  s.options.tokenizer = c.tokenizer_path;
  s.options.note = note;
  if (!all_components) {
    if (base.empty()) fail("config: model.restore_from_path or model.base_model_path is required (some components have no from_pretrained)");
    s.model = base;
  }
  const double scale = c.scale_factor.value_or(0.18215);
  // a single base file's components, and bare weights files, take the YAML's architecture
  const bool single_base = !s.model.empty() && fs::exists(s.model) && pipeline::model_kind(s.model) == pipeline::ModelKind::SingleFile;
  s.unet = {c.unet_from_pretrained, "config key model.unet_config.from_pretrained", std::nullopt, "model.unet_config"};
  if (c.unet_config && c.unet_config.IsMap() &&
      (bare_weights(c.unet_from_pretrained) || (single_base && c.unet_from_pretrained.empty() && c.unet_config["model_channels"])))
    s.unet.config = io::unet_config_from_nemo(c.unet_config, "model.unet_config");
  if (!c.unet_from_pretrained.empty()) s.unet_nemo_names = c.unet_from_nemo;
  s.vae = {c.vae_from_pretrained, "config key model.first_stage_config.from_pretrained", std::nullopt, "model.first_stage_config"};
  if (c.first_stage_config && c.first_stage_config.IsMap() &&
      (bare_weights(c.vae_from_pretrained) || (single_base && c.vae_from_pretrained.empty() && c.first_stage_config["ddconfig"])))
    s.vae.config = io::vae_config_from_nemo(c.first_stage_config, scale, "model.first_stage_config");
  // the text encoder cond_stage_config names: a CLIP .nemo (FrozenMegatronCLIPEmbedder), a transformers folder
  // (FrozenCLIPEmbedder's version); a hub name leaves the base's
  if (c.text_target.ends_with("FrozenMegatronCLIPEmbedder") && !c.text_restore_from_path.empty()) {
    if (!fs::exists(c.text_restore_from_path))
      fail("config key model.cond_stage_config.restore_from_path: ", c.text_restore_from_path, " does not exist");
    if (pipeline::model_kind(c.text_restore_from_path) != pipeline::ModelKind::Nemo)
      fail("config key model.cond_stage_config.restore_from_path: ", c.text_restore_from_path, " is not a .nemo archive");
    s.text_encoder = {c.text_restore_from_path, "config key model.cond_stage_config.restore_from_path", std::nullopt, ""};
  } else if (c.text_target.ends_with("FrozenCLIPEmbedder") && !c.text_version.empty()) {
    if (fs::is_directory(c.text_version))
      s.text_encoder = {c.text_version, "config key model.cond_stage_config.version", std::nullopt, ""};
    else if (s.model.empty())
      fail("config key model.cond_stage_config.version: \"", c.text_version,
           "\" is not a local folder (nothing is downloaded: give a transformers CLIP folder)");
  }
  if (single_base && s.text_encoder.from.empty()) {
    s.text_encoder.config = assembly_detail::text_encoder_architecture(c);
    s.text_encoder.config_key = "model.text_encoder_config";
  }
  if (s.model.empty() && s.text_encoder.from.empty()) fail("config: no text encoder (model.cond_stage_config names none and there is no base model)");
  if (c.noise_scheduler && c.noise_scheduler.IsMap())  // NeMo's training schedule keys
    s.training_schedule = io::scheduler_config_from_nemo(c.noise_scheduler, "model.noise_scheduler");
  s.scale_factor = c.scale_factor;
  return s;
}

// The description of the model regularization images are sampled from when it is not the one trained:
// model.restore_from_path with model.tokenizer_path, the trained model's tokenizer as the fallback, and, for a single
// file, the architecture model.unet_config / model.first_stage_config / model.text_encoder_config give (as
// training_pipeline_spec gives them).
inline pipeline::PipelineSpec sampler_pipeline_spec(const TrainingConfig& c, std::optional<pipeline::TokenizerFiles> fallback_tokenizer,
                                                    const std::function<void(const std::string&)>& note) {
  namespace fs = std::filesystem;
  pipeline::PipelineSpec s;
  s.model = c.restore_from_path;
  s.options.tokenizer = c.tokenizer_path;
  s.options.fallback_tokenizer = std::move(fallback_tokenizer);
  s.options.note = note;
  if (fs::exists(s.model) && pipeline::model_kind(s.model) == pipeline::ModelKind::SingleFile) {
    s.unet.config_key = "model.unet_config";
    s.vae.config_key = "model.first_stage_config";
    if (c.unet_config && c.unet_config.IsMap() && c.unet_config["model_channels"])
      s.unet.config = io::unet_config_from_nemo(c.unet_config, "model.unet_config");
    if (c.first_stage_config && c.first_stage_config.IsMap() && c.first_stage_config["ddconfig"])
      s.vae.config = io::vae_config_from_nemo(c.first_stage_config, c.scale_factor.value_or(0.18215), "model.first_stage_config");
    s.text_encoder.config_key = "model.text_encoder_config";
    s.text_encoder.config = assembly_detail::text_encoder_architecture(c);
  }
  return s;
}

template <class B>
pipeline::TextToImagePipeline<B> assemble_training_pipeline(B& b, const TrainingConfig& c, const std::function<void(const std::string&)>& note) {
  const auto spec = training_pipeline_spec(c, note);
  auto p = pipeline::load_pipeline(b, spec);
  if (!c.unet_from_pretrained.empty() && !assembly_detail::bare_weights(c.unet_from_pretrained))
    if (const auto d = assembly_detail::unet_differences(c.unet_config, p.unet->config); !d.empty())
      note("model.unet_config's " + d + " differ from " + c.unet_from_pretrained + "'s own configuration, which is used");
  if (!p.text_encoder || !p.unet || !p.vae) fail("config: no text encoder (model.cond_stage_config names none and there is no base model)");
  if (!p.tokenizer_files) fail("config: no tokenizer: give model.tokenizer_path (a folder with vocab.json and merges.txt)");
  if (p.text_encoder->config.hidden_size != p.unet->config.cross_attention_dim)
    fail("config: the text encoder's width ", p.text_encoder->config.hidden_size, " is not the UNet's cross-attention width ",
         p.unet->config.cross_attention_dim, " (cond_stage_config and unet_config name models that do not fit together)");
  return p;
}

}  // namespace dreambooth::train
