// LoRA files: writing a trained LoRA network, and reading LoRA files into a pipeline (merged into its weights).
//
// Two formats (docs/training.md, "LoRA"):
//   kohya (sd-scripts' networks/lora.py, what A1111, ComfyUI, diffusers' load_lora_weights and stable-diffusion.cpp
//     all read): <stem>.lora_down.weight [r, in], <stem>.lora_up.weight [out, r] ([.., 1, 1] where the base weight is
//     a 1x1 convolution; [r, in, k, k] and [out, r, 1, 1] on a k x k convolution, kohya's LoCon) and <stem>.alpha (a 0-dim tensor), stem = lora_unet_
//     / lora_te_ + the module name with "." replaced by "_"; kohya's ss_* metadata;
//   diffusers (train_dreambooth_lora.py's pytorch_lora_weights.safetensors): unet.<module>.lora.down.weight /
//     .lora.up.weight and text_encoder.<module>.lora_linear_layer.down.weight / .up.weight, {"format": "pt"} metadata,
//     and no alpha: diffusers (utils/peft_utils.py get_peft_kwargs) loads each model's adapters with one lora_alpha, the
//     rank of its first adapter in key order, so an adapter of rank r gets the scale alpha_first / r; the writer folds
//     (alpha / r) / (alpha_first / r) into the up weights, and the reader applies diffusers' rule (with one rank in a
//     model, as diffusers' own scripts write, that is scale 1: alpha = rank).
// Reading accepts both, and peft's lora_A / lora_B spelling (unet.<module>.lora_A.weight). A key that names no layer
// of the model is an error naming it: a LoRA that loads only in part is never applied silently.
#pragma once

#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "dreambooth/io/open_tensors.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/models/lora_network.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"

