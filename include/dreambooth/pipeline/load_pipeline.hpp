// load_pipeline(): a text-to-image pipeline from whatever a user has, chosen by what the path holds (not its name):
//   a diffusers folder (model_index.json / unet/ ...)              configs, tokenizer and scheduler from the folder;
//   a .nemo archive, or an extracted one (model_config.yaml)       NeMo's model_config.yaml gives the UNet, VAE and
//       schedule; the text encoder's configuration comes from the embedded CLIP config (Stable Diffusion .nemo), the CLIP
//       .nemo its cond_stage_config.restore_from_path names (DreamBooth .nemo), a transformers folder named by `version`,
//       or the weights' shapes; the tokenizer from the archive's artifacts, the CLIP .nemo's, or options.tokenizer;
//   one weights file (.safetensors / .ckpt / .pt / .bin) in the original (CompVis) or NeMo layout: each component's
//       configuration from the description (PipelineSpec's unet / vae / text_encoder .config: generate's --unet-config,
//       training's model.unet_config), else options.configs (a diffusers-style folder), else Stable Diffusion 1.x's, 2.x's
//       for an OpenCLIP text encoder (as v-prediction unless the file says it is SD 2.x base's step 875000, diffusers'
//       rule); the tokenizer from options.tokenizer or options.configs/tokenizer.
// One loader for generate, convert and training: a PipelineSpec describes the base model and where each component comes
// from instead (a folder, a .nemo or a weights file with its architecture: NeMo's unet_config.from_pretrained,
// first_stage_config.from_pretrained, cond_stage_config; generate's --unet / --vae / --text-encoder), the tokenizer, the
// training schedule and the latent scale; load_pipeline(b, spec) loads it. train/model_assembly.hpp fills one in from
// NeMo's keys.
#pragma once

#include <yaml-cpp/yaml.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "dreambooth/io/atomic_file.hpp"
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
  // written through the checked writer: a full disk is an error here, not a truncated vocabulary later
  io::write_file_atomically(dir / "vocab.json", files.vocab_json, "tokenizer files");
  io::write_file_atomically(dir / "merges.txt", files.merges_txt, "tokenizer files");
  io::write_file_atomically(dir / "special_tokens_map.json", nlohmann::json{{"pad_token", files.pad_token}}.dump(), "tokenizer files");
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

// Where one component comes from when not from the base model, and the architecture for weights that carry none.
template <class Config>
struct ComponentSource {
  fs::path from;                 // a diffusers / transformers folder, a .nemo, or a weights file; empty: the base model's
  std::string key;               // what named `from`, for errors: "config key model.unet_config.from_pretrained", "--unet"
  std::optional<Config> config;  // the architecture of a weights file in `from`, or of the base single file's component
  std::string config_key;        // what gave `config`, for errors and notes: "model.unet_config", "--unet-config"
};

// A pipeline described: the base model, and where each component, the tokenizer and the schedule come from instead.
// Training (train/model_assembly.hpp, from NeMo's keys) and generate / convert (their options) fill one in, and
// load_pipeline(b, spec) loads it, so the two load the same pipeline from the same description.
struct PipelineSpec {
  fs::path model;       // the base: a diffusers folder, a .nemo or a single file; empty when every component is named
  LoadOptions options;  // tokenizer, configs (single files), ema, fallback tokenizer, notes
  ComponentSource<models::UNetConfig> unet;
  ComponentSource<models::VAEConfig> vae;
  ComponentSource<models::CLIPTextConfig> text_encoder;
  std::optional<bool> unet_nemo_names;  // NeMo's unet_config.from_NeMo: noted when a bare UNet file's names say otherwise
  // the training schedule (timesteps, betas, prediction type) replacing the base's: NeMo's model.noise_scheduler
  std::optional<schedulers::SchedulerConfig> training_schedule;
  std::optional<double> scale_factor;  // the latent scale replacing the VAE's (NeMo's model.scale_factor)
};

