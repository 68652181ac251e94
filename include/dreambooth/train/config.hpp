// The training configuration: a YAML file with NeMo's DreamBooth keys (NeMo's stock dreambooth.yaml and the NeMo launcher's
// dreambooth/860m.yaml load unchanged) plus this project's own, and key=value overrides, read through io::YamlConfig
// (Hydra's override order, OmegaConf's ${...} interpolation).
//
// Every key is in exactly one of three tables: keys() (honoured; a setter reads the resolved value, and refuses values it
// cannot honour, naming the key: trainer.devices: 0), no_effect_keys() (NeMo / Lightning / LDM keys that change
// nothing here, each with its reason; the trainer prints the ones a file sets, once) and the subtrees of no_effect_subtrees(). Anything else is
// refused with the nearest valid key.
#pragma once

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/precision.hpp"
#include "dreambooth/data/buckets.hpp"
#include "dreambooth/data/captions.hpp"
#include "dreambooth/io/yaml_config.hpp"
#include "dreambooth/schedulers/schedulers.hpp"
#include "dreambooth/train/concepts.hpp"
#include "dreambooth/train/ema_schedule.hpp"
#include "dreambooth/train/lr_schedule.hpp"

namespace dreambooth::train {

struct TrainingConfig {
  // trainer.*
  long max_steps = 400;
  double gradient_clip_val = 1.0;
  long accumulate_grad_batches = 1;
  std::string precision = "32";         // 32 / fp32 / 32-true, tf32, bf16 / bf16-mixed, 16 / fp16 / 16-mixed (see compute_precision())
  std::string device = "cpu";           // cpu | cuda; the command line's --device and trainer.accelerator set it too
  long checkpoint_every_n_steps = 100;  // 0: no periodic checkpoints
  long keep_last_checkpoints = 2;       // -1: keep all
  std::string output_dir = "dreambooth-output";
  long log_every_n_steps = 1;
  // trainer.resume: auto (NeMo's exp_manager rules: the newest good checkpoint in output_dir), never (a fresh run: the
  // output_dir's checkpoints and metrics of an earlier run are removed first), or the path of one checkpoint folder
  std::string resume = "auto";
  // model.*
  std::string restore_from_path;  // the checkpoint regularization images are sampled from (and the base when base_model_path is unset)
  std::string base_model_path;    // the weights fine-tuned, when they differ from restore_from_path
  std::string tokenizer_path;     // vocab.json + merges.txt, for models that carry no tokenizer
  bool with_prior_preservation = true;
  double prior_loss_weight = 0.5;
  std::optional<double> snr_gamma;  // model.snr_gamma: min-SNR weighting (diffusers' --snr_gamma, kohya's --min_snr_gamma); none: off
  double noise_offset = 0;          // model.noise_offset: kohya's --noise_offset (diffusers' --offset_noise is 0.1)
  bool train_text_encoder = false;
  std::optional<long> stop_text_encoder_training;  // kohya's: the text encoder trains for this many steps only; none: all
  bool use_cached_latents = true;
  bool gradient_checkpointing = false;
  long seed = 1234;
  long micro_batch_size = 1;
  double lr = 1e-6;
  double beta1 = 0.9, beta2 = 0.999;
  double weight_decay = 1e-2;
  double eps = 1e-8;
  std::optional<double> text_encoder_lr;  // model.optim.text_encoder_lr: the text encoder's (or its adapters') own; none: lr
  bool scale_lr = false;                  // model.optim.scale_lr (diffusers'): lr times the samples per optimizer step
  double lr_given = 1e-6;                 // model.optim.lr as given, before scale_lr
  LRSchedule schedule;                    // model.optim.sched.*; its max_steps is trainer.max_steps (NeMo's rule)
  bool save_single_file = false;
  std::vector<std::string> export_formats = {"diffusers"};  // model.export: diffusers, safetensors, ckpt, nemo
  std::string save_precision = "32";                        // model.save_precision: 32, 16, bf16
  // model.data.*
  std::string instance_dir, instance_prompt;
  std::string regularization_dir, regularization_prompt;
  long num_reg_images = 200;
  long num_images_per_prompt = 4;
  long resolution = 512;
  bool center_crop = true;
  bool random_flip = false;    // model.data.random_flip: diffusers' --random_flip, kohya's --flip_aug
  data::BucketConfig buckets;  // model.data.enable_bucket, min_bucket_reso, ... (kohya's aspect-ratio buckets)
  long num_workers = 2;
  std::int64_t max_image_pixels = 64'000'000;  // model.data.max_image_pixels: larger images are refused from their header
  std::string cached_instance_dir, cached_reg_dir;
  // model.data.concepts / concepts_list: several subjects (concepts.hpp); after finish() every run has at least one, the
  // single one of the keys above when no list is given
  std::vector<ConceptConfig> concepts;
  std::string concepts_source;        // the key that gave the list ("": none)
  std::string cache_format = "auto";  // model.data.cache_format: auto, safetensors (ours), nemo (NeMo's .pt files)
  data::CaptionConfig captions;       // model.data.caption_extension, caption_dropout_rate, ... (kohya's)
  // model.regularization.* / NeMo's infer.* (how missing regularization images are sampled)
  long reg_steps = 50;
  double reg_guidance_scale = 7.5;
  std::string reg_scheduler = "pndm";
  std::string reg_negative_prompt;
  double reg_eta = 0.0;
  long reg_width = 0, reg_height = 0;  // 0: model.data.resolution
  std::string reg_sample_prompt;       // infer.prompts: what is sampled (default: the regularization prompt)
  // model.peft.* (LoRA DreamBooth, NeMo's sdlora keys and ours): peft_scheme sdlora or lora; "": the whole model trains
  std::string peft_scheme;
  long lora_rank = 4;                             // lora_tuning.adapter_dim
  std::optional<double> lora_alpha;               // lora_tuning.network_alpha; none: the rank (scale 1)
  std::string lora_init = "kaiming_uniform";      // lora_tuning.column_init_method: kaiming_uniform, gaussian, xavier
  std::optional<long> lora_text_encoder_rank;     // lora_tuning.text_encoder_adapter_dim; none: adapter_dim
  std::optional<double> lora_text_encoder_alpha;  // lora_tuning.text_encoder_network_alpha; none: network_alpha (or the rank)
  std::optional<std::vector<std::string>> lora_unet_targets, lora_text_encoder_targets;  // lora_tuning.{,text_encoder_}target_modules
  std::optional<long> lora_conv_rank;       // lora_tuning.conv_adapter_dim (kohya's conv_dim, LoCon); none: no LoCon layers
  std::optional<double> lora_conv_alpha;    // lora_tuning.conv_network_alpha (kohya's conv_alpha); none: conv_adapter_dim
  double lora_dropout = 0;                  // lora_tuning.adapter_dropout (peft's lora_dropout)
  std::string lora_format = "kohya";        // model.peft.export_format: kohya, diffusers
  bool lora_merged_export = false;          // model.peft.merged_export: also model.export's formats, adapters folded in
  bool text_encoder_lora_finetune = false;  // NeMo's model.cond_stage_config.enable_lora_finetune
  // model.ema.* (diffusers' EMAModel) and NeMo's exp_manager.ema.*: an EMA of the trained weights (train/ema.hpp)
  bool ema_enabled = false;
  bool ema_nemo = false;                       // exp_manager.ema.enable: NeMo's defaults (decay 0.999, no warm-up)
  std::optional<double> ema_decay;             // model.ema.decay / exp_manager.ema.decay; none: the defaults above
  std::optional<std::string> ema_warmup;       // model.ema.warmup (use_ema_warmup: power); none: diffusers (NeMo's: none)
  EmaConfig ema;                               // resolved in finish()
  bool ema_validate_original_weights = false;  // NeMo's validate_original_weights: validation samples the trained weights
  bool ema_export_original_weights = false;    // the exports hold the trained weights, not the average
  // model.validation.*
  std::vector<std::string> validation_prompts;
  long validation_steps = 25;
  long validation_every_n_steps = 0;
  std::string validation_negative_prompt;
  double validation_guidance_scale = 7.5;
  std::string validation_scheduler;  // "": model.regularization.scheduler
  long validation_images_per_prompt = 1;

  // NeMo's trainer / exp_manager / model keys
  long devices = 1, num_nodes = 1;  // data-parallel: devices x num_nodes processes (mpirun), each training on its share of every step
  long processes() const { return devices * num_nodes; }
  // data-parallel gradient sum: overlapped with the backward pass, in buckets of this many MiB (PyTorch DDP's bucket_cap_mb)
  bool overlap_gradient_sum = true;
  double gradient_bucket_mb = 25;
  bool gradient_sum_bf16 = false;  // trainer.gradient_sum_precision bf16: the gradients sent as bfloat16
  std::string accelerator;         // what trainer.accelerator said ("" when unset)
  std::string name;                // the experiment name (NeMo's top-level name)
  bool output_dir_given = false, has_exp_manager = false;
  std::string exp_dir, explicit_log_dir;
  bool resume_if_exists = true, resume_ignore_no_checkpoint = true;
  std::string resume_from_checkpoint;
  bool create_checkpoint_callback = true;
  bool always_save_nemo = false;
  std::optional<bool> save_nemo_on_train_end;
  std::optional<long> global_batch_size;
  std::optional<double> scale_factor;
  // components (NeMo's unet_config / first_stage_config / cond_stage_config): weights, and the architecture used for weight
  // files that carry none
  std::string unet_from_pretrained, vae_from_pretrained;
  bool unet_from_nemo = false;
  std::string text_target, text_restore_from_path, text_version;
  YAML::Node unet_config, first_stage_config, noise_scheduler;  // resolved, when the file has them
  // model.text_encoder_config (ours, as our .nemo exports write it): a transformers CLIPTextConfig, the architecture of
  // a single base file's text encoder
  YAML::Node text_encoder_config;

