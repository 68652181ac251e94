// Writing a pipeline in the formats other tools load, each atomically (a temporary name, then one rename):
//   diffusers   a folder diffusers' StableDiffusionPipeline.from_pretrained and transformers load unchanged:
//               model_index.json, unet/ vae/ (config.json + diffusion_pytorch_model.safetensors), text_encoder/
//               (config.json + model.safetensors), tokenizer/ (vocab.json, merges.txt, special_tokens_map.json,
//               tokenizer_config.json), scheduler/scheduler_config.json; every safetensors file with {"format": "pt"};
//   safetensors / ckpt   one original-layout (CompVis) file, the layout A1111, ComfyUI, stable-diffusion.cpp and diffusers'
//               from_single_file read: model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.* (SD 1.x)
//               or cond_stage_model.model.* with OpenCLIP names (SD 2.x: a 23-layer gelu text encoder); the .ckpt is
//               torch.save({"state_dict": ...}) in the members every loader accepts (torch_checkpoint_writer.hpp);
//   nemo        a .nemo as NeMo's MegatronDreamBooth saves one (model.unet / model.vae / model.text_encoder.transformer with
//               FrozenCLIPEmbedder, model.noise_scheduler's twelve schedule buffers, a model_config.yaml NeMo restores),
//               plus tokenizer/ members and a text_encoder_config entry so that the archive also reloads here alone.
// Weights in fp32, fp16 or bf16 (`dtype`); the schedule buffers stay fp32, as NeMo registers them.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "dreambooth/io/atomic_file.hpp"
#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/io/nemo_archive.hpp"
#include "dreambooth/io/nemo_model_config.hpp"
#include "dreambooth/io/torch_checkpoint_writer.hpp"
#include "dreambooth/nn/parameters.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"