namespace load_detail {
// Where each component's configuration comes from for a single file or a bare weights file: the description's, else
// options.configs's folder, else `fallback` (SD 1.x's or 2.x's).
template <class Config>
Config architecture(const ComponentSource<Config>& c, const fs::path& configs, const char* subfolder, const fs::path& weights, const LoadOptions& o,
                    Config fallback) {
  if (c.config) {
    o.note(c.config_key + " gives the architecture of " + weights.string() + "'s " + subfolder);
    return *c.config;
  }
  if (!configs.empty()) return Config::from_file(configs / subfolder / "config.json");
  return fallback;
}

// A component's weights as described: a .nemo (its config gives the architecture), a diffusers / transformers folder
// (its config.json), or a weights file in any layout (the description's architecture). `read` loads the component from a
// tensor source; `has` finds it in a source's keys; `nemo_config` reads a .nemo's configuration of it.
template <class Model, class Config, class Has, class Read, class FromNemo, class FromFolder>
std::unique_ptr<Model> load_component(const ComponentSource<Config>& c, const char* what, Has has, Read read, FromNemo nemo_config,
                                      FromFolder folder) {
  const auto& path = c.from;
  if (!fs::exists(path)) fail(c.key, ": ", path.string(), " does not exist");
  if (model_kind(path) == ModelKind::Nemo) {
    const io::NemoArchive a(path);
    const auto weights = a.weights();
    io::Layout layout;
    if (!has(*weights, layout)) fail(c.key, ": ", path.string(), " holds no ", what);
    return read(*weights, layout, nemo_config(a));
  }
  if (fs::is_directory(path)) return folder(path);
  if (!c.config)
    fail(c.key, ": ", path.string(), " carries no configuration and ", c.config_key.empty() ? "none is given" : c.config_key + " gives none");
  const auto source = io::open_tensor_source(path);
  io::Layout layout;
  if (!has(*source, layout)) fail(c.key, ": ", path.string(), " holds no ", what, " weights");
  return read(*source, layout, *c.config);
}
}  // namespace load_detail

template <class B>
std::unique_ptr<models::UNet2DConditionModel<B>> load_unet_source(B& b, const PipelineSpec& s) {
  const auto& path = s.unet.from;
  return load_detail::load_component<models::UNet2DConditionModel<B>>(
      s.unet, "UNet", [](const io::TensorSource& t, io::Layout& l) { return io::detect_unet(t, l); },
      [&](const io::TensorSource& t, const io::Layout& l, const models::UNetConfig& config) {
        if (s.unet_nemo_names && !fs::is_directory(path) && model_kind(path) != ModelKind::Nemo &&
            *s.unet_nemo_names != (l.unet == io::UNetNaming::NeMo || l.unet == io::UNetNaming::NeMoLegacyNorms))
          s.options.note("model.unet_config.from_NeMo is " + std::string(*s.unet_nemo_names ? "True" : "False") + " but " + path.string() +
                         " holds " + (*s.unet_nemo_names ? "diffusers or CompVis" : "NeMo") + " names; they were read as such");
        return io::load_unet_from(b, t, l, config);
      },
      [&](const io::NemoArchive& a) { return io::unet_config_from_nemo(a.config()["unet_config"], path.string() + ": unet_config"); },
      [&](const fs::path& folder) { return io::load_unet(b, folder); });
}

template <class B>
std::unique_ptr<models::AutoencoderKL<B>> load_vae_source(B& b, const PipelineSpec& s) {
  const auto& path = s.vae.from;
  return load_detail::load_component<models::AutoencoderKL<B>>(
      s.vae, "VAE", [](const io::TensorSource& t, io::Layout& l) { return io::detect_vae(t, l); },
      [&](const io::TensorSource& t, const io::Layout& l, const models::VAEConfig& config) { return io::load_vae_from(b, t, l, config); },
      [&](const io::NemoArchive& a) {
        return io::vae_config_from_nemo(a.config()["first_stage_config"], s.scale_factor.value_or(0.18215), path.string() + ": first_stage_config");
      },
      [&](const fs::path& folder) { return io::load_vae(b, folder); });
}

