// The training configuration: a YAML file with NeMo's DreamBooth keys, plus key=value overrides from the command line
// (model.prior_loss_weight=1.0). Every key is declared once in a table (path, type, field); unknown keys and values of the
// wrong type are refused with the key's path and, for an unknown key, the nearest valid one.
#pragma once

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"

namespace dreambooth::train {

// The compute precision named by one of Lightning's / NeMo's spellings: "fp32" (32, 32-true, fp32), "tf32", "bf16" (bf16,
// bf16-mixed) or "fp16" (16, 16-mixed, fp16); "" for anything else.
inline std::string canonical_precision(const std::string& value) {
  if (value == "32" || value == "32-true" || value == "fp32") return "fp32";
  if (value == "tf32") return "tf32";
  if (value == "bf16" || value == "bf16-mixed") return "bf16";
  if (value == "16" || value == "16-mixed" || value == "fp16") return "fp16";
  return "";
}

struct TrainingConfig {
  // trainer.*
  long max_steps = 400;
  double gradient_clip_val = 1.0;
  long accumulate_grad_batches = 1;
  std::string precision = "32";  // 32 / fp32 / 32-true, tf32, bf16 / bf16-mixed, 16 / fp16 / 16-mixed (see compute_precision())
  std::string device = "cpu";    // cpu | cuda; the command line's --device sets it too
  long checkpoint_every_n_steps = 100;
  long keep_last_checkpoints = 2;
  std::string output_dir = "dreambooth-output";
  long log_every_n_steps = 1;
  // model.*
  std::string restore_from_path;  // the checkpoint regularization images are sampled from (and the base when base_model_path is unset)
  std::string base_model_path;    // the weights fine-tuned, when they differ from restore_from_path
  std::string tokenizer_path;     // vocab.json + merges.txt, for single-file models
  bool with_prior_preservation = true;
  double prior_loss_weight = 0.5;
  bool train_text_encoder = false;
  bool use_cached_latents = true;
  bool gradient_checkpointing = false;
  long seed = 1234;
  long micro_batch_size = 1;
  double lr = 1e-6;
  double beta1 = 0.9, beta2 = 0.999;
  double weight_decay = 1e-2;
  double eps = 1e-8;
  std::string sched = "constant";
  long warmup_steps = 0;
  bool save_single_file = false;
  // model.data.*
  std::string instance_dir, instance_prompt;
  std::string regularization_dir, regularization_prompt;
  long num_reg_images = 200;
  long num_images_per_prompt = 4;
  long resolution = 512;
  bool center_crop = true;
  long num_workers = 2;
  std::string cached_instance_dir, cached_reg_dir;
  // model.regularization.* (how missing regularization images are sampled)
  long reg_steps = 50;
  double reg_guidance_scale = 7.5;
  std::string reg_scheduler = "pndm";
  std::string reg_negative_prompt;
  // model.validation.*
  std::vector<std::string> validation_prompts;
  long validation_every_n_steps = 0;
  long validation_steps = 25;

