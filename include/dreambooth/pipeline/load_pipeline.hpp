// load_pipeline(): a text-to-image pipeline from whatever a user has, chosen by what the path holds (not its name):
//   a diffusers folder (model_index.json / unet/ ...)              configs, tokenizer and scheduler from the folder;
//   a .nemo archive, or an extracted one (model_config.yaml)       NeMo's model_config.yaml gives the UNet, VAE and
//       schedule; the text encoder's configuration comes from the embedded CLIP config (Stable Diffusion .nemo), the CLIP
//       .nemo its cond_stage_config.restore_from_path names (DreamBooth .nemo), a transformers folder named by `version`,
//       or the weights' shapes; the tokenizer from the archive's artifacts, the CLIP .nemo's, or options.tokenizer;
//   one weights file (.safetensors / .ckpt / .pt / .bin) in the original (CompVis) or NeMo layout: configurations from
//       options.configs (a diffusers-style folder) or Stable Diffusion 1.x's, 2.x's for an OpenCLIP text encoder (as
//       v-prediction unless the file says it is SD 2.x base's step 875000, diffusers' rule); the tokenizer from
//       options.tokenizer or options.configs/tokenizer.
// Component overrides (NeMo's unet_config.from_pretrained, first_stage_config.from_pretrained, cond_stage_config) are
// load_unet_component() and friends, which the trainer calls.
#pragma once

#include <yaml-cpp/yaml.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/nemo_archive.hpp"
#include "dreambooth/io/nemo_model_config.hpp"
#include "dreambooth/io/open_tensors.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/io/vae_loading.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"

