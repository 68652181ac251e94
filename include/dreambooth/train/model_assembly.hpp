// The pipeline a training run fine-tunes, assembled as NeMo's DreamBooth assembles it, and the one it samples
// regularization images from.
//   base: model.base_model_path, else model.restore_from_path (any model load_pipeline() reads);
//   UNet: model.unet_config.from_pretrained when set: a diffusers folder (its config.json decides the architecture), a
//     .nemo, or a weights file in any layout whose architecture NeMo's unet_config keys give;
//   VAE: model.first_stage_config.from_pretrained likewise (ddconfig and model.scale_factor);
//   text encoder: model.cond_stage_config: FrozenMegatronCLIPEmbedder with restore_from_path (a CLIP .nemo, whose
//     tokenizer artifacts serve too), or FrozenCLIPEmbedder with version (a local transformers folder);
//   training schedule: model.noise_scheduler's keys when given (NeMo's linear_start / linear_end / timesteps /
//     parameterization), else the base's scheduler config; model.scale_factor sets the latent scale.
// Where a component's weights carry their own configuration and the YAML's architecture keys say otherwise, the weights
// win and a note says which keys were overruled.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/train/config.hpp"

namespace dreambooth::train {

namespace assembly_detail {
namespace fs = std::filesystem;

inline void require_exists(const std::string& path, const std::string& key) {
  if (!fs::exists(path)) fail("config key ", key, ": ", path, " does not exist");
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
}  // namespace assembly_detail

template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_component(B& b, const TrainingConfig& c,
                                                                     const std::function<void(const std::string&)>& note) {
  namespace fs = std::filesystem;
  const auto& path = c.unet_from_pretrained;
  assembly_detail::require_exists(path, "model.unet_config.from_pretrained");
  std::unique_ptr<models::UNet2DConditionModel<B>> unet;
  if (pipeline::model_kind(path) == pipeline::ModelKind::Nemo) {
    const io::NemoArchive a(path);
    const auto weights = a.weights();
    io::Layout layout;
    if (!io::detect_unet(*weights, layout)) fail("config key model.unet_config.from_pretrained: ", path, " holds no UNet");
    unet = io::load_unet_from(b, *weights, layout, io::unet_config_from_nemo(a.config()["unet_config"], path + ": unet_config"));
  } else if (fs::is_directory(path)) {
    unet = io::load_unet(b, path);
  } else {  // bare weights: NeMo's unet_config keys give the architecture
    if (!c.unet_config || !c.unet_config.IsMap())
      fail("config key model.unet_config.from_pretrained: ", path, " carries no configuration and model.unet_config gives none");
    const auto source = io::open_tensor_source(path);
    io::Layout layout;
    if (!io::detect_unet(*source, layout)) fail("config key model.unet_config.from_pretrained: ", path, " holds no UNet weights");
    if (c.unet_from_nemo != (layout.unet == io::UNetNaming::NeMo || layout.unet == io::UNetNaming::NeMoLegacyNorms))
      note("model.unet_config.from_NeMo is " + std::string(c.unet_from_nemo ? "True" : "False") + " but " + path + " holds " +
           (c.unet_from_nemo ? "diffusers or CompVis" : "NeMo") + " names; they were read as such");
    return io::load_unet_from(b, *source, layout, io::unet_config_from_nemo(c.unet_config, "model.unet_config"));
  }
  if (const auto d = assembly_detail::unet_differences(c.unet_config, unet->config); !d.empty())
    note("model.unet_config's " + d + " differ from " + path + "'s own configuration, which is used");
  return unet;
}

template <class B>
std::unique_ptr<models::AutoencoderKL<B>> load_vae_component(B& b, const TrainingConfig& c) {
  namespace fs = std::filesystem;
  const auto& path = c.vae_from_pretrained;
  assembly_detail::require_exists(path, "model.first_stage_config.from_pretrained");
  const double scale = c.scale_factor.value_or(0.18215);
  if (pipeline::model_kind(path) == pipeline::ModelKind::Nemo) {
    const io::NemoArchive a(path);
    const auto weights = a.weights();
    io::Layout layout;
    if (!io::detect_vae(*weights, layout)) fail("config key model.first_stage_config.from_pretrained: ", path, " holds no VAE");
    return io::load_vae_from(b, *weights, layout, io::vae_config_from_nemo(a.config()["first_stage_config"], scale, path + ": first_stage_config"));
  }
  if (fs::is_directory(path)) return io::load_vae(b, path);
  if (!c.first_stage_config || !c.first_stage_config.IsMap())
    fail("config key model.first_stage_config.from_pretrained: ", path, " carries no configuration and model.first_stage_config gives none");
  const auto source = io::open_tensor_source(path);
  io::Layout layout;
  if (!io::detect_vae(*source, layout)) fail("config key model.first_stage_config.from_pretrained: ", path, " holds no VAE weights");
  return io::load_vae_from(b, *source, layout, io::vae_config_from_nemo(c.first_stage_config, scale, "model.first_stage_config"));
}

// The text encoder cond_stage_config names (and the tokenizer files it carries, when it does); nothing when it names none.
template <class B>
bool load_text_component(B& b, const TrainingConfig& c, pipeline::TextToImagePipeline<B>& p) {
  namespace fs = std::filesystem;
  if (c.text_target.ends_with("FrozenMegatronCLIPEmbedder")) {
    if (c.text_restore_from_path.empty()) return false;
    assembly_detail::require_exists(c.text_restore_from_path, "model.cond_stage_config.restore_from_path");
    const io::NemoArchive clip(c.text_restore_from_path);
    const auto weights = clip.weights();
    io::Layout layout;
    if (!io::detect_text(*weights, layout) || (layout.text != io::TextNaming::Megatron))
      fail("config key model.cond_stage_config.restore_from_path: ", c.text_restore_from_path, " holds no Megatron CLIP text encoder");
    const auto vocab = weights->info(layout.text_prefix + "language_model.embedding.word_embeddings.weight").shape[0];
    const auto text = io::megatron_text_config(clip.config()["text"], vocab, c.text_restore_from_path + ": text");
    layout.text = text.megatron_legacy ? io::TextNaming::Megatron : io::TextNaming::MegatronInterleaved;
    p.text_encoder = io::load_clip_text_from(b, *weights, layout, text.clip);
    if (auto files = pipeline::load_detail::nemo_tokenizer(clip, clip.config()["tokenizer"])) p.tokenizer_files = std::move(files);
    return true;
  }
  if (c.text_target.ends_with("FrozenCLIPEmbedder") && !c.text_version.empty()) {
    if (!fs::is_directory(c.text_version)) {
      if (p.text_encoder) return false;  // a hub name: the base model's text encoder stands in
      fail("config key model.cond_stage_config.version: \"", c.text_version,
           "\" is not a local folder (nothing is downloaded: give a transformers CLIP folder)");
    }
    p.text_encoder = io::load_clip_text(b, c.text_version);
    if (fs::exists(fs::path(c.text_version) / "vocab.json")) p.tokenizer_files = pipeline::TokenizerFiles::from_folder(c.text_version);
    return true;
  }
  return false;
}

template <class B>
pipeline::TextToImagePipeline<B> assemble_training_pipeline(B& b, const TrainingConfig& c, const std::function<void(const std::string&)>& note) {
  namespace fs = std::filesystem;
  const std::string base = c.base_model_path.empty() ? c.restore_from_path : c.base_model_path;
  const bool all_components =
      !c.unet_from_pretrained.empty() && !c.vae_from_pretrained.empty() && (!c.text_restore_from_path.empty() || fs::is_directory(c.text_version));
  pipeline::LoadOptions options;
  options.tokenizer = c.tokenizer_path;
  options.note = note;
  pipeline::TextToImagePipeline<B> p(b);
  if (!all_components) {
    if (base.empty()) fail("config: model.restore_from_path or model.base_model_path is required (some components have no from_pretrained)");
    p = pipeline::load_pipeline(b, base, options);
  }
  if (!c.unet_from_pretrained.empty()) p.unet = load_unet_component(b, c, note);
  if (!c.vae_from_pretrained.empty()) p.vae = load_vae_component(b, c);
  const bool text_replaced = load_text_component(b, c, p);
  if (!c.tokenizer_path.empty()) p.tokenizer_files = pipeline::TokenizerFiles::from_folder(c.tokenizer_path);
  if (!p.text_encoder || !p.unet || !p.vae) fail("config: no text encoder (model.cond_stage_config names none and there is no base model)");
  if (!p.tokenizer_files) fail("config: no tokenizer: give model.tokenizer_path (a folder with vocab.json and merges.txt)");
  if (text_replaced || all_components || !p.tokenizer) p.tokenizer = pipeline::load_detail::tokenizer_from(*p.tokenizer_files);
  if (c.noise_scheduler && c.noise_scheduler.IsMap()) {  // NeMo's training schedule keys
    const auto s = io::scheduler_config_from_nemo(c.noise_scheduler, "model.noise_scheduler");
    p.scheduler_config.num_train_timesteps = s.num_train_timesteps;
    p.scheduler_config.beta_start = s.beta_start;
    p.scheduler_config.beta_end = s.beta_end;
    p.scheduler_config.beta_schedule = s.beta_schedule;
    p.scheduler_config.prediction_type = s.prediction_type;
  }
  if (c.scale_factor && *c.scale_factor != p.vae->config.scaling_factor) {
    note("model.scale_factor " + std::to_string(*c.scale_factor) + " replaces the VAE's scaling factor " +
         std::to_string(p.vae->config.scaling_factor));
    p.vae->config.scaling_factor = *c.scale_factor;
  }
  if (p.text_encoder->config.hidden_size != p.unet->config.cross_attention_dim)
    fail("config: the text encoder's width ", p.text_encoder->config.hidden_size, " is not the UNet's cross-attention width ",
         p.unet->config.cross_attention_dim, " (cond_stage_config and unet_config name models that do not fit together)");
  return p;
}

}  // namespace dreambooth::train
