// The fine-tuned model written at the end of training: every format model.export names (output_dir/model as a
// diffusers folder, model.safetensors, model.ckpt, model.nemo) at model.save_precision, each published atomically and
// checked finite (export.hpp); and NeMo's <name>.nemo in output_dir/checkpoints when NeMo's exp_manager would write one.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include "dreambooth/pipeline/export.hpp"
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

}  // namespace dreambooth::train