  // Where each key that was set came from (a config file, or the command line's override), for validate()'s errors.
  std::map<std::string, std::pair<std::size_t, std::string>> key_origins;  // key -> (order set, origin)
  std::size_t keys_set = 0;

  // The keys a file set that have no effect here, with the reason, for one note.
  std::vector<std::pair<std::string, std::string>> ignored_keys;
  std::string explicit_log_dir_error;  // why exp_manager.explicit_log_dir did not resolve (an error only if it is needed)

  // ---- the key tables ----
  using Setter = std::function<void(TrainingConfig&, const YAML::Node&)>;
  struct Key {
    std::string type;
    Setter set;
  };

  static const std::map<std::string, Key>& keys();
  static const std::map<std::string, std::string>& no_effect_keys();
  static const std::map<std::string, std::string>& no_effect_subtrees();

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

  static std::optional<std::string> no_effect(const std::string& path) {
    if (const auto it = no_effect_keys().find(path); it != no_effect_keys().end()) return it->second;
    for (const auto& [prefix, reason] : no_effect_subtrees())
      if (path == prefix || path.rfind(prefix + ".", 0) == 0) return reason;
    return std::nullopt;
  }

  // Sets one key from its resolved value; `origin` names where it came from.
  // `mark`: where the value is in its file (for messages).
  void set(const std::string& path, const YAML::Node& value, const std::string& origin, const YAML::Mark& mark = YAML::Mark::null_mark()) {
    const auto it = keys().find(path);
    if (it == keys().end()) fail(origin, ": unknown config key \"", path, "\" (did you mean \"", nearest_key(path), "\"?)");
    key_origins[path] = {++keys_set, origin};
    try {
      it->second.set(*this, value);
    } catch (const YAML::Exception&) {
      auto shown = YAML::Dump(value);
      if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
      const auto at = mark.is_null() || origin.rfind("command line", 0) == 0
                          ? std::string()
                          : " (line " + std::to_string(mark.line + 1) + ", column " + std::to_string(mark.column + 1) + ")";
      fail(origin, at, ": config key \"", path, "\" needs ", it->second.type, ", not ", shown);
    } catch (const Error& e) {
      const std::string message = e.what();
      if (message.rfind("config key", 0) == 0) fail(origin, ": ", message);
      throw;
    }
  }

  // A YAML file (optional) and key=value overrides, then validation.
  static TrainingConfig load(const std::optional<std::filesystem::path>& file, const std::vector<std::string>& overrides) {
    return from_tree(io::YamlConfig::load(file, overrides));
  }
  // A configuration given as YAML text (tests, fuzzing).
  static TrainingConfig from_text(const std::string& yaml, const std::string& origin) { return from_tree(io::YamlConfig::from_text(yaml, origin)); }

  static TrainingConfig from_tree(const io::YamlConfig& tree) {
    TrainingConfig c;
    c.has_exp_manager = tree.has("exp_manager");
    for (const auto& path : tree.leaves()) try {
        if (path.empty()) continue;                    // an empty document
        if (path == "exp_manager.explicit_log_dir") {  // the NeMo launcher's points at its root config: resolved only if used
          try {
            c.set(path, tree.get(path), tree.origin(path), tree.raw(path).Mark());
          } catch (const Error& e) {
            c.explicit_log_dir_error = e.what();
          }
        } else if (keys().count(path)) {
          c.set(path, tree.get(path), tree.origin(path), tree.raw(path).Mark());
        } else if (path.rfind("model.text_encoder_config.", 0) == 0) {
          // read as a whole section below, its keys checked by CLIPTextConfig when the pipeline loads
        } else if (const auto reason = no_effect(path)) {
          c.ignored_keys.emplace_back(path, *reason);
        } else {
          fail(tree.origin(path), ": unknown config key \"", path, "\" (did you mean \"", nearest_key(path), "\"?)");
        }
      } catch (const YAML::Exception& e) {
        fail(tree.origin(path), ": config key \"", path, "\": ", e.msg);
      }
    // whole sections the trainer reads as NeMo does
    if (tree.has("model.unet_config")) c.unet_config = tree.get("model.unet_config");
    if (tree.has("model.first_stage_config")) c.first_stage_config = tree.get("model.first_stage_config");
    if (tree.has("model.noise_scheduler")) c.noise_scheduler = tree.get("model.noise_scheduler");
    if (tree.has("model.text_encoder_config")) {
      c.text_encoder_config = tree.get("model.text_encoder_config");
      if (!c.text_encoder_config.IsMap())
        fail(tree.origin("model.text_encoder_config"), ": config key \"model.text_encoder_config\" needs a map (a transformers CLIPTextConfig)");
    }
    c.finish();
    c.validate();
    return c;
  }

  // Values that follow from several keys (after all are read).
  void finish() {
    if (!output_dir_given && has_exp_manager) {  // NeMo's log directory: explicit_log_dir, else exp_dir/name
      if (!explicit_log_dir_error.empty())
        fail(explicit_log_dir_error,
             " (exp_manager.explicit_log_dir names the output directory; give trainer.output_dir, or the launcher's base_results_dir)");
      output_dir = !explicit_log_dir.empty()
                       ? explicit_log_dir
                       : (std::filesystem::path(exp_dir.empty() ? "nemo_experiments" : exp_dir) / (name.empty() ? "default" : name)).string();
    }
    if (global_batch_size) {  // NeMo's accumulation: global = micro x data-parallel size x micro-batches per step
      if (*global_batch_size < 1) bad_key({"model.global_batch_size"}, "= ", *global_batch_size, " must be at least 1");
      if (micro_batch_size < 1) bad_key({"model.micro_batch_size"}, "= ", micro_batch_size, " must be at least 1");
      const long per_step = micro_batch_size * devices * num_nodes;
      if (*global_batch_size % per_step)
        fail("config: model.global_batch_size ", *global_batch_size, " is not a multiple of model.micro_batch_size x devices (", per_step, ")");
      const long accumulation = *global_batch_size / per_step;
      if (accumulate_grad_batches != 1 && accumulate_grad_batches != accumulation)
        fail("config: model.global_batch_size ", *global_batch_size, " asks for ", accumulation,
             " micro-batches per step but trainer.accumulate_grad_batches is ", accumulate_grad_batches);
      accumulate_grad_batches = accumulation;
    }
    finish_concepts();
    schedule.total_steps = max_steps;
    lr_given = lr;
    // diffusers' --scale_lr: learning_rate x gradient_accumulation_steps x train_batch_size x num_processes (the text
    // encoder's own rate, model.optim.text_encoder_lr, as given: diffusers scales only learning_rate)
    if (scale_lr) lr *= static_cast<double>(accumulate_grad_batches * micro_batch_size * devices * num_nodes);
    ema.decay = ema_decay.value_or(ema_nemo ? 0.999 : 0.9999);
    ema.warmup = ema_warmup.value_or(ema_nemo ? "none" : "diffusers");
    // accelerator auto: the GPU when one is there (the command decides); half-precision compute means the GPU
    if (accelerator == "auto" && canonical_precision(precision) != "fp32" && !canonical_precision(precision).empty()) device = "cuda";
    if (save_single_file && std::find(export_formats.begin(), export_formats.end(), "safetensors") == export_formats.end())
      export_formats.push_back("safetensors");
  }