namespace dreambooth::pipeline {

namespace fs = std::filesystem;

struct LoadOptions {
  fs::path tokenizer;  // a folder with vocab.json + merges.txt, for files that carry no tokenizer
  fs::path configs;    // a diffusers-style folder with unet/, vae/, text_encoder/ configs (and tokenizer/, scheduler/), for single files
  bool ema = false;    // the UNet's EMA copy, where the file holds one
  // The tokenizer to use when the model carries none and none is given (the trainer passes its base model's: NeMo's
  // models all use CLIP's tokenizer).
  std::optional<TokenizerFiles> fallback_tokenizer;
  std::function<void(const std::string&)> note = [](const std::string&) {};  // notes about choices made
};

enum class ModelKind { Diffusers, Nemo, SingleFile };

inline ModelKind model_kind(const fs::path& path) {
  if (!fs::exists(path)) fail("model ", path.string(), " does not exist");
  if (fs::is_directory(path)) return fs::exists(path / "model_config.yaml") ? ModelKind::Nemo : ModelKind::Diffusers;
  const auto format = io::sniff_weights_format(path);
  return format == io::WeightsFormat::Tar || format == io::WeightsFormat::Gzip ? ModelKind::Nemo : ModelKind::SingleFile;
}

// A text encoder configuration from the weights alone: widths and depths from shapes, heads of 64 channels (CLIP ViT-L/14
// and ViT-H/14 both), quick_gelu (gelu for OpenCLIP).
inline models::CLIPTextConfig infer_text_config(const io::TensorSource& source, const io::Layout& layout) {
  models::CLIPTextConfig c;
  const models::CLIPTextConfig probe;
  const auto stored = [&](const std::string& name) { return io::text_binding(name, probe, layout.text, layout.text_prefix).stored; };
  // a stored tensor's shape, of the rank the text encoder's tensor has (errors name the file and the tensor)
  const auto shape_of = [&](const std::string& name, int rank) {
    const auto key = stored(name);
    const auto& shape = source.info(key).shape;
    if (shape.rank() != rank) fail("text encoder in ", source.path(), ": tensor \"", key, "\" has shape ", shape.str(), ", not of rank ", rank);
    for (const auto d : shape)
      if (d < 1) fail("text encoder in ", source.path(), ": tensor \"", key, "\" has shape ", shape.str(), " with an empty dimension");
    return shape;
  };
  const auto token = shape_of("text_model.embeddings.token_embedding.weight", 2);
  c.vocab_size = token[0];
  c.hidden_size = token[1];
  c.max_position_embeddings = shape_of("text_model.embeddings.position_embedding.weight", 2)[0];
  c.num_hidden_layers = 0;
  while (source.contains(stored("text_model.encoder.layers." + std::to_string(c.num_hidden_layers) + ".layer_norm1.weight"))) ++c.num_hidden_layers;
  if (layout.text == io::TextNaming::OpenCLIP && c.num_hidden_layers == 24) c.num_hidden_layers = 23;  // diffusers' SD 2.x encoder drops the last
  if (c.num_hidden_layers == 0) fail("text encoder in ", source.path(), ": no layers found");
  c.intermediate_size = shape_of("text_model.encoder.layers.0.mlp.fc1.weight", 2)[0];
  if (c.hidden_size % 64)
    fail("text encoder in ", source.path(), ": width ", c.hidden_size, " gives no whole number of 64-channel heads; give its configuration");
  c.num_attention_heads = c.hidden_size / 64;
  c.hidden_act = layout.text == io::TextNaming::OpenCLIP ? "gelu" : "quick_gelu";
  c.validate(source.path() + " (inferred from the weights' shapes)");
  return c;
}

namespace load_detail {
inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot read ", p.string());
  return {std::istreambuf_iterator<char>(in), {}};
}

// A tokenizer from files held in memory (written to a temporary folder the tokenizer reads, then removed).
inline std::unique_ptr<tokenizer::CLIPTokenizer> tokenizer_from(const TokenizerFiles& files) {
  static std::atomic<int> counter{0};
  const auto dir = fs::temp_directory_path() / ("dreambooth-tokenizer-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::create_directories(dir);
  struct Remove {
    fs::path p;
    ~Remove() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } remove{dir};
  std::ofstream(dir / "vocab.json", std::ios::binary) << files.vocab_json;
  std::ofstream(dir / "merges.txt", std::ios::binary) << files.merges_txt;
  std::ofstream(dir / "special_tokens_map.json") << nlohmann::json{{"pad_token", files.pad_token}}.dump();
  return std::make_unique<tokenizer::CLIPTokenizer>(tokenizer::CLIPTokenizer::from_folder(dir));
}

// A path named inside a .nemo's config: as given (relative to the working directory, as NeMo reads it), else beside the archive.
inline std::optional<fs::path> resolve_beside(const std::string& value, const fs::path& archive) {
  if (value.empty()) return std::nullopt;
  if (fs::exists(value)) return fs::path(value);
  const auto beside = archive.parent_path() / value;
  if (fs::exists(beside)) return beside;
  return std::nullopt;
}

// The tokenizer files a .nemo carries: its tokenizer.vocab_file / merge_file artifacts (NeMo's "nemo:" references), or
// tokenizer/vocab.json + tokenizer/merges.txt members (what our exports add).
inline std::optional<TokenizerFiles> nemo_tokenizer(const io::NemoArchive& a, const YAML::Node& tokenizer_cfg) {
  if (tokenizer_cfg && tokenizer_cfg.IsMap() && tokenizer_cfg["vocab_file"] && tokenizer_cfg["merge_file"] &&
      tokenizer_cfg["vocab_file"].IsScalar() && tokenizer_cfg["merge_file"].IsScalar()) {
    const auto vocab = a.artifact(tokenizer_cfg["vocab_file"].as<std::string>());
    const auto merges = a.artifact(tokenizer_cfg["merge_file"].as<std::string>());
    if (vocab && merges) return TokenizerFiles{a.text(*vocab), a.text(*merges)};
  }
  if (a.has("tokenizer/vocab.json") && a.has("tokenizer/merges.txt")) {
    TokenizerFiles files{a.text("tokenizer/vocab.json"), a.text("tokenizer/merges.txt")};
    if (a.has("tokenizer/special_tokens_map.json")) {
      const auto j = nlohmann::json::parse(a.text("tokenizer/special_tokens_map.json"), nullptr, false);
      if (j.is_object() && j.contains("pad_token") && j["pad_token"].is_string()) files.pad_token = j["pad_token"].get<std::string>();
    }
    return files;
  }
  return std::nullopt;
}

inline std::string scalar(const YAML::Node& n, const std::string& key) {
  return n && n.IsMap() && n[key] && n[key].IsScalar() ? n[key].as<std::string>() : "";
}
}  // namespace load_detail

// The text encoder configuration and naming a NeMo model's cond_stage_config describes; `weights` sizes what the config
// leaves open. Also finds the tokenizer files the configuration points at.
struct NemoTextEncoder {
  models::CLIPTextConfig config;
  io::TextNaming naming = io::TextNaming::Transformers;
  std::optional<TokenizerFiles> tokenizer;
  std::string origin;  // where the configuration came from, for notes
};
inline NemoTextEncoder nemo_text_encoder(const YAML::Node& model_cfg, const io::TensorSource& weights, io::Layout layout, const fs::path& archive) {
  using namespace load_detail;
  NemoTextEncoder t;
  t.naming = layout.text;
  const auto cond_stage = model_cfg["cond_stage_config"];
  if (model_cfg["text_encoder_config"] && model_cfg["text_encoder_config"].IsMap() && layout.text == io::TextNaming::Transformers) {
    // our own exports: the transformers configuration, for encoders FrozenCLIPEmbedder's `version` cannot name
    t.config = models::CLIPTextConfig::from_json(io::yaml_to_json(model_cfg["text_encoder_config"]), archive.string() + ": text_encoder_config");
    t.origin = "its text_encoder_config";
    return t;
  }
  if (layout.text == io::TextNaming::Megatron) {
    const auto vocab = weights.info(layout.text_prefix + "language_model.embedding.word_embeddings.weight").shape[0];
    std::optional<io::MegatronTextConfig> m;
    if (cond_stage["cfg"] && cond_stage["cfg"]["text"]) {  // a Stable Diffusion .nemo embeds the CLIP model's configuration
      m = io::megatron_text_config(cond_stage["cfg"]["text"], vocab, archive.string() + ": cond_stage_config.cfg.text");
      t.origin = "the embedded CLIP configuration";
    } else if (const auto clip = resolve_beside(scalar(cond_stage, "restore_from_path"), archive)) {
      const io::NemoArchive clip_archive(*clip);
      m = io::megatron_text_config(clip_archive.config()["text"], vocab, clip->string() + ": text");
      t.tokenizer = nemo_tokenizer(clip_archive, clip_archive.config()["tokenizer"]);
      t.origin = clip->string();
    }
    if (m) {
      t.config = m->clip;
      t.naming = m->megatron_legacy ? io::TextNaming::Megatron : io::TextNaming::MegatronInterleaved;
    } else {
      t.config = infer_text_config(weights, layout);
      t.origin = "the weights' shapes (the CLIP .nemo of cond_stage_config.restore_from_path was not found)";
    }
    return t;
  }
  const auto version = scalar(cond_stage, "version");
  if (!version.empty() && fs::is_directory(version)) {
    t.config = models::CLIPTextConfig::from_file(io::component_folder(version, "text_encoder", "CLIP text encoder") / "config.json");
    t.origin = version;
  } else if (version == "openai/clip-vit-large-patch14" &&
             weights.info(layout.text_prefix + "text_model.embeddings.token_embedding.weight").shape[1] == 768) {
    t.config = models::CLIPTextConfig::vit_l14();
    t.origin = version;
  } else {
    t.config = infer_text_config(weights, layout);
    t.origin = "the weights' shapes";
  }
  return t;
}

template <class B>
TextToImagePipeline<B> load_nemo(B& b, const fs::path& path, const LoadOptions& o) {
  const io::NemoArchive archive(path);
  const auto& cfg = archive.config();
  const auto weights = archive.weights();
  auto layout = io::detect_layout(*weights);
  if (!layout || layout->unet_prefix.empty() || layout->vae_prefix.empty() || layout->text_prefix.empty())
    fail(".nemo archive ", path.string(), ": model_weights.ckpt does not hold a UNet, a VAE and a text encoder in NeMo's layout");
  if (o.ema) fail(".nemo archive ", path.string(), ": holds no separate EMA copy (NeMo writes EMA weights to a separate -EMA.ckpt file)");
  const auto where = path.string() + ": model_config.yaml";
  TextToImagePipeline<B> p(b);
  p.unet = io::load_unet_from(b, *weights, *layout, io::unet_config_from_nemo(cfg["unet_config"], where + ": unet_config"));
  double scale = 0.18215;
  if (cfg["scale_factor"] && !cfg["scale_factor"].IsNull()) {
    try {
      scale = cfg["scale_factor"].as<double>();
    } catch (const YAML::Exception&) {
      fail(where, ": key \"scale_factor\" needs a number, not ", YAML::Dump(cfg["scale_factor"]));
    }
    if (!(scale > 0) || !std::isfinite(scale)) fail(where, ": key \"scale_factor\" = ", scale, " is not a positive number");
  }
  p.vae = io::load_vae_from(b, *weights, *layout, io::vae_config_from_nemo(cfg["first_stage_config"], scale, where + ": first_stage_config"));
  const auto text = [&] {
    try {
      return nemo_text_encoder(cfg, *weights, *layout, path);
    } catch (const YAML::Exception& e) {  // a section of the wrong kind (a scalar where a mapping belongs, ...)
      fail(where, ": cond_stage_config / text_encoder_config: ", e.what());
    }
  }();
  layout->text = text.naming;
  p.text_encoder = io::load_clip_text_from(b, *weights, *layout, text.config);
  o.note("text encoder configuration of " + path.string() + " from " + text.origin);
  p.scheduler_config = io::scheduler_config_from_nemo(cfg["noise_scheduler"] ? cfg["noise_scheduler"] : cfg, where);
  if (!o.tokenizer.empty()) {
    p.tokenizer_files = TokenizerFiles::from_folder(o.tokenizer);
  } else if (auto own = load_detail::nemo_tokenizer(archive, cfg["tokenizer"])) {
    p.tokenizer_files = std::move(own);
  } else if (text.tokenizer) {
    p.tokenizer_files = text.tokenizer;
  } else if (o.fallback_tokenizer) {
    p.tokenizer_files = o.fallback_tokenizer;
    o.note(path.string() + " carries no tokenizer files: using the base model's");
  } else {
    fail(".nemo archive ", path.string(),
         ": carries no tokenizer files (NeMo's CLIP tokenizer comes from Hugging Face by name); give a folder with vocab.json and merges.txt "
         "(model.tokenizer_path, --tokenizer)");
  }
  p.tokenizer = load_detail::tokenizer_from(*p.tokenizer_files);
  return p;
}

template <class B>
TextToImagePipeline<B> load_single_file(B& b, const fs::path& path, const LoadOptions& o) {
  const auto source = io::open_tensor_source(path);
  auto layout = io::detect_layout(*source);
  if (!layout || layout->unet_prefix.empty() || layout->vae_prefix.empty() || layout->text_prefix.empty())
    fail("model file ", path.string(),
         " does not hold a UNet, a VAE and a text encoder (no model.diffusion_model., first_stage_model., "
         "cond_stage_model. keys; for a single component give it where that component is expected)");
  if (o.ema) {
    if (!io::has_unet_ema(*source)) fail("model file ", path.string(), " holds no EMA copy of its UNet (no model_ema.* tensors)");
    layout->ema = true;
  }
  const bool sd2 = layout->text == io::TextNaming::OpenCLIP;
  TextToImagePipeline<B> p(b);
  const auto& c = o.configs;
  p.unet = io::load_unet_from(
      b, *source, *layout,
      c.empty() ? (sd2 ? models::UNetConfig::sd2() : models::UNetConfig::sd15()) : models::UNetConfig::from_file(c / "unet" / "config.json"));
  p.vae = io::load_vae_from(b, *source, *layout, c.empty() ? models::VAEConfig::sd() : models::VAEConfig::from_file(c / "vae" / "config.json"));
  p.text_encoder = io::load_clip_text_from(b, *source, *layout,
                                           c.empty() ? (sd2 ? models::CLIPTextConfig::vit_h14() : models::CLIPTextConfig::vit_l14())
                                                     : models::CLIPTextConfig::from_file(c / "text_encoder" / "config.json"));
  if (!c.empty() && fs::exists(c / "scheduler" / "scheduler_config.json")) {
    p.scheduler_config = schedulers::SchedulerConfig::from_file(c / "scheduler" / "scheduler_config.json");
  } else if (sd2) {  // diffusers' rule for SD 2.x single files: v-prediction unless the base model's last step
    const auto& meta = source->metadata();
    const bool base = meta.count("global_step") && meta.at("global_step") == "875000";
    p.scheduler_config.prediction_type = base ? "epsilon" : "v_prediction";
    o.note(path.string() + ": an SD 2.x checkpoint, taken as " + (base ? "epsilon" : "v") +
           "-prediction (diffusers' rule; give --configs to say otherwise)");
  }
  const auto tokenizer = !o.tokenizer.empty() ? o.tokenizer : c.empty() ? fs::path() : c / "tokenizer";
  if (!tokenizer.empty() && fs::exists(tokenizer))
    p.tokenizer_files = TokenizerFiles::from_folder(tokenizer);
  else if (o.fallback_tokenizer)
    p.tokenizer_files = o.fallback_tokenizer;
  else
    fail("model file ", path.string(),
         " carries no tokenizer: give a folder with vocab.json and merges.txt (model.tokenizer_path, --tokenizer) or --configs DIR");
  p.tokenizer = load_detail::tokenizer_from(*p.tokenizer_files);
  return p;
}

template <class B>
TextToImagePipeline<B> load_pipeline(B& b, const fs::path& path, const LoadOptions& o = {}) {
  switch (model_kind(path)) {
    case ModelKind::Diffusers:
      if (o.ema) fail("model ", path.string(), ": a diffusers folder holds no EMA copy");
      return TextToImagePipeline<B>::from_pretrained(b, path);
    case ModelKind::Nemo: return load_nemo(b, path, o);
    case ModelKind::SingleFile: return load_single_file(b, path, o);
  }
  fail("unreachable");
}

}  // namespace dreambooth::pipeline