namespace dreambooth::pipeline {

namespace fs = std::filesystem;

enum class LoraFormat { Kohya, Diffusers };

inline LoraFormat parse_lora_format(const std::string& name, const std::string& what) {
  if (name == "kohya") return LoraFormat::Kohya;
  if (name == "diffusers") return LoraFormat::Diffusers;
  fail(what, ": \"", name, "\" is not a LoRA format (kohya or diffusers)");
}

// Writes `lora` in `format` as stored dtype `dtype` (F32, F16 or BF16), atomically. `metadata` is added to kohya's
// (ss_network_dim, ss_network_alpha, ...) for the kohya format; the diffusers format carries only {"format": "pt"}.
template <class B>
void write_lora(models::LoraNetwork<B>& lora, const fs::path& path, LoraFormat format, DType dtype,
                const std::map<std::string, std::string>& metadata = {}) {
  io::SafetensorsWriter w;
  const auto& config = lora.config();
  const auto diffusers_base = [](const auto& m) { return (m->text_encoder ? "text_encoder." : "unet.") + m->module; };
  const auto diffusers_up = [&](const auto& m) { return diffusers_base(m) + (m->text_encoder ? ".lora_linear_layer." : ".lora.") + "up.weight"; };
  std::map<bool, std::pair<std::string, std::int64_t>> first_up;  // text encoder? -> (the first up key, its rank): diffusers' alpha
  for (const auto& m : lora.modules()) {
    auto& first = first_up[m->text_encoder];
    if (first.first.empty() || diffusers_up(m) < first.first) first = {diffusers_up(m), m->adapter.rank};
  }
  for (const auto& m : lora.modules()) {
    const auto& a = m->adapter;
    const auto down = a.down.value.to_host();
    auto up = a.up.value.to_host();
    if (!std::isfinite(a.scale())) fail("LoRA ", m->stem, ": scale ", a.scale(), " is not finite");
    for (float v : down)
      if (!std::isfinite(v)) fail("LoRA ", m->stem, ": lora_down holds a non-finite value; nothing was written");
    for (float v : up)
      if (!std::isfinite(v)) fail("LoRA ", m->stem, ": lora_up holds a non-finite value; nothing was written");
    if (format == LoraFormat::Kohya) {
      w.add(m->stem + ".lora_down.weight", m->down_shape(), down, dtype);
      w.add(m->stem + ".lora_up.weight", m->up_shape(), up, dtype);
      const float alpha = static_cast<float>(a.alpha);
      w.add(m->stem + ".alpha", Shape{}, std::span<const float>(&alpha, 1), DType::F32);
    } else {
      // diffusers reads the adapter at scale alpha_first / rank: fold what makes it alpha / rank
      const float scale = static_cast<float>(a.alpha / static_cast<double>(first_up.at(m->text_encoder).second));
      if (scale != 1.0f)
        for (float& v : up) v *= scale;
      const std::string base = diffusers_base(m);
      const std::string lora_part = m->text_encoder ? ".lora_linear_layer." : ".lora.";
      w.add(base + lora_part + "down.weight", m->down_shape(), down, dtype);
      w.add(base + lora_part + "up.weight", m->up_shape(), up, dtype);
    }
  }
  w.set_metadata("format", "pt");
  if (format == LoraFormat::Kohya) {
    std::ostringstream alpha;
    alpha << config.effective_alpha();
    w.set_metadata("ss_network_module", "networks.lora");
    w.set_metadata("ss_network_dim", std::to_string(config.rank));
    w.set_metadata("ss_network_alpha", alpha.str());
    if (config.dropout > 0) {
      std::ostringstream dropout;
      dropout << config.dropout;
      w.set_metadata("ss_network_dropout", dropout.str());
    }
    if (config.conv_rank) {  // kohya's network_args, as a JSON object of strings
      std::ostringstream args;
      args << "{\"conv_dim\": \"" << *config.conv_rank << "\", \"conv_alpha\": \"" << config.effective_conv_alpha() << "\"}";
      w.set_metadata("ss_network_args", args.str());
    }
    w.set_metadata("ss_base_model_version", "sd_v1");
    w.set_metadata("ss_v2", "False");
    w.set_metadata("modelspec.sai_model_spec", "1.0.1");
    w.set_metadata("modelspec.architecture", "stable-diffusion-v1/lora");
    w.set_metadata("modelspec.implementation", "diffusers");
    for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  }
  w.write(path);
}

// One adapted layer as a file gives it: the model ("unet" or "text_encoder"), the layer's module name, down [r, in]
// (on a k x k convolution [r, in, k, k], kernel k), up [out, r] and the scale alpha / r (1 without alpha).
struct LoraDelta {
  std::string model, module;
  std::int64_t rank = 0, in_features = 0, out_features = 0, kernel = 1;
  std::vector<float> down, up;
  double scale = 1.0;

  std::int64_t columns() const { return in_features * kernel * kernel; }  // of the layer's weight as a matrix [out, in k k]
};

namespace lora_detail {
// A layer a LoRA may adapt: its weight [out, in] or [out, in, k, k] and sizes (kernel 1 for a Linear).
template <class B>
struct AdaptableLayer {
  nn::Param<B>* weight = nullptr;
  std::int64_t in_features = 0, out_features = 0, kernel = 1;
};

// The module names of every Linear and Conv2d layer a LoRA may adapt, by kohya stem and by "<model>.<module>".
template <class B>
struct LayerIndex {
  std::map<std::string, std::pair<std::string, std::string>> by_stem;  // stem -> (model, module)
  std::map<std::string, AdaptableLayer<B>> layers;                     // "<model>.<module>" -> layer