namespace dreambooth::pipeline {

enum class ExportFormat { Diffusers, Safetensors, Ckpt, Nemo };

inline ExportFormat parse_export_format(const std::string& name, const std::string& origin) {
  if (name == "diffusers") return ExportFormat::Diffusers;
  if (name == "safetensors") return ExportFormat::Safetensors;
  if (name == "ckpt") return ExportFormat::Ckpt;
  if (name == "nemo") return ExportFormat::Nemo;
  fail(origin, ": export format \"", name, "\" is not one of diffusers, safetensors, ckpt, nemo");
}
inline std::string export_format_name(ExportFormat f) {
  switch (f) {
    case ExportFormat::Diffusers: return "diffusers";
    case ExportFormat::Safetensors: return "safetensors";
    case ExportFormat::Ckpt: return "ckpt";
    case ExportFormat::Nemo: return "nemo";
  }
  return "";
}
// The stored precision named by NeMo's / Lightning's spellings: 32 / fp32, 16 / fp16, bf16.
inline DType parse_save_precision(const std::string& value, const std::string& origin) {
  if (value == "32" || value == "fp32" || value == "32-true") return DType::F32;
  if (value == "16" || value == "fp16" || value == "16-mixed" || value == "16-true") return DType::F16;
  if (value == "bf16" || value == "bf16-mixed" || value == "bf16-true") return DType::BF16;
  fail(origin, ": save precision \"", value, "\" is not one of 32, 16, bf16");
}

// SD 2.x's text encoder (OpenCLIP ViT-H/14 as diffusers keeps it: 23 gelu layers) is written with OpenCLIP's names.
inline bool openclip_text_encoder(const models::CLIPTextConfig& c) { return c.hidden_act == "gelu" && c.num_hidden_layers == 23; }

namespace export_detail {
inline void write_json(const std::filesystem::path& path, const nlohmann::json& j) { io::write_file_atomically(path, j.dump(2) + "\n", "export"); }

// Writes `body(tmp)` into a temporary sibling of `target`, then renames it over `target` (a file or a folder).
inline void atomically(const std::filesystem::path& target, const std::function<void(const std::filesystem::path&)>& body) {
  namespace fs = std::filesystem;
  if (target.has_parent_path()) fs::create_directories(target.parent_path());
  const auto tmp = fs::path(target.string() + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  try {
    body(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  io::publish(tmp, target, "export");
}

// LDM's register_schedule buffers (v_posterior = 0) for a linear ("scaled_linear") schedule, as NeMo's
// sd_noise_scheduler registers them; computed in double, stored as float.
inline std::vector<std::pair<std::string, std::vector<float>>> ldm_schedule_buffers(const schedulers::SchedulerConfig& c) {
  const auto n = static_cast<std::size_t>(c.num_train_timesteps);
  std::vector<double> betas(n), alphas(n), ac(n), prev(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double f = n > 1 ? static_cast<double>(i) / static_cast<double>(n - 1) : 0.0;
    const double s = std::sqrt(c.beta_start) + (std::sqrt(c.beta_end) - std::sqrt(c.beta_start)) * f;
    betas[i] = s * s;
    alphas[i] = 1.0 - betas[i];
    ac[i] = (i ? ac[i - 1] : 1.0) * alphas[i];
    prev[i] = i ? ac[i - 1] : 1.0;
  }
  const auto make = [&](const std::function<double(std::size_t)>& f) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(f(i));
    return v;
  };
  const auto posterior_variance = [&](std::size_t i) { return betas[i] * (1.0 - prev[i]) / (1.0 - ac[i]); };
  return {{"betas", make([&](auto i) { return betas[i]; })},
          {"alphas_cumprod", make([&](auto i) { return ac[i]; })},
          {"alphas_cumprod_prev", make([&](auto i) { return prev[i]; })},
          {"sqrt_alphas_cumprod", make([&](auto i) { return std::sqrt(ac[i]); })},
          {"sqrt_one_minus_alphas_cumprod", make([&](auto i) { return std::sqrt(1.0 - ac[i]); })},
          {"log_one_minus_alphas_cumprod", make([&](auto i) { return std::log(1.0 - ac[i]); })},
          {"sqrt_recip_alphas_cumprod", make([&](auto i) { return std::sqrt(1.0 / ac[i]); })},
          {"sqrt_recipm1_alphas_cumprod", make([&](auto i) { return std::sqrt(1.0 / ac[i] - 1.0); })},
          {"posterior_variance", make(posterior_variance)},
          {"posterior_log_variance_clipped", make([&](auto i) { return std::log(std::max(posterior_variance(i), 1e-20)); })},
          {"posterior_mean_coef1", make([&](auto i) { return betas[i] * std::sqrt(prev[i]) / (1.0 - ac[i]); })},
          {"posterior_mean_coef2", make([&](auto i) { return (1.0 - prev[i]) * std::sqrt(alphas[i]) / (1.0 - ac[i]); })}};
}

inline nlohmann::json tokenizer_config(const TokenizerFiles& t) {
  return {{"tokenizer_class", "CLIPTokenizer"},
          {"model_max_length", 77},
          {"bos_token", "<|startoftext|>"},
          {"eos_token", "<|endoftext|>"},
          {"unk_token", "<|endoftext|>"},
          {"pad_token", t.pad_token},
          {"errors", "replace"},
          {"clean_up_tokenization_spaces", false}};
}
}  // namespace export_detail

template <class B>
void require_tokenizer_files(const TextToImagePipeline<B>& p, const std::string& what) {
  if (!p.tokenizer_files) fail(what, ": the pipeline holds no tokenizer files to write");
}

template <class B>
void export_diffusers(TextToImagePipeline<B>& p, const std::filesystem::path& folder, DType dtype = DType::F32) {
  using namespace export_detail;
  require_tokenizer_files(p, "diffusers export");
  atomically(folder, [&](const std::filesystem::path& tmp) {
    std::filesystem::create_directories(tmp);
    for (const char* sub : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}) std::filesystem::create_directories(tmp / sub);
    write_json(tmp / "unet" / "config.json", p.unet->config.to_json());
    io::save_parameters(*p.unet, tmp / "unet" / "diffusion_pytorch_model.safetensors", {}, dtype);
    write_json(tmp / "vae" / "config.json", p.vae->config.to_json());
    io::save_parameters(*p.vae, tmp / "vae" / "diffusion_pytorch_model.safetensors", {}, dtype);
    write_json(tmp / "text_encoder" / "config.json", p.text_encoder->config.to_json());
    io::save_parameters(*p.text_encoder, tmp / "text_encoder" / "model.safetensors", {}, dtype);
    io::write_file_atomically(tmp / "tokenizer" / "vocab.json", p.tokenizer_files->vocab_json, "diffusers export");
    io::write_file_atomically(tmp / "tokenizer" / "merges.txt", p.tokenizer_files->merges_txt, "diffusers export");
    write_json(tmp / "tokenizer" / "special_tokens_map.json", {{"bos_token", "<|startoftext|>"},
                                                               {"eos_token", "<|endoftext|>"},
                                                               {"unk_token", "<|endoftext|>"},
                                                               {"pad_token", p.tokenizer_files->pad_token}});
    write_json(tmp / "tokenizer" / "tokenizer_config.json", tokenizer_config(*p.tokenizer_files));
    write_json(tmp / "scheduler" / "scheduler_config.json", p.scheduler_config.to_json());
    write_json(tmp / "model_index.json", {{"_class_name", "StableDiffusionPipeline"},
                                          {"_diffusers_version", "0.31.0"},
                                          {"feature_extractor", {nullptr, nullptr}},
                                          {"image_encoder", {nullptr, nullptr}},
                                          {"requires_safety_checker", false},
                                          {"safety_checker", {nullptr, nullptr}},
                                          {"scheduler", {"diffusers", p.scheduler_config.class_name}},
                                          {"text_encoder", {"transformers", "CLIPTextModel"}},
                                          {"tokenizer", {"transformers", "CLIPTokenizer"}},
                                          {"unet", {"diffusers", "UNet2DConditionModel"}},
                                          {"vae", {"diffusers", "AutoencoderKL"}}});
  });
}

// One original-layout file: .safetensors or a .ckpt.
template <class B>
void export_single_file(TextToImagePipeline<B>& p, const std::filesystem::path& path, ExportFormat format, DType dtype = DType::F32) {
  const auto layout = openclip_text_encoder(p.text_encoder->config) ? io::Layout::original_sd2() : io::Layout::original();
  const auto fill = [&](io::TensorWriter& w) {
    io::write_parameters(*p.unet, io::name_map(*p.unet, layout), w, dtype);
    io::write_parameters(*p.vae, io::name_map(*p.vae, layout), w, dtype);
    io::write_parameters(*p.text_encoder, io::name_map(*p.text_encoder, layout), w, dtype);
  };
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  if (format == ExportFormat::Ckpt) {
    io::TorchCheckpointWriter w("state_dict");
    fill(w);
    w.write(path);
  } else {
    io::SafetensorsWriter w;
    fill(w);
    w.set_metadata("producer", "dreambooth.cpp");
    w.write(path);
  }
}

// The model: section of the .nemo's model_config.yaml. `extra` (the training configuration's NeMo keys) is merged in.
template <class B>
YAML::Node nemo_model_config(TextToImagePipeline<B>& p) {
  YAML::Node c;
  c["precision"] = 32;
  c["micro_batch_size"] = 1;
  c["global_batch_size"] = 1;
  c["with_prior_preservation"] = false;
  c["use_cached_latents"] = false;
  c["prior_loss_weight"] = 0.5;
  c["train_text_encoder"] = false;
  c["restore_from_path"] = YAML::Node(YAML::NodeType::Null);
  c["scale_factor"] = p.vae->config.scaling_factor;
  c["inductor"] = false;
  c["inductor_cudagraphs"] = false;
  c["channels_last"] = false;
  c["unet_config"] = io::nemo_unet_config(p.unet->config);
  c["first_stage_config"] = io::nemo_first_stage_config(p.vae->config);
  YAML::Node text;
  text["_target_"] = "nemo.collections.multimodal.modules.stable_diffusion.encoders.modules.FrozenCLIPEmbedder";
  text["version"] = "openai/clip-vit-large-patch14";
  text["device"] = "cuda";
  text["max_length"] = 77;
  c["cond_stage_config"] = text;
  c["noise_scheduler"] = io::nemo_noise_scheduler(p.scheduler_config);
  c["seed"] = 1234;
  // Not a NeMo key (NeMo ignores it): the text encoder's own configuration, for encoders other than CLIP ViT-L/14, which
  // FrozenCLIPEmbedder's `version` cannot name.
  c["text_encoder_config"] = YAML::Load(p.text_encoder->config.to_json().dump());
  c["target"] = "nemo.collections.multimodal.models.text_to_image.dreambooth.dreambooth.MegatronDreamBooth";
  c["nemo_version"] = "2.2.1";
  return c;
}

template <class B>
void export_nemo(TextToImagePipeline<B>& p, const std::filesystem::path& path, DType dtype = DType::F32, const YAML::Node& config = {}) {
  require_tokenizer_files(p, ".nemo export");
  const auto layout = io::Layout::nemo_dreambooth(io::TextNaming::Transformers);
  io::TorchCheckpointWriter w;  // a bare state dict, as NeMo saves model_weights.ckpt
  io::write_parameters(*p.text_encoder, io::name_map(*p.text_encoder, layout), w, dtype);
  io::write_parameters(*p.vae, io::name_map(*p.vae, layout), w, dtype);
  io::write_parameters(*p.unet, io::name_map(*p.unet, layout), w, dtype);
  for (const auto& [name, values] : export_detail::ldm_schedule_buffers(p.scheduler_config))
    w.add("model.noise_scheduler." + name, {static_cast<std::int64_t>(values.size())}, values);
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  io::write_nemo_archive(path, config.IsDefined() && config.IsMap() ? config : nemo_model_config(p), w,
                         {{"tokenizer/vocab.json", p.tokenizer_files->vocab_json},
                          {"tokenizer/merges.txt", p.tokenizer_files->merges_txt},
                          {"tokenizer/special_tokens_map.json", nlohmann::json{{"pad_token", p.tokenizer_files->pad_token}}.dump()}});
}

template <class B>
void export_pipeline(TextToImagePipeline<B>& p, const std::filesystem::path& path, ExportFormat format, DType dtype = DType::F32) {
  // a model with NaN or infinite weights is never published
  nn::require_finite_parameters(*p.unet, "export " + path.string() + ": the UNet");
  nn::require_finite_parameters(*p.vae, "export " + path.string() + ": the VAE");
  nn::require_finite_parameters(*p.text_encoder, "export " + path.string() + ": the text encoder");
  switch (format) {
    case ExportFormat::Diffusers: export_diffusers(p, path, dtype); return;
    case ExportFormat::Safetensors:
    case ExportFormat::Ckpt: export_single_file(p, path, format, dtype); return;
    case ExportFormat::Nemo: export_nemo(p, path, dtype); return;
  }
}

}  // namespace dreambooth::pipeline