  // The whole key table: path -> how to read it.
  using Setter = std::function<void(TrainingConfig&, const YAML::Node&)>;
  struct Key {
    std::string type;
    Setter set;
  };
  static const std::map<std::string, Key>& keys() {
    static const std::map<std::string, Key> table = [] {
      std::map<std::string, Key> t;
      const auto number = [&](const std::string& path, auto member) {
        t[path] = {"number", [member](TrainingConfig& c, const YAML::Node& n) { c.*member = n.as<std::remove_reference_t<decltype(c.*member)>>(); }};
      };
      const auto flag = [&](const std::string& path, bool TrainingConfig::*member) {
        t[path] = {"boolean", [member](TrainingConfig& c, const YAML::Node& n) { c.*member = n.as<bool>(); }};
      };
      const auto text = [&](const std::string& path, std::string TrainingConfig::*member) {
        t[path] = {"string", [member](TrainingConfig& c, const YAML::Node& n) {
                     if (!n.IsNull() && !n.IsScalar()) throw YAML::BadConversion(n.Mark());
                     c.*member = n.IsNull() ? std::string() : n.as<std::string>();
                   }};
      };
      number("trainer.max_steps", &TrainingConfig::max_steps);
      number("trainer.gradient_clip_val", &TrainingConfig::gradient_clip_val);
      number("trainer.accumulate_grad_batches", &TrainingConfig::accumulate_grad_batches);
      t["trainer.precision"] = {"string", [](TrainingConfig& c, const YAML::Node& n) { c.precision = n.as<std::string>(); }};
      text("trainer.device", &TrainingConfig::device);
      number("trainer.checkpoint_every_n_steps", &TrainingConfig::checkpoint_every_n_steps);
      number("trainer.keep_last_checkpoints", &TrainingConfig::keep_last_checkpoints);
      text("trainer.output_dir", &TrainingConfig::output_dir);
      number("trainer.log_every_n_steps", &TrainingConfig::log_every_n_steps);
      text("model.restore_from_path", &TrainingConfig::restore_from_path);
      text("model.base_model_path", &TrainingConfig::base_model_path);
      text("model.tokenizer_path", &TrainingConfig::tokenizer_path);
      flag("model.with_prior_preservation", &TrainingConfig::with_prior_preservation);
      number("model.prior_loss_weight", &TrainingConfig::prior_loss_weight);
      flag("model.train_text_encoder", &TrainingConfig::train_text_encoder);
      flag("model.use_cached_latents", &TrainingConfig::use_cached_latents);
      flag("model.gradient_checkpointing", &TrainingConfig::gradient_checkpointing);
      flag("model.save_single_file", &TrainingConfig::save_single_file);
      number("model.seed", &TrainingConfig::seed);
      number("model.micro_batch_size", &TrainingConfig::micro_batch_size);
      number("model.optim.lr", &TrainingConfig::lr);
      t["model.optim.betas"] = {"list of two numbers", [](TrainingConfig& c, const YAML::Node& n) {
                                  if (!n.IsSequence() || n.size() != 2) throw YAML::BadConversion(n.Mark());
                                  c.beta1 = n[0].as<double>();
                                  c.beta2 = n[1].as<double>();
                                }};
      number("model.optim.weight_decay", &TrainingConfig::weight_decay);
      number("model.optim.eps", &TrainingConfig::eps);
      t["model.optim.name"] = {"string", [](TrainingConfig&, const YAML::Node& n) {
                                 if (n.as<std::string>() != "adamw" && n.as<std::string>() != "fused_adam")
                                   fail("config key model.optim.name: optimizer \"", n.as<std::string>(), "\" is not supported (adamw)");
                               }};
      text("model.optim.sched.name", &TrainingConfig::sched);
      number("model.optim.sched.warmup_steps", &TrainingConfig::warmup_steps);
      text("model.data.instance_dir", &TrainingConfig::instance_dir);
      text("model.data.instance_prompt", &TrainingConfig::instance_prompt);
      text("model.data.regularization_dir", &TrainingConfig::regularization_dir);
      text("model.data.regularization_prompt", &TrainingConfig::regularization_prompt);
      number("model.data.num_reg_images", &TrainingConfig::num_reg_images);
      number("model.data.num_images_per_prompt", &TrainingConfig::num_images_per_prompt);
      number("model.data.resolution", &TrainingConfig::resolution);
      flag("model.data.center_crop", &TrainingConfig::center_crop);
      number("model.data.num_workers", &TrainingConfig::num_workers);
      text("model.data.cached_instance_dir", &TrainingConfig::cached_instance_dir);
      text("model.data.cached_reg_dir", &TrainingConfig::cached_reg_dir);
      number("model.regularization.steps", &TrainingConfig::reg_steps);
      number("model.regularization.guidance_scale", &TrainingConfig::reg_guidance_scale);
      text("model.regularization.scheduler", &TrainingConfig::reg_scheduler);
      text("model.regularization.negative_prompt", &TrainingConfig::reg_negative_prompt);
      t["model.validation.prompts"] = {"list of strings", [](TrainingConfig& c, const YAML::Node& n) {
                                         c.validation_prompts = n.IsNull() ? std::vector<std::string>{} : n.as<std::vector<std::string>>();
                                       }};
      number("model.validation.every_n_steps", &TrainingConfig::validation_every_n_steps);
      number("model.validation.steps", &TrainingConfig::validation_steps);
      return t;
    }();
    return table;
  }