// The text encoder as described, and the tokenizer files that come with it: a Megatron CLIP .nemo (its tokenizer
// artifacts), a transformers folder (its vocab.json and merges.txt when it holds them), or a weights file.
template <class B>
std::unique_ptr<models::CLIPTextModel<B>> load_text_source(B& b, const PipelineSpec& s, std::optional<TokenizerFiles>& tokenizer) {
  const auto& c = s.text_encoder;
  const auto& path = c.from;
  if (fs::exists(path) && model_kind(path) == ModelKind::Nemo) {
    const io::NemoArchive clip(path);
    const auto weights = clip.weights();
    io::Layout layout;
    if (!io::detect_text(*weights, layout) || (layout.text != io::TextNaming::Megatron))
      fail(c.key, ": ", path.string(), " holds no Megatron CLIP text encoder");
    const auto vocab = weights->info(layout.text_prefix + "language_model.embedding.word_embeddings.weight").shape[0];
    const auto text = io::megatron_text_config(clip.config()["text"], vocab, path.string() + ": text");
    layout.text = text.megatron_legacy ? io::TextNaming::Megatron : io::TextNaming::MegatronInterleaved;
    tokenizer = load_detail::nemo_tokenizer(clip, clip.config()["tokenizer"]);
    return io::load_clip_text_from(b, *weights, layout, text.clip);
  }
  if (fs::is_directory(path) && fs::exists(path / "vocab.json")) tokenizer = TokenizerFiles::from_folder(path);
  return load_detail::load_component<models::CLIPTextModel<B>>(
      c, "text encoder", [](const io::TensorSource& t, io::Layout& l) { return io::detect_text(t, l); },
      [&](const io::TensorSource& t, const io::Layout& l, const models::CLIPTextConfig& config) { return io::load_clip_text_from(b, t, l, config); },
      [&](const io::NemoArchive&) -> models::CLIPTextConfig { fail("unreachable"); },
      [&](const fs::path& folder) { return io::load_clip_text(b, folder); });
}

namespace load_detail {
// A base model whose components carry their own configurations: the description's architectures for them are not used.
inline void note_unused_architectures(const PipelineSpec& s) {
  const auto unused = [&](const auto& c) {
    if (c.config && c.from.empty()) s.options.note(c.config_key + " is not used: " + s.model.string() + " carries its own configuration");
  };
  unused(s.unet);
  unused(s.vae);
  unused(s.text_encoder);
}

// The tokenizer a pipeline gets: options.tokenizer, else the described text encoder's, else what the base carries
// (`own`), else options.fallback_tokenizer; unset when none.
inline std::optional<TokenizerFiles> choose_tokenizer(const LoadOptions& o, const std::optional<TokenizerFiles>& text,
                                                      std::optional<TokenizerFiles> own) {
  if (!o.tokenizer.empty()) return TokenizerFiles::from_folder(o.tokenizer);
  if (text) return text;
  return own;
}
}  // namespace load_detail

template <class B>
TextToImagePipeline<B> load_nemo(B& b, const PipelineSpec& s, const std::optional<TokenizerFiles>& text_tokenizer) {
  const auto& path = s.model;
  const auto& o = s.options;
  const io::NemoArchive archive(path);
  const auto& cfg = archive.config();
  const auto weights = archive.weights();
  auto layout = io::detect_layout(*weights);
  if (!layout || layout->unet_prefix.empty() || layout->vae_prefix.empty() || layout->text_prefix.empty())
    fail(".nemo archive ", path.string(), ": model_weights.ckpt does not hold a UNet, a VAE and a text encoder in NeMo's layout");
  if (o.ema) fail(".nemo archive ", path.string(), ": holds no separate EMA copy (NeMo writes EMA weights to a separate -EMA.ckpt file)");
  const auto where = path.string() + ": model_config.yaml";
  TextToImagePipeline<B> p(b);
  if (s.unet.from.empty()) p.unet = io::load_unet_from(b, *weights, *layout, io::unet_config_from_nemo(cfg["unet_config"], where + ": unet_config"));
  double scale = 0.18215;
  if (cfg["scale_factor"] && !cfg["scale_factor"].IsNull()) {
    try {
      scale = cfg["scale_factor"].as<double>();
    } catch (const YAML::Exception&) {
      fail(where, ": key \"scale_factor\" needs a number, not ", YAML::Dump(cfg["scale_factor"]));
    }
    if (!(scale > 0) || !std::isfinite(scale)) fail(where, ": key \"scale_factor\" = ", scale, " is not a positive number");
  }
  if (s.vae.from.empty())
    p.vae = io::load_vae_from(b, *weights, *layout, io::vae_config_from_nemo(cfg["first_stage_config"], scale, where + ": first_stage_config"));
  std::optional<TokenizerFiles> clip_tokenizer;
  if (s.text_encoder.from.empty()) {
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
    clip_tokenizer = text.tokenizer;
  }
  p.scheduler_config = io::scheduler_config_from_nemo(cfg["noise_scheduler"] ? cfg["noise_scheduler"] : cfg, where);
  auto own = load_detail::nemo_tokenizer(archive, cfg["tokenizer"]);
  p.tokenizer_files = load_detail::choose_tokenizer(o, text_tokenizer, own ? std::move(own) : clip_tokenizer);
  if (!p.tokenizer_files && o.fallback_tokenizer) {
    p.tokenizer_files = o.fallback_tokenizer;
    o.note(path.string() + " carries no tokenizer files: using the base model's");
  }
  if (!p.tokenizer_files)
    fail(".nemo archive ", path.string(),
         ": carries no tokenizer files (NeMo's CLIP tokenizer comes from Hugging Face by name); give a folder with vocab.json and merges.txt "
         "(model.tokenizer_path, --tokenizer)");
  return p;
}