  explicit LayerIndex(TextToImagePipeline<B>& pipe) {
    pipe.unet->visit_linear_layers([&](const std::string& name, nn::Linear<B>& l) {
      add("unet", "lora_unet", name, {&l.weight, l.in_features, l.out_features, 1});
    });
    pipe.unet->visit_conv_layers([&](const std::string& name, nn::Conv2d<B>& l) {
      add("unet", "lora_unet", name, {&l.weight, l.in_channels, l.out_channels, l.kernel});
    });
    pipe.text_encoder->visit_linear_layers([&](const std::string& name, nn::Linear<B>& l) {
      add("text_encoder", "lora_te", name, {&l.weight, l.in_features, l.out_features, 1});
    });
  }
  void add(const std::string& model, const std::string& prefix, const std::string& module, AdaptableLayer<B> l) {
    by_stem[models::kohya_lora_stem(prefix, module)] = {model, module};
    layers[model + "." + module] = l;
  }
};

// Splits a diffusers / peft key into (model, module, "down" | "up"); nullopt when it is not one.
inline std::optional<std::tuple<std::string, std::string, std::string>> split_diffusers_key(const std::string& key) {
  static const std::vector<std::pair<std::string, std::string>> suffixes = {
      {".lora.down.weight", "down"},          {".lora.up.weight", "up"},  {".lora_linear_layer.down.weight", "down"},
      {".lora_linear_layer.up.weight", "up"}, {".lora_A.weight", "down"}, {".lora_B.weight", "up"}};
  for (const auto& model : {std::string("unet."), std::string("text_encoder.")}) {
    if (key.rfind(model, 0) != 0) continue;
    for (const auto& [suffix, part] : suffixes)
      if (key.size() > model.size() + suffix.size() && key.ends_with(suffix))
        return std::tuple{model.substr(0, model.size() - 1), key.substr(model.size(), key.size() - model.size() - suffix.size()), part};
  }
  return std::nullopt;
}
}  // namespace lora_detail

// Reads a LoRA file (kohya or diffusers format) against the layers of `pipe`; every adapter key must name one.
template <class B>
std::vector<LoraDelta> read_lora(const fs::path& path, TextToImagePipeline<B>& pipe) {
  const auto source = io::open_tensor_source(path);
  const lora_detail::LayerIndex<B> index(pipe);
  struct Parts {
    std::string down, up, alpha;
  };
  std::map<std::pair<std::string, std::string>, Parts> found;  // (model, module) -> tensor names
  std::size_t unknown = 0;
  std::string first_unknown;
  for (const auto& [key, info] : source->tensors()) {
    (void)info;
    std::optional<std::pair<std::string, std::string>> target;
    std::string part;
    if (const auto dot = key.find('.'); key.rfind("lora_", 0) == 0 && dot != std::string::npos) {
      const auto stem = key.substr(0, dot), rest = key.substr(dot + 1);
      part = rest == "lora_down.weight" ? "down" : rest == "lora_up.weight" ? "up" : rest == "alpha" ? "alpha" : "";
      if (const auto it = index.by_stem.find(stem); it != index.by_stem.end() && !part.empty()) target = it->second;
    } else if (const auto split = lora_detail::split_diffusers_key(key)) {
      const auto& [model, module, p] = *split;
      if (index.layers.count(model + "." + module)) {
        target = std::pair{model, module};
        part = p;
      }
    }
    if (!target) {
      if (unknown++ == 0) first_unknown = key;
      continue;
    }
    auto& parts = found[*target];
    (part == "down" ? parts.down : part == "up" ? parts.up : parts.alpha) = key;
  }
  if (unknown > 0)
    fail("LoRA ", path.string(), ": ", unknown, " tensors name no layer of this model (the first: \"", first_unknown,
         "\"); the file is for another model, or in a format not read here (kohya's lora_unet_ / lora_te_ keys or diffusers' unet. / "
         "text_encoder. keys)");
  if (found.empty()) fail("LoRA ", path.string(), ": no LoRA tensors");
  // diffusers' rule for adapters without alpha: per model, lora_alpha is the rank of the first up tensor in key order
  std::map<std::string, std::pair<std::string, std::int64_t>> first_up;  // model -> (key, rank)
  for (const auto& [target, parts] : found) {
    if (!parts.alpha.empty() || parts.up.empty()) continue;
    const auto& us = source->info(parts.up).shape;
    auto& first = first_up[target.first];
    if (us.rank() >= 2 && (first.first.empty() || parts.up < first.first)) first = {parts.up, us[1]};
  }
  std::vector<LoraDelta> deltas;
  for (const auto& [target, parts] : found) {
    const auto& [model, module] = target;
    if (parts.down.empty() || parts.up.empty())
      fail("LoRA ", path.string(), ": ", model, " layer ", module, " has a ", parts.down.empty() ? "lora_up" : "lora_down", " tensor without its ",
           parts.down.empty() ? "lora_down" : "lora_up");
    const auto& layer = index.layers.at(model + "." + module);
    const auto& ds = source->info(parts.down).shape;
    const auto& us = source->info(parts.up).shape;
    LoraDelta d;
    d.model = model;
    d.module = module;
    d.rank = ds.rank() >= 1 ? ds[0] : 0;
    d.in_features = layer.in_features;
    d.out_features = layer.out_features;
    d.kernel = layer.kernel;
    const auto k = layer.kernel;
    const bool shapes_fit = ((k == 1 && ds.rank() == 2) || (ds.rank() == 4 && ds[2] == k && ds[3] == k)) && ds[1] == d.in_features &&
                            (us.rank() == 2 || (us.rank() == 4 && us[2] == 1 && us[3] == 1)) && us[0] == d.out_features && us[1] == d.rank &&
                            d.rank > 0;
    if (!shapes_fit)
      fail("LoRA ", path.string(), ": ", model, " layer ", module, ": lora_down ", ds.str(), " and lora_up ", us.str(), " do not fit its weight [",
           d.out_features, ", ", d.in_features, k > 1 ? ", " + std::to_string(k) + ", " + std::to_string(k) : std::string(), "]");
    d.down = source->read_f32(parts.down);
    d.up = source->read_f32(parts.up);
    if (!parts.alpha.empty()) {
      const auto alpha = source->read_f32(parts.alpha);
      if (alpha.size() != 1 || !std::isfinite(alpha[0])) fail("LoRA ", path.string(), ": ", parts.alpha, " is not one finite number");
      d.scale = static_cast<double>(alpha[0]) / static_cast<double>(d.rank);
    } else if (parts.down.rfind("lora_", 0) != 0) {  // diffusers' or peft's keys
      d.scale = static_cast<double>(first_up.at(model).second) / static_cast<double>(d.rank);
    }
    for (const auto* values : {&d.down, &d.up})
      for (float v : *values)
        if (!std::isfinite(v)) fail("LoRA ", path.string(), ": ", model, " layer ", module, " holds a non-finite value");
    deltas.push_back(std::move(d));
  }
  return deltas;
}

// Adds weight * scale * up @ down to each adapted layer's weight (computed in double): the model then samples as with
// the adapters attached at that weight. Returns how many layers changed.
template <class B>
std::size_t merge_lora(TextToImagePipeline<B>& pipe, const std::vector<LoraDelta>& deltas, double weight) {
  const lora_detail::LayerIndex<B> index(pipe);
  for (const auto& d : deltas) {
    auto& layer_weight = *index.layers.at(d.model + "." + d.module).weight;
    auto w = layer_weight.value.to_host();
    const double s = weight * d.scale;
    const auto columns = d.columns();  // up[out, r] @ down[r, in k k]: the weight as a matrix [out, in k k]
    for (std::int64_t o = 0; o < d.out_features; ++o)
      for (std::int64_t i = 0; i < columns; ++i) {
        double delta = 0;
        for (std::int64_t r = 0; r < d.rank; ++r)
          delta += static_cast<double>(d.up[static_cast<std::size_t>(o * d.rank + r)]) * d.down[static_cast<std::size_t>(r * columns + i)];
        auto& v = w[static_cast<std::size_t>(o * columns + i)];
        v = static_cast<float>(static_cast<double>(v) + s * delta);
      }
    layer_weight.value.copy_from_host(w);
  }
  return deltas.size();
}

// The deltas of a LoRA network as it stands (for folding trained adapters into the model).
template <class B>
std::vector<LoraDelta> lora_deltas(models::LoraNetwork<B>& lora) {
  std::vector<LoraDelta> deltas;
  for (const auto& m : lora.modules()) {
    const auto& a = m->adapter;
    deltas.push_back({m->text_encoder ? "text_encoder" : "unet", m->module, a.rank, a.in_features, a.out_features, a.conv ? a.geometry.kernel : 1,
                      a.down.value.to_host(), a.up.value.to_host(), a.scale()});
  }
  return deltas;
}

}  // namespace dreambooth::pipeline