  static std::size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
      std::size_t diagonal = row[0];
      row[0] = i;
      for (std::size_t j = 1; j <= b.size(); ++j) {
        const std::size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
        diagonal = up;
      }
    }
    return row[b.size()];
  }

  static std::string nearest_key(const std::string& path) {
    std::string best;
    std::size_t best_distance = SIZE_MAX;
    for (const auto& [key, _] : keys()) {
      const auto d = edit_distance(path, key);
      if (d < best_distance) best_distance = d, best = key;
    }
    return best;
  }

  // Sets one key from a YAML node; `origin` names where it came from (file or command line).
  void set(const std::string& path, const YAML::Node& value, const std::string& origin) {
    const auto it = keys().find(path);
    if (it == keys().end()) fail(origin, ": unknown config key \"", path, "\" (did you mean \"", nearest_key(path), "\"?)");
    try {
      it->second.set(*this, value);
    } catch (const YAML::Exception&) {
      fail(origin, ": config key \"", path, "\" needs a ", it->second.type, ", not ", YAML::Dump(value));
    }
  }

  // Walks a YAML mapping; keys outside the table are refused (NeMo-only sections can be listed in `ignored`).
  void apply(const YAML::Node& node, const std::string& prefix, const std::string& origin) {
    if (!node.IsMap()) fail(origin, ": ", prefix.empty() ? "the document" : "\"" + prefix + "\"", " must be a mapping of keys");
    for (const auto& item : node) {
      const auto key = item.first.as<std::string>();
      const auto path = prefix.empty() ? key : prefix + "." + key;
      if (keys().count(path)) {
        set(path, item.second, origin);
      } else if (item.second.IsMap() && std::any_of(keys().begin(), keys().end(), [&](const auto& k) { return k.first.rfind(path + ".", 0) == 0; })) {
        apply(item.second, path, origin);
      } else if (path == "name" || path == "trainer.devices" || path == "trainer.num_nodes" || path == "trainer.accelerator") {
        continue;  // NeMo launcher keys with no meaning here
      } else {
        fail(origin, ": unknown config key \"", path, "\" (did you mean \"", nearest_key(path), "\"?)");
      }
    }
  }

  // A YAML file (optional) and key=value overrides, then validation.
  static TrainingConfig load(const std::optional<std::filesystem::path>& file, const std::vector<std::string>& overrides) {
    TrainingConfig c;
    if (file) {
      if (!std::filesystem::exists(*file)) fail("config file ", file->string(), " does not exist");
      YAML::Node root;
      try {
        root = YAML::LoadFile(file->string());
      } catch (const YAML::Exception& e) {
        fail("config file ", file->string(), ": not valid YAML: ", e.what());
      }
      if (!root.IsNull()) c.apply(root, "", "config file " + file->string());
    }
    for (const auto& o : overrides) {
      const auto eq = o.find('=');
      if (eq == std::string::npos || eq == 0) fail("override \"", o, "\" is not key=value (e.g. model.prior_loss_weight=1.0)");
      YAML::Node value;
      try {
        value = YAML::Load(o.substr(eq + 1));
      } catch (const YAML::Exception& e) {
        fail("override \"", o, "\": the value is not valid YAML: ", e.what());
      }
      c.set(o.substr(0, eq), value, "override \"" + o + "\"");
    }
    c.validate();
    return c;
  }

  // trainer.precision as one of "fp32", "tf32", "bf16", "fp16" (the compute precision of the GEMMs and convolutions;
  // weights, gradients and optimizer state stay fp32 in every mode). Lightning's spellings are accepted.
  static std::string compute_precision(const std::string& value) {
    if (auto p = canonical_precision(value); !p.empty()) return p;
    if (value == "bf16-true" || value == "16-true")
      fail("config: trainer.precision \"", value, "\": half-precision weights are not supported; use ",
           value == "bf16-true" ? "bf16-mixed" : "16-mixed", " (fp32 weights, half-precision compute)");
    fail("config: trainer.precision \"", value, "\" is not one of 32 (fp32, 32-true), tf32, bf16 (bf16-mixed), 16 (fp16, 16-mixed)");
  }
  std::string compute_precision() const { return compute_precision(precision); }
  // fp16 compute needs dynamic loss scaling (bf16 has fp32's exponent range and does not).
  bool loss_scaling() const { return compute_precision() == "fp16"; }

  void validate() const {
    const auto bad = [](auto&&... parts) { fail("config: ", parts...); };
    if (max_steps < 1) bad("trainer.max_steps must be at least 1");
    if (accumulate_grad_batches < 1) bad("trainer.accumulate_grad_batches must be at least 1");
    if (micro_batch_size < 1) bad("model.micro_batch_size must be at least 1");
    if (resolution <= 0 || resolution % 8) bad("model.data.resolution ", resolution, " must be a positive multiple of 8");
    if (device != "cpu" && device != "cuda") bad("trainer.device \"", device, "\" is not cpu or cuda");
    if (const auto p = compute_precision(); p != "fp32" && device == "cpu")
      bad("trainer.precision \"", precision, "\": the CPU backend trains in fp32 (trainer.precision=32); ", p,
          " needs the CUDA backend (trainer.device=cuda or --device cuda)");
    if (instance_dir.empty()) bad("model.data.instance_dir is required");
    if (instance_prompt.empty()) bad("model.data.instance_prompt is required");
    if (restore_from_path.empty() && base_model_path.empty()) bad("model.restore_from_path (or model.base_model_path) is required");
    if (with_prior_preservation) {
      if (regularization_dir.empty()) bad("model.data.regularization_dir is required with prior preservation");
      if (regularization_prompt.empty()) bad("model.data.regularization_prompt is required with prior preservation");
      if (num_reg_images < 1 || num_images_per_prompt < 1) bad("model.data.num_reg_images and num_images_per_prompt must be at least 1");
    }
    if (keep_last_checkpoints < 1) bad("trainer.keep_last_checkpoints must be at least 1");
  }
};

}  // namespace dreambooth::train