template <class B>
TextToImagePipeline<B> load_single_file(B& b, const PipelineSpec& s, const std::optional<TokenizerFiles>& text_tokenizer) {
  const auto& path = s.model;
  const auto& o = s.options;
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
  using load_detail::architecture;
  if (s.unet.from.empty())
    p.unet = io::load_unet_from(b, *source, *layout,
                                architecture(s.unet, c, "unet", path, o, sd2 ? models::UNetConfig::sd2() : models::UNetConfig::sd15()));
  if (s.vae.from.empty()) p.vae = io::load_vae_from(b, *source, *layout, architecture(s.vae, c, "vae", path, o, models::VAEConfig::sd()));
  if (s.text_encoder.from.empty())
    p.text_encoder = io::load_clip_text_from(
        b, *source, *layout,
        architecture(s.text_encoder, c, "text_encoder", path, o, sd2 ? models::CLIPTextConfig::vit_h14() : models::CLIPTextConfig::vit_l14()));
  if (!c.empty() && fs::exists(c / "scheduler" / "scheduler_config.json")) {
    p.scheduler_config = schedulers::SchedulerConfig::from_file(c / "scheduler" / "scheduler_config.json");
  } else if (sd2) {  // diffusers' rule for SD 2.x single files: v-prediction unless the base model's last step
    const auto& meta = source->metadata();
    const bool base = meta.count("global_step") && meta.at("global_step") == "875000";
    p.scheduler_config.prediction_type = base ? "epsilon" : "v_prediction";
    o.note(path.string() + ": an SD 2.x checkpoint, taken as " + (base ? "epsilon" : "v") +
           "-prediction (diffusers' rule; give --configs to say otherwise)");
  }
  // options.tokenizer, the described text encoder's, options.configs/tokenizer, the fallback (a folder that does not
  // exist counts as none given)
  const auto folder = [](const fs::path& f) { return !f.empty() && fs::exists(f) ? std::optional(TokenizerFiles::from_folder(f)) : std::nullopt; };
  p.tokenizer_files = folder(o.tokenizer);
  if (!p.tokenizer_files) p.tokenizer_files = text_tokenizer;
  if (!p.tokenizer_files && !c.empty()) p.tokenizer_files = folder(c / "tokenizer");
  if (!p.tokenizer_files) p.tokenizer_files = o.fallback_tokenizer;
  if (!p.tokenizer_files)
    fail("model file ", path.string(),
         " carries no tokenizer: give a folder with vocab.json and merges.txt (model.tokenizer_path, --tokenizer) or --configs DIR");
  return p;
}