  // The single concept of model.data's keys, or the list's concepts with their defaults; a list beside model.data's own
  // instance / regularization keys is refused (as diffusers refuses --instance_data_dir beside --concepts_list).
  void finish_concepts() {
    if (concepts.empty()) {
      concepts.push_back({instance_dir, instance_prompt, regularization_dir, regularization_prompt, num_reg_images, cached_instance_dir,
                          cached_reg_dir, "", "model.data"});
      return;
    }
    const std::pair<const char*, const std::string*> single[] = {{"instance_dir", &instance_dir},
                                                                 {"instance_prompt", &instance_prompt},
                                                                 {"regularization_dir", &regularization_dir},
                                                                 {"regularization_prompt", &regularization_prompt},
                                                                 {"cached_instance_dir", &cached_instance_dir},
                                                                 {"cached_reg_dir", &cached_reg_dir}};
    for (const auto& [name, value] : single)
      if (!value->empty())
        fail("config: model.data.", name, " is set beside ", concepts_source, ": with a list of concepts each concept gives its own ", name,
             " (remove model.data.", name, " or set it to null)");
    for (auto& k : concepts) {
      if (k.num_reg_images == 0) k.num_reg_images = num_reg_images;
      if (!k.validation_prompt.empty()) validation_prompts.push_back(k.validation_prompt);
    }
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

  // LoRA DreamBooth (model.peft.peft_scheme set): only adapters train; the text encoder's with train_text_encoder or
  // NeMo's cond_stage_config.enable_lora_finetune.
  bool lora() const { return !peft_scheme.empty(); }
  bool text_encoder_lora() const { return lora() && (train_text_encoder || text_encoder_lora_finetune); }
  // The adapted modules: model.peft.lora_tuning.target_modules, else the scheme's (NeMo's sdlora: every Linear of the
  // transformer blocks' attention and feed-forward layers, and of the text encoder's attention and MLP; lora:
  // diffusers' train_dreambooth_lora.py, the attention projections).
  std::vector<std::string> lora_unet_target_modules() const {
    if (lora_unet_targets) return *lora_unet_targets;
    if (peft_scheme == "sdlora") return {"to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"};
    return {"to_q", "to_k", "to_v", "to_out.0"};
  }
  std::vector<std::string> lora_text_encoder_target_modules() const {
    if (lora_text_encoder_targets) return *lora_text_encoder_targets;
    if (peft_scheme == "sdlora") return {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};
    return {"q_proj", "k_proj", "v_proj", "out_proj"};
  }
  // What a checkpoint's EMA must match to be resumed ("" without EMA).
  std::string ema_description() const { return ema_enabled ? ema.description() : ""; }
  // What a LoRA checkpoint must match to be resumed ("" without LoRA).
  std::string lora_description() const {
    if (!lora()) return "";
    const auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
      return s;
    };
    std::ostringstream d;
    d << "rank " << lora_rank << ", alpha " << lora_alpha.value_or(static_cast<double>(lora_rank)) << ", init " << lora_init << ", UNet "
      << join(lora_unet_target_modules());
    if (text_encoder_lora()) {
      const auto te_rank = lora_text_encoder_rank.value_or(lora_rank);
      const double te_alpha = lora_text_encoder_alpha  ? *lora_text_encoder_alpha
                              : lora_text_encoder_rank ? static_cast<double>(*lora_text_encoder_rank)
                                                       : lora_alpha.value_or(static_cast<double>(lora_rank));
      d << ", text encoder " << join(lora_text_encoder_target_modules());
      if (te_rank != lora_rank || lora_text_encoder_alpha) d << " (rank " << te_rank << ", alpha " << te_alpha << ")";
    }
    if (lora_conv_rank) d << ", LoCon rank " << *lora_conv_rank << ", alpha " << lora_conv_alpha.value_or(static_cast<double>(*lora_conv_rank));
    if (lora_dropout > 0) d << ", dropout " << lora_dropout;
    return d.str();
  }
  // NeMo writes <name>.nemo at the end of training when its checkpoint callback is on (save_nemo_on_train_end's default).
  bool writes_nemo_on_train_end() const { return save_nemo_on_train_end.value_or(has_exp_manager && create_checkpoint_callback); }

  // The key as it was given (of `spellings`, the one set last) and where it was set.
  std::pair<std::string, std::string> key_source(std::initializer_list<const char*> spellings) const {
    std::pair<std::string, std::string> found{*spellings.begin(), "config"};
    std::size_t latest = 0;
    for (const char* k : spellings)  // the spelling set last is the one whose value holds
      if (const auto it = key_origins.find(k); it != key_origins.end() && it->second.first >= latest) {
        latest = it->second.first;
        found = {k, it->second.second};
      }
    return found;
  }
  // An error about a key's value: names the key and the file (or the command line) that set it.
  template <class... Parts>
  [[noreturn]] void bad_key(std::initializer_list<const char*> spellings, Parts&&... parts) const {
    const auto [key, origin] = key_source(spellings);
    fail(origin, ": config key \"", key, "\" ", std::forward<Parts>(parts)...);
  }

  // Every numeric key's range, and the regularization sampling settings, checked before any work starts.
  void validate_ranges() const {
    const auto at_least = [&](std::initializer_list<const char*> keys, auto value, long min) {
      if (value < min) bad_key(keys, "= ", value, " must be at least ", min);
    };
    const auto non_negative = [&](std::initializer_list<const char*> keys, double value) {
      if (!(value >= 0) || !std::isfinite(value)) bad_key(keys, "= ", value, " must be a non-negative number");
    };
    at_least({"trainer.max_steps"}, max_steps, 1);
    non_negative({"trainer.gradient_clip_val"}, gradient_clip_val);
    if (!(gradient_bucket_mb > 0) || !std::isfinite(gradient_bucket_mb))
      bad_key({"trainer.gradient_bucket_mb"}, "= ", gradient_bucket_mb, " must be a positive number of MiB");
    at_least({"trainer.accumulate_grad_batches", "model.global_batch_size"}, accumulate_grad_batches, 1);
    at_least({"trainer.log_every_n_steps"}, log_every_n_steps, 1);
    at_least({"trainer.checkpoint_every_n_steps", "exp_manager.checkpoint_callback_params.every_n_train_steps"}, checkpoint_every_n_steps, 0);
    at_least({"model.micro_batch_size"}, micro_batch_size, 1);
    at_least({"model.peft.lora_tuning.adapter_dim"}, lora_rank, 1);
    non_negative({"model.prior_loss_weight"}, prior_loss_weight);
    non_negative({"model.noise_offset"}, noise_offset);
    non_negative({"model.optim.lr"}, lr);
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
      bad_key({"model.optim.betas"}, "= [", beta1, ", ", beta2, "]: each must be in [0, 1)");
    non_negative({"model.optim.weight_decay"}, weight_decay);
    if (!(eps > 0) || !std::isfinite(eps)) bad_key({"model.optim.eps"}, "= ", eps, " must be positive");
    if (schedule.warmup_ratio && !(*schedule.warmup_ratio >= 0 && *schedule.warmup_ratio <= 1))
      bad_key({"model.optim.sched.warmup_ratio"}, "= ", *schedule.warmup_ratio, " must be between 0 and 1");
    if (schedule.hold_ratio && !(*schedule.hold_ratio >= 0 && *schedule.hold_ratio <= 1))
      bad_key({"model.optim.sched.hold_ratio"}, "= ", *schedule.hold_ratio, " must be between 0 and 1");
    if (schedule.constant_ratio && !(*schedule.constant_ratio >= 0 && *schedule.constant_ratio <= 1))
      bad_key({"model.optim.sched.constant_ratio"}, "= ", *schedule.constant_ratio, " must be between 0 and 1");
    at_least({"model.optim.sched.warmup_steps"}, schedule.warmup_steps, 0);
    if (!std::isfinite(schedule.decay_rate)) bad_key({"model.optim.sched.decay_rate"}, "= ", schedule.decay_rate, " must be a finite number");
    if (!std::isfinite(schedule.power)) bad_key({"model.optim.sched.power"}, "= ", schedule.power, " must be a finite number");
    if (schedule.hold_steps) non_negative({"model.optim.sched.hold_steps"}, *schedule.hold_steps);
    if (schedule.constant_steps) non_negative({"model.optim.sched.constant_steps"}, *schedule.constant_steps);
    if (schedule.min_lr) non_negative({"model.optim.sched.min_lr"}, *schedule.min_lr);
    if (schedule.d_model && !(*schedule.d_model > 0)) bad_key({"model.optim.sched.d_model"}, "= ", *schedule.d_model, " must be positive");
    at_least({"model.data.num_reg_images"}, num_reg_images, 1);
    at_least({"model.data.num_images_per_prompt", "infer.num_images_per_prompt"}, num_images_per_prompt, 1);
    if (resolution < 8 || resolution > 16384 || resolution % 8)
      bad_key({"model.data.resolution"}, resolution, " must be a positive multiple of 8 (at most 16384)");
    if (scale_factor && !(*scale_factor > 0)) bad_key({"model.scale_factor"}, "= ", *scale_factor, " must be positive");
    // regularization sampling: refused here rather than after sampling has started
    if (reg_steps < 1 || reg_steps > 1000)
      bad_key({"model.regularization.steps", "infer.inference_steps"}, "= ", reg_steps, " must be between 1 and 1000 sampling steps");
    non_negative({"model.regularization.guidance_scale", "infer.unconditional_guidance_scale"}, reg_guidance_scale);
    if (!schedulers::is_scheduler_name(reg_scheduler))
      bad_key({"model.regularization.scheduler", "infer.sampler_type"}, "\"", reg_scheduler, "\" is not a scheduler (", schedulers::kSchedulerNames,
              ")");
    if (!(reg_eta >= 0 && reg_eta <= 1)) bad_key({"infer.eta"}, "= ", reg_eta, " must be between 0 and 1");
    if (reg_width < 0 || reg_width > 16384 || reg_width % 8)
      bad_key({"infer.width"}, "= ", reg_width, " must be a multiple of 8 (0: model.data.resolution)");
    if (reg_height < 0 || reg_height > 16384 || reg_height % 8)
      bad_key({"infer.height"}, "= ", reg_height, " must be a multiple of 8 (0: model.data.resolution)");
    at_least({"model.validation.steps"}, validation_steps, 1);
    if (!(ema.decay >= 0 && ema.decay <= 1)) bad_key({"model.ema.decay", "exp_manager.ema.decay"}, "= ", ema.decay, " must be between 0 and 1");
    if (!(ema.min_decay >= 0 && ema.min_decay <= 1)) bad_key({"model.ema.min_decay"}, "= ", ema.min_decay, " must be between 0 and 1");
    at_least({"model.ema.update_after_step"}, ema.update_after_step, 0);
    at_least({"model.ema.every_n_steps", "exp_manager.ema.every_n_steps"}, ema.every_n_steps, 1);
    if (!(ema.inv_gamma > 0)) bad_key({"model.ema.inv_gamma"}, "= ", ema.inv_gamma, " must be positive");
    if (!(ema.power > 0)) bad_key({"model.ema.power"}, "= ", ema.power, " must be positive");
    at_least({"model.validation.every_n_steps"}, validation_every_n_steps, 0);
    at_least({"model.validation.num_images_per_prompt"}, validation_images_per_prompt, 1);
    if (!(captions.dropout_rate >= 0 && captions.dropout_rate < 1))
      bad_key({"model.data.caption_dropout_rate"}, "= ", captions.dropout_rate, " must be in [0, 1)");
    if (!(captions.tag_dropout_rate >= 0 && captions.tag_dropout_rate < 1))
      bad_key({"model.data.caption_tag_dropout_rate"}, "= ", captions.tag_dropout_rate, " must be in [0, 1)");
    at_least({"model.data.keep_tokens"}, captions.keep_tokens, 0);
    if (captions.separator.empty()) bad_key({"model.data.caption_separator"}, "must not be empty");
    if (buckets.steps < 8 || buckets.steps % 8) bad_key({"model.data.bucket_reso_steps"}, "= ", buckets.steps, " must be a positive multiple of 8");
    if (buckets.min_size < 8 || buckets.min_size % 8)
      bad_key({"model.data.min_bucket_reso"}, "= ", buckets.min_size, " must be a positive multiple of 8");
    if (buckets.max_size < buckets.min_size || buckets.max_size % 8)
      bad_key({"model.data.max_bucket_reso"}, "= ", buckets.max_size, " must be a multiple of 8, at least model.data.min_bucket_reso ",
              buckets.min_size);
    if (buckets.enabled && !buckets.no_upscale && buckets.max_size < resolution)
      bad_key({"model.data.max_bucket_reso"}, "= ", buckets.max_size, " must be at least model.data.resolution ", resolution,
              " (kohya's rule; with bucket_no_upscale it is unused)");
    if (!captions.extension.empty() && captions.extension[0] != '.')
      bad_key({"model.data.caption_extension"}, "\"", captions.extension, "\" must start with a dot (.txt, .caption)");
    non_negative({"model.validation.guidance_scale"}, validation_guidance_scale);
    if (!validation_scheduler.empty() && !schedulers::is_scheduler_name(validation_scheduler))
      bad_key({"model.validation.scheduler"}, "\"", validation_scheduler, "\" is not a scheduler (", schedulers::kSchedulerNames, ")");
    if (stop_text_encoder_training) {
      at_least({"model.stop_text_encoder_training"}, *stop_text_encoder_training, 0);
      if (!train_text_encoder)
        bad_key({"model.stop_text_encoder_training"}, "stops the text encoder's training, but model.train_text_encoder is false");
      if (lora())
        bad_key({"model.stop_text_encoder_training"}, "is kohya's train_db.py option for full fine-tuning; with LoRA (model.peft) give the ",
                "text encoder's adapters model.optim.text_encoder_lr instead, or train them throughout");
    }
  }

