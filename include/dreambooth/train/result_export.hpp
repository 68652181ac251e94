// The fine-tuned model written at the end of training: every format model.export names (output_dir/model as a
// diffusers folder, model.safetensors, model.ckpt, model.nemo) at model.save_precision, each published atomically and
// checked finite (export.hpp); and NeMo's <name>.nemo in output_dir/checkpoints when NeMo's exp_manager would write one.
// LoRA training writes the adapters instead (output_dir/lora.safetensors in kohya's format, or
// output_dir/pytorch_lora_weights.safetensors in diffusers'), and, with model.peft.merged_export, the model with the
// adapters folded in, in every format model.export names.
#pragma once

#include <filesystem>
#include <functional>
#include <sstream>
#include <string>

#include "dreambooth/pipeline/export.hpp"
#include "dreambooth/pipeline/lora_files.hpp"
#include "dreambooth/train/config.hpp"

namespace dreambooth::train {

// NeMo's <log dir>/checkpoints/<name>.nemo; returns its path.
template <class B>
std::filesystem::path save_nemo_checkpoint(const TrainingConfig& c, const std::filesystem::path& output_dir, pipeline::TextToImagePipeline<B>& pipe) {
  const auto path = output_dir / "checkpoints" / ((c.name.empty() ? std::string("model") : c.name) + ".nemo");
  pipeline::export_nemo(pipe, path, pipeline::parse_save_precision(c.save_precision, "model.save_precision"));
  return path;
}

template <class B>
void export_trained_model(const TrainingConfig& c, const std::filesystem::path& output_dir, pipeline::TextToImagePipeline<B>& pipe,
                          const std::function<void(const std::string&)>& log) {
  const auto dtype = pipeline::parse_save_precision(c.save_precision, "model.save_precision");
  for (const auto& name : c.export_formats) {
    const auto format = pipeline::parse_export_format(name, "model.export");
    const auto path = format == pipeline::ExportFormat::Diffusers ? output_dir / "model" : output_dir / ("model." + name);
    pipeline::export_pipeline(pipe, path, format, dtype);
    log("saved the fine-tuned model to " + path.string() + " (" + name + ", " + std::string(dtype_name(dtype)) + ")");
  }
  if (c.writes_nemo_on_train_end()) log("saved " + save_nemo_checkpoint(c, output_dir, pipe).string());
}

// The LoRA file of a LoRA run (model.peft.export_format, model.save_precision, kohya's metadata); returns its path.
template <class B>
std::filesystem::path export_lora(const TrainingConfig& c, const std::filesystem::path& output_dir, models::LoraNetwork<B>& lora,
                                  std::size_t instance_images, std::size_t class_images) {
  const auto format = pipeline::parse_lora_format(c.lora_format, "model.peft.export_format");
  const auto path = output_dir / (format == pipeline::LoraFormat::Kohya ? "lora.safetensors" : "pytorch_lora_weights.safetensors");
  const auto& base_path = !c.base_model_path.empty()     ? c.base_model_path
                          : !c.restore_from_path.empty() ? c.restore_from_path
                                                         : c.unet_from_pretrained;
  const auto base = std::filesystem::path(base_path).filename().string();
  std::ostringstream lr;
  lr << c.lr;
  pipeline::write_lora(lora, path, format, pipeline::parse_save_precision(c.save_precision, "model.save_precision"),
                       {{"ss_output_name", c.name.empty() ? std::string("lora") : c.name},
                        {"ss_sd_model_name", base},
                        {"ss_resolution", "(" + std::to_string(c.resolution) + ", " + std::to_string(c.resolution) + ")"},
                        {"ss_max_train_steps", std::to_string(c.max_steps)},
                        {"ss_learning_rate", lr.str()},
                        {"ss_unet_lr", lr.str()},
                        {"ss_text_encoder_lr", c.text_encoder_lora() ? lr.str() : "0"},
                        {"ss_optimizer", "AdamW"},
                        {"ss_lr_scheduler", c.schedule.name},
                        {"ss_seed", std::to_string(c.seed)},
                        {"ss_prior_loss_weight", c.with_prior_preservation ? std::to_string(c.prior_loss_weight) : "0"},
                        {"ss_num_train_images", std::to_string(instance_images)},
                        {"ss_num_reg_images", std::to_string(class_images)},
                        {"ss_network_dropout", "None"},
                        {"modelspec.title", c.name.empty() ? std::string("lora") : c.name},
                        {"modelspec.resolution", std::to_string(c.resolution) + "x" + std::to_string(c.resolution)},
                        {"modelspec.prediction_type", "epsilon"},
                        {"dreambooth_cpp.lora", c.lora_description()}});
  return path;
}

}  // namespace dreambooth::train