// The pipeline a description gives: the base model's components (loaded only where the description names no other
// source), each described component from its own source, then the tokenizer (options.tokenizer, the described text
// encoder's, the base's own, options.fallback_tokenizer), the training schedule and the latent scale. With no base, what
// no source gives is left empty, for the caller to refuse (train/model_assembly.hpp names its keys).
template <class B>
TextToImagePipeline<B> load_pipeline(B& b, const PipelineSpec& s) {
  const auto& o = s.options;
  // the described components first: a text encoder's tokenizer files take precedence over the base's
  std::optional<TokenizerFiles> text_tokenizer;
  std::unique_ptr<models::CLIPTextModel<B>> text;
  if (!s.text_encoder.from.empty()) text = load_text_source(b, s, text_tokenizer);
  TextToImagePipeline<B> p(b);
  bool tokenizer_loaded = false;  // p.tokenizer already reads p.tokenizer_files (a diffusers folder's own)
  if (!s.model.empty()) {
    const auto kind = model_kind(s.model);
    if (kind != ModelKind::SingleFile)  // a folder's and a .nemo's components carry their own configurations
      load_detail::note_unused_architectures(s);
    switch (kind) {
      case ModelKind::Diffusers:
        if (o.ema) fail("model ", s.model.string(), ": a diffusers folder holds no EMA copy");
        p = TextToImagePipeline<B>::from_pretrained(b, s.model);
        tokenizer_loaded = o.tokenizer.empty() && !text_tokenizer;
        if (!tokenizer_loaded) p.tokenizer_files = load_detail::choose_tokenizer(o, text_tokenizer, p.tokenizer_files);
        break;
      case ModelKind::Nemo: p = load_nemo(b, s, text_tokenizer); break;
      case ModelKind::SingleFile: p = load_single_file(b, s, text_tokenizer); break;
    }
  } else {
    p.tokenizer_files = load_detail::choose_tokenizer(o, text_tokenizer, o.fallback_tokenizer);
  }
  if (text) p.text_encoder = std::move(text);
  if (!s.unet.from.empty()) p.unet = load_unet_source(b, s);
  if (!s.vae.from.empty()) p.vae = load_vae_source(b, s);
  if (p.tokenizer_files && !tokenizer_loaded) p.tokenizer = load_detail::tokenizer_from(*p.tokenizer_files);
  if (s.training_schedule) {  // the training schedule's keys; the sampling keys (class, spacing, offset) stay the base's
    const auto& t = *s.training_schedule;
    p.scheduler_config.num_train_timesteps = t.num_train_timesteps;
    p.scheduler_config.beta_start = t.beta_start;
    p.scheduler_config.beta_end = t.beta_end;
    p.scheduler_config.beta_schedule = t.beta_schedule;
    p.scheduler_config.prediction_type = t.prediction_type;
  }
  if (s.scale_factor && p.vae && *s.scale_factor != p.vae->config.scaling_factor) {
    o.note("model.scale_factor " + std::to_string(*s.scale_factor) + " replaces the VAE's scaling factor " +
           std::to_string(p.vae->config.scaling_factor));
    p.vae->config.scaling_factor = *s.scale_factor;
  }
  return p;
}

// Component overrides as files (generate's --unet / --vae / --text-encoder and --unet-config / --vae-config /
// --text-encoder-config): weights (a folder, a .nemo or a weights file) and diffusers / transformers config.json files.
struct ComponentFiles {
  fs::path unet, vae, text_encoder;                       // empty: the model's
  fs::path unet_config, vae_config, text_encoder_config;  // empty: none given
};

// The description a model and component files give (what generate loads).
inline PipelineSpec describe_pipeline(const fs::path& model, const LoadOptions& o, const ComponentFiles& f) {
  PipelineSpec s;
  s.model = model;
  s.options = o;
  const auto component = [](auto& c, const fs::path& from, const char* option, const fs::path& config, const char* config_option) {
    c.from = from;
    c.key = option;
    c.config_key = config.empty() ? std::string(config_option) : std::string(config_option) + " " + config.string();
    if (!config.empty()) c.config = std::decay_t<decltype(*c.config)>::from_file(config);
  };
  component(s.unet, f.unet, "--unet", f.unet_config, "--unet-config");
  component(s.vae, f.vae, "--vae", f.vae_config, "--vae-config");
  component(s.text_encoder, f.text_encoder, "--text-encoder", f.text_encoder_config, "--text-encoder-config");
  return s;
}

// A model as it is (a diffusers folder, a .nemo or a single file), with `o`'s tokenizer, configurations and EMA choice.
template <class B>
TextToImagePipeline<B> load_pipeline(B& b, const fs::path& path, const LoadOptions& o = {}) {
  PipelineSpec s;
  s.model = path;
  s.options = o;
  return load_pipeline(b, s);
}

}  // namespace dreambooth::pipeline