  void validate() const {
    validate_ranges();
    const auto bad = [](auto&&... parts) { fail("config: ", parts...); };
    if (max_steps < 1) bad("trainer.max_steps must be at least 1");
    if (accumulate_grad_batches < 1) bad("trainer.accumulate_grad_batches must be at least 1");
    if (micro_batch_size < 1) bad("model.micro_batch_size must be at least 1");
    if (resolution <= 0 || resolution % 8) bad("model.data.resolution ", resolution, " must be a positive multiple of 8");
    if (device != "cpu" && device != "cuda") bad("trainer.device \"", device, "\" is not cpu or cuda");
    if (const auto p = compute_precision(); p != "fp32" && p != "bf16" && device == "cpu")
      bad("trainer.precision \"", precision, "\": the CPU backend trains in fp32 or bf16 (trainer.precision=32 or bf16); ", p,
          " needs the CUDA backend (trainer.accelerator=gpu, trainer.device=cuda or --device cuda)");
    for (const auto& k : concepts) {
      if (k.instance_dir.empty()) bad(k.key("instance_dir"), " is required");
      if (k.instance_prompt.empty()) bad(k.key("instance_prompt"), " is required");
    }
    if (restore_from_path.empty() && base_model_path.empty() && (unet_from_pretrained.empty() || vae_from_pretrained.empty()))
      bad("model.restore_from_path (or model.base_model_path, or the components' from_pretrained) is required");
    if (with_prior_preservation) {
      std::map<std::string, const ConceptConfig*> by_folder;  // concepts sharing a class folder must agree on what it holds
      for (const auto& k : concepts) {
        if (k.regularization_dir.empty()) bad(k.key("regularization_dir"), " is required with prior preservation");
        if (k.regularization_prompt.empty()) bad(k.key("regularization_prompt"), " is required with prior preservation");
        if (k.num_reg_images < 1 || num_images_per_prompt < 1) bad(k.key("num_reg_images"), " and num_images_per_prompt must be at least 1");
        const auto folder = std::filesystem::path(k.regularization_dir).lexically_normal().string();
        const auto [it, fresh] = by_folder.emplace(folder, &k);
        if (!fresh && (it->second->regularization_prompt != k.regularization_prompt || it->second->num_reg_images != k.num_reg_images))
          bad(it->second->where, " and ", k.where, " share the class folder ", k.regularization_dir,
              " with different regularization prompts or image counts (give each its own folder)");
      }
      if (concepts.size() > 1 && !reg_sample_prompt.empty())
        bad("infer.prompts names one prompt for the class images, but there are ", concepts.size(),
            " concepts: each concept's class images are sampled from its regularization_prompt");
    }
    if (keep_last_checkpoints < 1 && keep_last_checkpoints != -1) bad("trainer.keep_last_checkpoints must be at least 1 (or -1: keep all)");
    if (num_workers < 0 || num_workers > 256)
      bad("model.data.num_workers ", num_workers, " is not between 0 and 256 (0: load on the training thread)");
    if (resume.empty()) bad("trainer.resume is empty: auto, never, or the path of a checkpoint folder");
    if (max_image_pixels < 1) bad("model.data.max_image_pixels ", max_image_pixels, " must be at least 1");
    if (checkpoint_every_n_steps < 0) bad("trainer.checkpoint_every_n_steps must not be negative (0: no periodic checkpoints)");
    if (cache_format != "auto" && cache_format != "safetensors" && cache_format != "nemo")
      bad("model.data.cache_format \"", cache_format, "\" is not auto, safetensors or nemo");
    if (save_precision != "32" && save_precision != "16" && save_precision != "bf16" && save_precision != "fp32" && save_precision != "fp16")
      bad("model.save_precision \"", save_precision, "\" is not 32, 16 or bf16");
    for (const auto& f : export_formats)
      if (f != "diffusers" && f != "safetensors" && f != "ckpt" && f != "nemo")
        bad("model.export: \"", f, "\" is not diffusers, safetensors, ckpt or nemo");
    schedule.validate();
  }
};

// ---- the tables ----

inline const std::map<std::string, TrainingConfig::Key>& TrainingConfig::keys() {
  static const std::map<std::string, Key> table = [] {
    using C = TrainingConfig;
    std::map<std::string, Key> t;
    // a YAML scalar as a T: a whole number within the type's range for integers (2.5, 1e300 and .nan are not), a finite one
    // otherwise
    const auto scalar = []<class T>(const YAML::Node& n, T*) {
      if (!n.IsScalar()) throw YAML::BadConversion(n.Mark());
      const auto d = n.as<double>();
      if (!std::isfinite(d) || (std::is_integral_v<T> && (d != std::floor(d) || d < -9.0e15 || d > 9.0e15))) throw YAML::BadConversion(n.Mark());
      return static_cast<T>(d);
    };
    const auto number = [&](const std::string& path, auto member) {
      using T = std::remove_reference_t<decltype(std::declval<C&>().*member)>;
      t[path] = {std::is_integral_v<T> ? "an integer" : "a number",
                 [member, scalar](C& c, const YAML::Node& n) { c.*member = scalar(n, static_cast<T*>(nullptr)); }};
    };
    // a number inside one of the settings structs (EmaConfig, data::CaptionConfig)
    const auto nested_number = [&]<class G, class T>(const std::string& path, G C::*group, T G::*member) {
      t[path] = {std::is_integral_v<T> ? "an integer" : "a number",
                 [group, member, scalar](C& c, const YAML::Node& n) { (c.*group).*member = scalar(n, static_cast<T*>(nullptr)); }};
    };
    const auto flag = [&](const std::string& path, bool C::*member) {
      t[path] = {"a boolean", [member](C& c, const YAML::Node& n) { c.*member = n.as<bool>(); }};
    };
    const auto text = [&](const std::string& path, std::string C::*member) {
      t[path] = {"a string", [member](C& c, const YAML::Node& n) {
                   if (!n.IsNull() && !n.IsScalar()) throw YAML::BadConversion(n.Mark());
                   c.*member = n.IsNull() ? std::string() : n.as<std::string>();
                 }};
    };
    const auto custom = [&](const std::string& path, const std::string& type, Setter s) { t[path] = {type, std::move(s)}; };
    const auto architecture = [&](const std::string& path) {  // read as a whole section (C::unet_config, ...)
      t[path] = {"a value", [](C&, const YAML::Node&) {}};
    };

    // trainer.*
    number("trainer.max_steps", &C::max_steps);
    number("trainer.gradient_clip_val", &C::gradient_clip_val);
    number("trainer.accumulate_grad_batches", &C::accumulate_grad_batches);
    custom("trainer.precision", "a precision", [](C& c, const YAML::Node& n) { c.precision = n.as<std::string>(); });
    text("trainer.device", &C::device);
    custom("trainer.accelerator", "gpu, cuda, cpu or auto", [](C& c, const YAML::Node& n) {
      c.accelerator = n.IsNull() ? "" : n.as<std::string>();
      if (c.accelerator == "gpu" || c.accelerator == "cuda")
        c.device = "cuda";
      else if (c.accelerator == "cpu")
        c.device = "cpu";
      else if (c.accelerator != "auto" && !c.accelerator.empty())
        fail("config key \"trainer.accelerator\": \"", c.accelerator, "\" is not gpu, cuda, cpu or auto");
    });
    const auto parallel = [&](const std::string& path, long C::*member) {
      custom(path, "an integer", [member, path](C& c, const YAML::Node& n) {
        const auto v = n.IsNull() ? 1 : n.as<long>();
        if (v < 1)
          fail("config key \"", path, "\": ", v, " is not a number of processes (trainer.devices x trainer.num_nodes processes train together, ",
               "started by mpirun)");
        c.*member = v;
      });
    };
    parallel("trainer.devices", &C::devices);
    parallel("trainer.num_nodes", &C::num_nodes);
    flag("trainer.overlap_gradient_sum", &C::overlap_gradient_sum);
    number("trainer.gradient_bucket_mb", &C::gradient_bucket_mb);
    custom("trainer.gradient_sum_precision", "32 or bf16", [](C& c, const YAML::Node& n) {
      const auto v = n.IsNull() ? std::string("32") : n.as<std::string>();
      if (v == "bf16" || v == "bfloat16")
        c.gradient_sum_bf16 = true;
      else if (v == "32" || v == "fp32" || v == "float32")
        c.gradient_sum_bf16 = false;
      else
        fail("config key \"trainer.gradient_sum_precision\": \"", v, "\" is not 32 or bf16 (the gradients' type on the wire between processes)");
    });
    custom("trainer.max_epochs", "an integer", [](C&, const YAML::Node& n) {
      if (!n.IsNull() && n.as<long>() != -1)
        fail("config key \"trainer.max_epochs\": ", n.as<long>(), ": training runs by steps here; use trainer.max_steps (max_epochs -1)");
    });
    number("trainer.checkpoint_every_n_steps", &C::checkpoint_every_n_steps);
    number("trainer.keep_last_checkpoints", &C::keep_last_checkpoints);
    custom("trainer.output_dir", "a string", [](C& c, const YAML::Node& n) {
      c.output_dir = n.as<std::string>();
      c.output_dir_given = true;
    });
    number("trainer.log_every_n_steps", &C::log_every_n_steps);
    text("trainer.resume", &C::resume);

    // name and exp_manager.*
    text("name", &C::name);
    text("exp_manager.name", &C::name);
    text("exp_manager.exp_dir", &C::exp_dir);
    text("exp_manager.explicit_log_dir", &C::explicit_log_dir);
    flag("exp_manager.resume_if_exists", &C::resume_if_exists);
    flag("exp_manager.resume_ignore_no_checkpoint", &C::resume_ignore_no_checkpoint);
    text("exp_manager.resume_from_checkpoint", &C::resume_from_checkpoint);
    custom("model.resume_from_checkpoint", "a path", [](C& c, const YAML::Node& n) {
      // NeMo reads it through exp_manager.resume_from_checkpoint's ${model.resume_from_checkpoint}; alone it is honoured too
      if (!n.IsNull() && c.resume_from_checkpoint.empty()) c.resume_from_checkpoint = n.as<std::string>();
    });
    flag("exp_manager.create_checkpoint_callback", &C::create_checkpoint_callback);
    custom("exp_manager.checkpoint_callback_params.every_n_train_steps", "an integer",
           [](C& c, const YAML::Node& n) { c.checkpoint_every_n_steps = n.IsNull() ? 0 : n.as<long>(); });
    custom("exp_manager.checkpoint_callback_params.save_top_k", "an integer", [](C& c, const YAML::Node& n) {
      const auto k = n.as<long>();  // -1 keep all; 0 keep none; k: the newest k (NeMo ranks by its monitor)
      c.keep_last_checkpoints = k < 0 ? -1 : std::max(1L, k);
    });
    custom("exp_manager.checkpoint_callback_params.every_n_epochs", "an integer", [](C&, const YAML::Node& n) {
      if (!n.IsNull() && n.as<long>() > 0)
        fail("config key \"exp_manager.checkpoint_callback_params.every_n_epochs\": checkpoints are by steps here (every_n_train_steps)");
    });
    flag("exp_manager.checkpoint_callback_params.always_save_nemo", &C::always_save_nemo);
    custom("exp_manager.checkpoint_callback_params.save_nemo_on_train_end", "a boolean",
           [](C& c, const YAML::Node& n) { c.save_nemo_on_train_end = n.as<bool>(); });
    // EMA: NeMo's exp_manager.ema.* (its EMA callback) and model.ema.* (diffusers' EMAModel)
    custom("exp_manager.ema.enable", "a boolean", [](C& c, const YAML::Node& n) {
      if (n.as<bool>()) c.ema_enabled = c.ema_nemo = true;
    });
    const auto ema_decay = [&](const std::string& path) {
      custom(path, "a number between 0 and 1", [path](C& c, const YAML::Node& n) {
        const auto d = n.as<double>();
        if (!(d >= 0 && d <= 1)) fail("config key \"", path, "\" = ", d, " must be between 0 and 1");
        c.ema_decay = d;
      });
    };
    ema_decay("exp_manager.ema.decay");
    ema_decay("model.ema.decay");
    nested_number("exp_manager.ema.every_n_steps", &C::ema, &EmaConfig::every_n_steps);
    nested_number("model.ema.every_n_steps", &C::ema, &EmaConfig::every_n_steps);
    flag("exp_manager.ema.validate_original_weights", &C::ema_validate_original_weights);
    flag("model.ema.validate_original_weights", &C::ema_validate_original_weights);
    flag("model.ema.export_original_weights", &C::ema_export_original_weights);
    flag("model.ema.enable", &C::ema_enabled);
    nested_number("model.ema.min_decay", &C::ema, &EmaConfig::min_decay);
    nested_number("model.ema.update_after_step", &C::ema, &EmaConfig::update_after_step);
    nested_number("model.ema.inv_gamma", &C::ema, &EmaConfig::inv_gamma);
    nested_number("model.ema.power", &C::ema, &EmaConfig::power);
    custom("model.ema.warmup", "diffusers, power or none", [](C& c, const YAML::Node& n) {
      const auto w = n.as<std::string>();
      if (w != "diffusers" && w != "power" && w != "none")
        fail("config key \"model.ema.warmup\": \"", w, "\" is not diffusers ((1 + s) / (10 + s)), power (1 - (1 + s / inv_gamma)^-power) or none");
      c.ema_warmup = w;
    });
    custom("model.ema.use_ema_warmup", "a boolean", [](C& c, const YAML::Node& n) {  // diffusers' EMAModel argument
      if (n.as<bool>()) c.ema_warmup = "power";
    });

    // model.*
    text("model.restore_from_path", &C::restore_from_path);
    text("model.base_model_path", &C::base_model_path);
    text("model.tokenizer_path", &C::tokenizer_path);
    flag("model.with_prior_preservation", &C::with_prior_preservation);
    number("model.prior_loss_weight", &C::prior_loss_weight);
    number("model.noise_offset", &C::noise_offset);
    custom("model.snr_gamma", "a positive number or null", [](C& c, const YAML::Node& n) {
      if (n.IsNull()) return c.snr_gamma.reset();
      const auto g = n.as<double>();
      if (!std::isfinite(g) || g <= 0) fail("config key \"model.snr_gamma\" = ", g, " must be a positive number or null");
      c.snr_gamma = g;
    });
    flag("model.train_text_encoder", &C::train_text_encoder);
    custom("model.stop_text_encoder_training", "a number of steps or null", [](C& c, const YAML::Node& n) {
      if (n.IsNull()) return c.stop_text_encoder_training.reset();
      const auto d = n.as<double>();
      if (d == -1) fail("config key \"model.stop_text_encoder_training\" = -1: for no text-encoder training set model.train_text_encoder=false");
      if (d != std::floor(d) || d < 0 || d > 9.0e15)
        fail("config key \"model.stop_text_encoder_training\" = ", d, " must be a number of steps (0 or more)");
      c.stop_text_encoder_training = static_cast<long>(d);
    });
    flag("model.use_cached_latents", &C::use_cached_latents);
    flag("model.gradient_checkpointing", &C::gradient_checkpointing);
    flag("model.save_single_file", &C::save_single_file);
    custom("model.export", "a list of formats", [](C& c, const YAML::Node& n) {
      c.export_formats = n.IsNull()       ? std::vector<std::string>{}
                         : n.IsSequence() ? n.as<std::vector<std::string>>()
                                          : std::vector<std::string>{n.as<std::string>()};
    });
    custom("model.save_precision", "32, 16 or bf16", [](C& c, const YAML::Node& n) { c.save_precision = n.as<std::string>(); });
    number("model.seed", &C::seed);
    number("model.micro_batch_size", &C::micro_batch_size);
    custom("model.global_batch_size", "an integer", [](C& c, const YAML::Node& n) {
      if (!n.IsNull()) c.global_batch_size = n.as<long>();
    });
    custom("model.precision", "a precision", [](C& c, const YAML::Node& n) {
      // NeMo fills it from trainer.precision (${trainer.precision}); a different value is a contradiction
      if (!n.IsNull() && canonical_precision(n.as<std::string>()) != canonical_precision(c.precision))
        fail("config key \"model.precision\": ", n.as<std::string>(), " differs from trainer.precision ", c.precision,
             " (NeMo reads it as ${trainer.precision})");
    });
    custom("model.scale_factor", "a number", [](C& c, const YAML::Node& n) {
      if (!n.IsNull()) c.scale_factor = n.as<double>();
    });
    // optimizer and schedule
    number("model.optim.lr", &C::lr);
    flag("model.optim.scale_lr", &C::scale_lr);
    custom("model.optim.text_encoder_lr", "a positive number", [](C& c, const YAML::Node& n) {
      const auto lr = n.as<double>();
      if (!std::isfinite(lr) || lr <= 0) fail("config key \"model.optim.text_encoder_lr\" = ", lr, " must be a positive number");
      c.text_encoder_lr = lr;
    });
    custom("model.optim.betas", "a list of two numbers", [](C& c, const YAML::Node& n) {
      if (!n.IsSequence() || n.size() != 2) throw YAML::BadConversion(n.Mark());
      c.beta1 = n[0].as<double>();
      c.beta2 = n[1].as<double>();
    });
    number("model.optim.weight_decay", &C::weight_decay);
    number("model.optim.eps", &C::eps);
    custom("model.optim.name", "an optimizer name", [](C&, const YAML::Node& n) {
      const auto name = n.as<std::string>();  // NeMo's fused_adam is apex's FusedAdam, decoupled weight decay: AdamW
      if (name != "adamw" && name != "fused_adam" && name != "adam_w")
        fail("config key \"model.optim.name\": optimizer \"", name, "\" is not supported (adamw, fused_adam)");
    });
    custom("model.optim.sched.name", "a schedule name", [](C& c, const YAML::Node& n) { c.schedule.name = n.as<std::string>(); });
    custom("model.optim.sched.warmup_steps", "an integer", [](C& c, const YAML::Node& n) {
      if (!n.IsNull()) c.schedule.warmup_steps = n.as<long>();
    });
    const auto sched = [&](const std::string& key, std::optional<double> LRSchedule::*member) {
      custom("model.optim.sched." + key, "a number", [member](C& c, const YAML::Node& n) {
        if (!n.IsNull()) c.schedule.*member = n.as<double>();
      });
    };
    sched("warmup_ratio", &LRSchedule::warmup_ratio);
    sched("hold_steps", &LRSchedule::hold_steps);
    sched("hold_ratio", &LRSchedule::hold_ratio);
    sched("constant_steps", &LRSchedule::constant_steps);
    sched("constant_ratio", &LRSchedule::constant_ratio);
    sched("min_lr", &LRSchedule::min_lr);
    sched("d_model", &LRSchedule::d_model);
    custom("model.optim.sched.decay_rate", "a number", [](C& c, const YAML::Node& n) { c.schedule.decay_rate = n.as<double>(); });
    custom("model.optim.sched.power", "a number", [](C& c, const YAML::Node& n) { c.schedule.power = n.as<double>(); });
    custom("model.optim.sched.cycle", "a boolean", [](C& c, const YAML::Node& n) { c.schedule.cycle = n.as<bool>(); });
    custom("model.optim.sched.num_cycles", "an integer of at least 1", [](C& c, const YAML::Node& n) {
      c.schedule.num_cycles = n.as<long>();
      if (c.schedule.num_cycles < 1) fail("config key \"model.optim.sched.num_cycles\" = ", c.schedule.num_cycles, " must be at least 1");
    });
    custom("model.optim.sched.last_epoch", "an integer", [](C&, const YAML::Node& n) {
      if (n.as<long>() != -1) fail("config key \"model.optim.sched.last_epoch\": only -1 (a resumed run restores its step from its checkpoint)");
    });
    // components: weights and the architecture of weight files that carry none
    text("model.unet_config.from_pretrained", &C::unet_from_pretrained);
    flag("model.unet_config.from_NeMo", &C::unet_from_nemo);
    flag("model.unet_config.use_checkpoint", &C::gradient_checkpointing);
    custom("model.unet_config._target_", "NeMo's UNetModel", [](C&, const YAML::Node& n) {
      if (!n.as<std::string>().ends_with("openaimodel.UNetModel"))
        fail("config key \"model.unet_config._target_\": ", n.as<std::string>(), " is not NeMo's UNetModel");
    });
    for (const char* k :
         {"in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks", "channel_mult", "num_heads",
          "num_head_channels", "use_spatial_transformer", "transformer_depth", "context_dim", "use_linear_in_transformer", "resblock_gn_groups",
          "transformer_depth_middle", "use_scale_shift_norm", "resblock_updown", "num_classes", "dims", "conv_resample"})
      architecture(std::string("model.unet_config.") + k);
    text("model.first_stage_config.from_pretrained", &C::vae_from_pretrained);
    custom("model.first_stage_config._target_", "NeMo's AutoencoderKL", [](C&, const YAML::Node& n) {
      if (!n.as<std::string>().ends_with("autoencoder.AutoencoderKL"))
        fail("config key \"model.first_stage_config._target_\": ", n.as<std::string>(), " is not NeMo's AutoencoderKL");
    });
    architecture("model.first_stage_config.embed_dim");
    for (const char* k : {"double_z", "z_channels", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions"})
      architecture(std::string("model.first_stage_config.ddconfig.") + k);
    custom("model.cond_stage_config._target_", "a NeMo CLIP embedder", [](C& c, const YAML::Node& n) {
      c.text_target = n.as<std::string>();
      if (!c.text_target.ends_with("FrozenMegatronCLIPEmbedder") && !c.text_target.ends_with("FrozenCLIPEmbedder"))
        fail("config key \"model.cond_stage_config._target_\": ", c.text_target, " is not FrozenMegatronCLIPEmbedder or FrozenCLIPEmbedder");
    });
    text("model.cond_stage_config.restore_from_path", &C::text_restore_from_path);
    text("model.cond_stage_config.version", &C::text_version);
    custom("model.cond_stage_config.layer", "last", [](C&, const YAML::Node& n) {
      if (n.as<std::string>() != "last")
        fail("config key \"model.cond_stage_config.layer\": \"", n.as<std::string>(), "\": only the last layer's output (\"last\") is supported");
    });
    custom("model.cond_stage_config.max_length", "77", [](C&, const YAML::Node& n) {
      if (n.as<long>() != 77) fail("config key \"model.cond_stage_config.max_length\": only 77 tokens are supported");
    });
    for (const char* k : {"_target_", "parameterization", "beta_schedule", "timesteps", "linear_start", "linear_end", "given_betas"})
      architecture(std::string("model.noise_scheduler.") + k);
    custom("model.noise_scheduler.v_posterior", "0", [](C&, const YAML::Node& n) {
      if (n.as<double>() != 0)
        fail(
            "config key \"model.noise_scheduler.v_posterior\": only 0 (it changes the posterior, which training does not use, but a NeMo export "
            "writes it)");
    });
    custom("model.peft.peft_scheme", "sdlora, lora or null", [](C& c, const YAML::Node& n) {
      c.peft_scheme = n.IsNull() ? "" : n.as<std::string>();
      if (c.peft_scheme == "none") c.peft_scheme.clear();
      if (!c.peft_scheme.empty() && c.peft_scheme != "sdlora" && c.peft_scheme != "lora")
        fail("config key \"model.peft.peft_scheme\": \"", c.peft_scheme, "\" is not sdlora (NeMo's), lora or null");
    });
    custom("model.peft.restore_from_path", "null", [](C&, const YAML::Node& n) {
      if (!n.IsNull())
        fail(
            "config key \"model.peft.restore_from_path\": starting from saved adapters is not supported; a LoRA run resumes from its own "
            "checkpoints (trainer.resume)");
    });
    number("model.peft.lora_tuning.adapter_dim", &C::lora_rank);
    custom("model.peft.lora_tuning.text_encoder_adapter_dim", "a positive integer", [](C& c, const YAML::Node& n) {
      const auto d = n.as<double>();
      if (d != std::floor(d) || d < 1 || d > 1e6)
        fail("config key \"model.peft.lora_tuning.text_encoder_adapter_dim\" = ", d, " must be a positive integer");
      c.lora_text_encoder_rank = static_cast<long>(d);
    });
    custom("model.peft.lora_tuning.text_encoder_network_alpha", "a positive number", [](C& c, const YAML::Node& n) {
      const auto a = n.as<double>();
      if (!std::isfinite(a) || a <= 0) fail("config key \"model.peft.lora_tuning.text_encoder_network_alpha\" = ", a, " must be a positive number");
      c.lora_text_encoder_alpha = a;
    });
    custom("model.peft.lora_tuning.network_alpha", "a positive number or null", [](C& c, const YAML::Node& n) {
      if (n.IsNull()) return c.lora_alpha.reset();
      const auto a = n.as<double>();
      if (!std::isfinite(a) || a <= 0) fail("config key \"model.peft.lora_tuning.network_alpha\" = ", a, " must be a positive number or null");
      c.lora_alpha = a;
    });
    custom("model.peft.lora_tuning.adapter_dropout", "a number in [0, 1)", [](C& c, const YAML::Node& n) {
      c.lora_dropout = n.IsNull() ? 0.0 : n.as<double>();
      if (!(c.lora_dropout >= 0 && c.lora_dropout < 1))
        fail("config key \"model.peft.lora_tuning.adapter_dropout\" = ", c.lora_dropout, " must be in [0, 1)");
    });
    custom("model.peft.lora_tuning.conv_adapter_dim", "a positive integer or null", [](C& c, const YAML::Node& n) {
      if (n.IsNull()) return c.lora_conv_rank.reset();
      const auto d = n.as<double>();
      if (d != std::floor(d) || d < 1 || d > 1e6) fail("config key \"model.peft.lora_tuning.conv_adapter_dim\" = ", d, " must be a positive integer");
      c.lora_conv_rank = static_cast<long>(d);
    });
    custom("model.peft.lora_tuning.conv_network_alpha", "a positive number or null", [](C& c, const YAML::Node& n) {
      if (n.IsNull()) return c.lora_conv_alpha.reset();
      const auto a = n.as<double>();
      if (!std::isfinite(a) || a <= 0) fail("config key \"model.peft.lora_tuning.conv_network_alpha\" = ", a, " must be a positive number or null");
      c.lora_conv_alpha = a;
    });
    custom("model.peft.lora_tuning.column_init_method", "kaiming_uniform, gaussian or xavier", [](C& c, const YAML::Node& n) {
      c.lora_init = n.as<std::string>();
      if (c.lora_init == "kaiming") c.lora_init = "kaiming_uniform";
      if (c.lora_init != "kaiming_uniform" && c.lora_init != "gaussian" && c.lora_init != "xavier")
        fail("config key \"model.peft.lora_tuning.column_init_method\": \"", c.lora_init, "\" is not kaiming_uniform, gaussian or xavier");
    });
    custom("model.peft.lora_tuning.row_init_method", "zero", [](C&, const YAML::Node& n) {
      if (n.as<std::string>() != "zero")
        fail(
            "config key \"model.peft.lora_tuning.row_init_method\": only zero (LoRA's up projection starts at zero, so that step 0 is the base "
            "model)");
    });
    for (const char* k : {"layer_selection", "position_embedding_strategy"})
      custom(std::string("model.peft.lora_tuning.") + k, "null", [k](C&, const YAML::Node& n) {
        if (!n.IsNull()) fail("config key \"model.peft.lora_tuning.", k, "\": only null (NeMo's Megatron GPT option)");
      });
    custom("model.peft.lora_tuning.weight_tying", "false", [](C&, const YAML::Node& n) {
      if (n.as<bool>()) fail("config key \"model.peft.lora_tuning.weight_tying\": only false");
    });
    const auto targets = [&](const std::string& path, std::optional<std::vector<std::string>> C::*member) {
      custom(path, "a list of module names", [member, path](C& c, const YAML::Node& n) {
        if (!n.IsSequence() || n.size() == 0) fail("config key \"", path, "\" needs a non-empty list of module names");
        c.*member = n.as<std::vector<std::string>>();
      });
    };
    targets("model.peft.lora_tuning.target_modules", &C::lora_unet_targets);
    targets("model.peft.lora_tuning.text_encoder_target_modules", &C::lora_text_encoder_targets);
    custom("model.peft.export_format", "kohya or diffusers", [](C& c, const YAML::Node& n) {
      c.lora_format = n.as<std::string>();
      if (c.lora_format != "kohya" && c.lora_format != "diffusers")
        fail("config key \"model.peft.export_format\": \"", c.lora_format, "\" is not kohya or diffusers");
    });
    flag("model.peft.merged_export", &C::lora_merged_export);
    flag("model.cond_stage_config.enable_lora_finetune", &C::text_encoder_lora_finetune);
    // data
    text("model.data.instance_dir", &C::instance_dir);
    text("model.data.instance_prompt", &C::instance_prompt);
    text("model.data.regularization_dir", &C::regularization_dir);
    text("model.data.regularization_prompt", &C::regularization_prompt);
    number("model.data.num_reg_images", &C::num_reg_images);
    number("model.data.num_images_per_prompt", &C::num_images_per_prompt);
    number("model.data.resolution", &C::resolution);
    flag("model.data.center_crop", &C::center_crop);
    flag("model.data.random_flip", &C::random_flip);
    number("model.data.num_workers", &C::num_workers);
    number("model.data.max_image_pixels", &C::max_image_pixels);
    text("model.data.cached_instance_dir", &C::cached_instance_dir);
    text("model.data.cached_reg_dir", &C::cached_reg_dir);
    text("model.data.cache_format", &C::cache_format);
    custom("model.data.enable_bucket", "a boolean", [](C& c, const YAML::Node& n) { c.buckets.enabled = n.as<bool>(); });
    custom("model.data.bucket_no_upscale", "a boolean", [](C& c, const YAML::Node& n) { c.buckets.no_upscale = n.as<bool>(); });
    nested_number("model.data.min_bucket_reso", &C::buckets, &data::BucketConfig::min_size);
    nested_number("model.data.max_bucket_reso", &C::buckets, &data::BucketConfig::max_size);
    nested_number("model.data.bucket_reso_steps", &C::buckets, &data::BucketConfig::steps);
    custom("model.data.concepts", "a list of concepts", [](C& c, const YAML::Node& n) {
      if (n.IsNull()) return;
      if (!c.concepts_source.empty() && c.concepts_source != "model.data.concepts")
        fail("config key \"model.data.concepts\": the concepts are already given by ", c.concepts_source, " (give one of the two)");
      c.concepts = parse_concepts(n, "model.data.concepts", c.ignored_keys);
      c.concepts_source = "model.data.concepts";
    });
    custom("model.data.concepts_list", "the path of a JSON or YAML file", [](C& c, const YAML::Node& n) {
      if (n.IsNull()) return;
      const auto file = n.as<std::string>();
      if (!c.concepts_source.empty() && c.concepts_source != "model.data.concepts_list")
        fail("config key \"model.data.concepts_list\": the concepts are already given by ", c.concepts_source, " (give one of the two)");
      if (!std::filesystem::is_regular_file(file)) fail("config key \"model.data.concepts_list\": ", file, " is not a file");
      YAML::Node list;
      try {
        list = YAML::LoadFile(file);  // JSON is YAML: diffusers' file reads unchanged
      } catch (const YAML::Exception& e) {
        fail("config key \"model.data.concepts_list\": ", file, " is not JSON or YAML (line ", e.mark.line + 1, "): ", e.msg);
      }
      c.concepts = parse_concepts(list, file, c.ignored_keys);
      c.concepts_source = "model.data.concepts_list";
    });
    // captions (kohya's dataset keys)
    custom("model.data.caption_extension", "a file extension or null",
           [](C& c, const YAML::Node& n) { c.captions.extension = n.IsNull() ? std::string() : n.as<std::string>(); });
    nested_number("model.data.caption_dropout_rate", &C::captions, &data::CaptionConfig::dropout_rate);
    nested_number("model.data.caption_tag_dropout_rate", &C::captions, &data::CaptionConfig::tag_dropout_rate);
    nested_number("model.data.keep_tokens", &C::captions, &data::CaptionConfig::keep_tokens);
    custom("model.data.shuffle_caption", "a boolean", [](C& c, const YAML::Node& n) { c.captions.shuffle = n.as<bool>(); });
    custom("model.data.caption_separator", "a string", [](C& c, const YAML::Node& n) { c.captions.separator = n.as<std::string>(); });
    // regularization sampling: this project's keys and NeMo's infer.*
    // checked as set: the two spellings set one value, and the one a file sets later must not hide a wrong one
    const auto sampling_steps = [&](const std::string& path) {
      number(path, &C::reg_steps);
      custom(path, "an integer", [path, set = t[path].set](C& c, const YAML::Node& n) {
        set(c, n);
        if (c.reg_steps < 1 || c.reg_steps > 1000) fail("config key \"", path, "\" = ", c.reg_steps, " must be between 1 and 1000 sampling steps");
      });
    };
    sampling_steps("model.regularization.steps");
    number("model.regularization.guidance_scale", &C::reg_guidance_scale);
    custom("model.regularization.scheduler", "a scheduler name", [](C& c, const YAML::Node& n) {
      c.reg_scheduler = n.as<std::string>();
      if (!schedulers::is_scheduler_name(c.reg_scheduler))
        fail("config key \"model.regularization.scheduler\": \"", c.reg_scheduler, "\" is not a scheduler (", schedulers::kSchedulerNames, ")");
    });
    text("model.regularization.negative_prompt", &C::reg_negative_prompt);
    number("infer.unconditional_guidance_scale", &C::reg_guidance_scale);
    sampling_steps("infer.inference_steps");
    custom("infer.sampler_type", "PLMS or DDIM", [](C& c, const YAML::Node& n) {
      const auto s = n.as<std::string>();
      if (s == "PLMS")
        c.reg_scheduler = "pndm";
      else if (s == "DDIM")
        c.reg_scheduler = "ddim";
      else
        fail("config key \"infer.sampler_type\": \"", s, "\" is not PLMS or DDIM");
    });
    number("infer.eta", &C::reg_eta);
    number("infer.height", &C::reg_height);
    number("infer.width", &C::reg_width);
    number("infer.num_images_per_prompt", &C::num_images_per_prompt);
    custom("infer.prompts", "a prompt", [](C& c, const YAML::Node& n) {
      if (n.IsSequence()) {
        if (n.size() != 1) fail("config key \"infer.prompts\": regularization images are sampled from one prompt");
        c.reg_sample_prompt = n[0].as<std::string>();
      } else if (!n.IsNull()) {
        c.reg_sample_prompt = n.as<std::string>();
      }
    });
    custom("infer.out_path", "the regularization folder", [](C& c, const YAML::Node& n) {
      if (!n.IsNull() && !c.regularization_dir.empty() && std::filesystem::path(n.as<std::string>()) != std::filesystem::path(c.regularization_dir))
        fail("config key \"infer.out_path\": ", n.as<std::string>(), " differs from model.data.regularization_dir ", c.regularization_dir,
             " (the sampled images are trained on from there)");
    });
    // validation (this project's)
    custom("model.validation.prompts", "a list of strings",
           [](C& c, const YAML::Node& n) { c.validation_prompts = n.IsNull() ? std::vector<std::string>{} : n.as<std::vector<std::string>>(); });
    number("model.validation.every_n_steps", &C::validation_every_n_steps);
    number("model.validation.steps", &C::validation_steps);
    text("model.validation.negative_prompt", &C::validation_negative_prompt);
    number("model.validation.guidance_scale", &C::validation_guidance_scale);
    text("model.validation.scheduler", &C::validation_scheduler);
    number("model.validation.num_images_per_prompt", &C::validation_images_per_prompt);
    return t;
  }();
  return table;
}

inline const std::map<std::string, std::string>& TrainingConfig::no_effect_keys() {
  static const std::map<std::string, std::string> table = [] {
    std::map<std::string, std::string> t;
    const auto add = [&](std::initializer_list<const char*> keys, const char* reason) {
      for (const char* k : keys) t[k] = reason;
    };
    add({"trainer.logger", "exp_manager.create_tensorboard_logger", "exp_manager.create_wandb_logger"},
        "progress goes to metrics.jsonl and the terminal");
    add({"trainer.enable_checkpointing", "exp_manager.checkpoint_callback_params.save_last", "exp_manager.checkpoint_callback_params.save_best_model",
         "exp_manager.checkpoint_callback_params.save_on_train_epoch_end", "exp_manager.checkpoint_callback_params.filename",
         "exp_manager.checkpoint_callback_params.dirpath", "exp_manager.checkpoint_callback_params.postfix",
         "exp_manager.checkpoint_callback_params.save_weights_only", "exp_manager.checkpoint_callback_params.async_save"},
        "checkpoints are output_dir/checkpoints/step-N, written atomically");
    add({"exp_manager.checkpoint_callback_params.monitor", "exp_manager.checkpoint_callback_params.mode"},
        "save_top_k keeps the newest checkpoints, not the best by a metric");
    add({"trainer.use_distributed_sampler", "trainer.replace_sampler_ddp"}, "one process: batches come from the project's seeded loader");
    add({"trainer.benchmark"}, "convolution algorithms are always searched once per shape on the GPU");
    add({"trainer.enable_model_summary", "trainer.enable_progress_bar"}, "parameter counts and a progress line are always printed");
    add({"trainer.limit_val_batches", "trainer.val_check_interval", "trainer.num_sanity_val_steps", "trainer.check_val_every_n_epoch"},
        "DreamBooth has no validation set; model.validation.prompts samples images instead");
    add({"exp_manager.ema.cpu_offload"}, "the EMA copy stays where the trained weights are (one more copy of them in memory)");
    add({"exp_manager.resume_past_end", "exp_manager.log_step_timing", "exp_manager.log_tflops_per_sec_per_gpu",
         "exp_manager.create_early_stopping_callback", "exp_manager.version", "exp_manager.use_datetime_version", "exp_manager.log_local_rank_0_only",
         "exp_manager.log_global_rank_0_only"},
        "Lightning / NeMo logging detail");
    add({"model.inductor", "model.inductor_cudagraphs", "model.channels_last", "model.fused_opt", "model.gradient_as_bucket_view",
         "model.apex_transformer_log_level", "model.megatron_amp_O2", "model.unet_config.use_flash_attention", "model.unet_config.unet_precision",
         "model.unet_config.use_te_fp8", "model.cond_stage_config.device", "model.native_amp_init_scale", "model.native_amp_growth_interval",
         "model.hysteresis"},
        "PyTorch / apex execution detail; the backends choose their own kernels");
    add({"model.cond_stage_config.freeze"}, "model.train_text_encoder decides whether the text encoder trains");
    add({"model.unet_config.image_size", "model.unet_config.legacy", "model.first_stage_config.monitor",
         "model.first_stage_config.ddconfig.resolution", "model.first_stage_config.ddconfig.dropout", "model.first_stage_config.lossconfig.target",
         "model.unet_config.dropout"},
        "does not change the inference or training computation");
    add({"model.linear_start",
         "model.linear_end",
         "model.num_timesteps_cond",
         "model.log_every_t",
         "model.timesteps",
         "model.first_stage_key",
         "model.cond_stage_key",
         "model.image_size",
         "model.channels",
         "model.cond_stage_trainable",
         "model.conditioning_key",
         "model.monitor",
         "model.use_ema",
         "model.scale_by_std",
         "model.ckpt_path",
         "model.ignore_keys",
         "model.parameterization",
         "model.clip_denoised",
         "model.load_only_unet",
         "model.cosine_s",
         "model.given_betas",
         "model.original_elbo_weight",
         "model.v_posterior",
         "model.l_simple_weight",
         "model.use_positional_encodings",
         "model.learn_logvar",
         "model.logvar_init",
         "model.beta_schedule",
         "model.loss_type",
         "model.concat_mode",
         "model.cond_stage_forward",
         "model.text_embedding_dropout_rate",
         "model.noise_scheduler.cosine_s",
         "model.pretrained_ckpt"},
        "latent-diffusion keys NeMo's DreamBooth does not read (the schedule is model.noise_scheduler's; the sampling model's own config is in its "
        ".nemo)");
    add({"model.data.name", "model.data.validation_drop_last", "model.data.train_batch_size"}, "not read by NeMo's DreamBooth dataset either");
    add({"infer.down_factor"}, "the VAE's own downscale factor is used");
    add({"infer.output_type", "infer.save_to_file"}, "regularization images are always written as PNG files into regularization_dir");
    add({"model.optim.sched.max_steps"}, "trainer.max_steps is used, as NeMo overwrites sched.max_steps with it");
    add({"base_results_dir", "launcher_scripts_path"}, "NeMo launcher root keys, read only through interpolations");
    return t;
  }();
  return table;
}

inline const std::map<std::string, std::string>& TrainingConfig::no_effect_subtrees() {
  static const std::map<std::string, std::string> table = {
      {"model.nsys_profile", "Nsight Systems profiling"},
      {"exp_manager.wandb_logger_kwargs", "progress goes to metrics.jsonl and the terminal"},
      {"run", "the NeMo launcher's job settings"},
  };
  return table;
}

}  // namespace dreambooth::train
