// Trainer<Backend>: DreamBooth fine-tuning end to end.
//   1. the model (model_assembly.hpp: a diffusers folder, a .nemo or one original file, with NeMo's component keys);
//   2. with prior preservation, regularization images: when regularization_dir holds fewer than num_reg_images, the
//      model's own pipeline samples the missing ones, num_images_per_prompt at a time, each written to a temporary file
//      and renamed (a rerun only makes what is missing; image k always uses seed + k);
//   3. with use_cached_latents, the latent caches (LatentCache rules);
//   4. steps: batches [instances..., classes...], latents sampled from the cache or encoded online, noise and timesteps
//      from the counter-based RNG keyed by the step (so a resumed run draws exactly what an uninterrupted one would),
//      DreamBoothStep with gradient accumulation, a progress line and metrics as JSON lines;
//   5. checkpoints every N steps (a directory written under a temporary name and renamed; the last K kept) and exact
//      resume from the newest complete one (NeMo's exp_manager resume keys); the result in the formats model.export names
//      (export.hpp) at model.save_precision, and <name>.nemo in checkpoints/ as NeMo's exp_manager writes it.
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/core/progress.hpp"
#include "dreambooth/data/dataset.hpp"
#include "dreambooth/data/latent_cache.hpp"
#include "dreambooth/io/png.hpp"
#include "dreambooth/pipeline/export.hpp"
#include "dreambooth/pipeline/infotext.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"
#include "dreambooth/train/config.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "dreambooth/train/model_assembly.hpp"

namespace dreambooth::train {

namespace fs = std::filesystem;

// Log lines go to stderr, prefixed.
inline void log(const std::string& message) { std::fprintf(stderr, "train: %s\n", message.c_str()); }

// Writes the missing regularization images (reg-00000.png, ...) into `dir`; returns how many were made.
template <class B>
std::size_t ensure_regularization_images(pipeline::TextToImagePipeline<B>& pipe, const TrainingConfig& c) {
  const fs::path dir = c.regularization_dir;
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(dir))  // what a killed run was writing: never counted, removed now
    if (e.is_regular_file() && e.path().filename().string().find(".tmp-") != std::string::npos) fs::remove(e.path());
  const auto existing = data::list_images(dir, "model.data.regularization_dir").size();
  if (existing >= static_cast<std::size_t>(c.num_reg_images)) return 0;
  log("regularization_dir holds " + std::to_string(existing) + " of " + std::to_string(c.num_reg_images) + " images: sampling the rest (" +
      c.reg_scheduler + ", " + std::to_string(c.reg_steps) + " steps, guidance " + std::to_string(c.reg_guidance_scale) + ")");
  std::size_t made = 0, index = 0;
  auto missing = static_cast<std::size_t>(c.num_reg_images) - existing;
  // what each image's PNG records (A1111's parameters): the sampling settings and the model sampled from
  pipeline::InfotextSettings infotext;
  infotext.prompt = c.reg_sample_prompt.empty() ? c.regularization_prompt : c.reg_sample_prompt;
  infotext.negative_prompt = c.reg_negative_prompt;
  infotext.steps = static_cast<int>(c.reg_steps);
  infotext.scheduler = c.reg_scheduler.empty() ? pipe.scheduler_config.class_name : c.reg_scheduler;
  infotext.guidance_scale = c.reg_guidance_scale;
  infotext.eta = c.reg_eta;
  infotext.width = c.reg_width > 0 ? c.reg_width : c.resolution;
  infotext.height = c.reg_height > 0 ? c.reg_height : c.resolution;
  infotext.model = c.restore_from_path.empty() ? c.base_model_path : c.restore_from_path;
  if (missing > 0) infotext.model_hash = pipeline::a1111_model_hash(infotext.model);
  while (missing > 0) {
    const auto count = std::min<std::size_t>(missing, static_cast<std::size_t>(c.num_images_per_prompt));
    // the next free names; image k of a batch uses seed + its index, so a rerun makes the same images
    std::vector<std::size_t> indices;
    while (indices.size() < count) {
      char name[32];
      std::snprintf(name, sizeof name, "reg-%05zu.png", index);
      if (!fs::exists(dir / name)) indices.push_back(index);
      ++index;
    }
    pipeline::GenerationOptions g;
    g.prompt = c.reg_sample_prompt.empty() ? c.regularization_prompt : c.reg_sample_prompt;
    g.negative_prompt = c.reg_negative_prompt;
    g.steps = static_cast<int>(c.reg_steps);
    g.guidance_scale = c.reg_guidance_scale;
    g.width = c.reg_width > 0 ? c.reg_width : c.resolution;
    g.height = c.reg_height > 0 ? c.reg_height : c.resolution;
    g.scheduler = c.reg_scheduler;
    g.eta = c.reg_eta;
    g.images_per_prompt = static_cast<int>(count);
    g.seed = static_cast<std::uint64_t>(c.seed) * 1000003u + indices.front();
    const auto result = pipe.generate(g);
    const auto pixels = static_cast<std::size_t>(g.width * g.height * 3);
    for (std::size_t k = 0; k < count; ++k) {
      char name[32];
      std::snprintf(name, sizeof name, "reg-%05zu.png", indices[k]);
      auto settings = infotext;
      settings.seed = g.seed, settings.image = static_cast<int>(k), settings.images = g.images_per_prompt;
      io::write_png(dir / name, result.pixels.data() + k * pixels, g.width, g.height,
                    {{"parameters", pipeline::generation_infotext(settings).text()}, {"Software", "dreambooth.cpp regularization"}});
      ++made;
    }
    missing -= count;
    log("regularization images: " + std::to_string(existing + made) + "/" + std::to_string(c.num_reg_images));
  }
  return made;
}

template <class B>
class Trainer {
 public:
  Trainer(B& b, TrainingConfig config) : b_(&b), c_(std::move(config)) {}

  struct Summary {
    long first_step = 0, last_step = 0;
    std::vector<double> losses;  // per optimizer step run here
    std::size_t regularization_images_made = 0;
    long skipped_steps = 0;  // fp16 steps whose gradients overflowed (no optimizer update)
  };

  Summary run() {
    B& b = *b_;
    Summary summary;
    const fs::path out = c_.output_dir;
    if (!c_.ignored_keys.empty()) {  // one note, the keys grouped by reason
      std::vector<std::pair<std::string, std::string>> by_reason;
      for (const auto& [key, reason] : c_.ignored_keys) {
        auto it = std::find_if(by_reason.begin(), by_reason.end(), [&](const auto& r) { return r.first == reason; });
        if (it == by_reason.end()) it = by_reason.insert(by_reason.end(), {reason, ""});
        it->second += (it->second.empty() ? "" : ", ") + key;
      }
      std::string text;
      for (const auto& [reason, keys] : by_reason) text += "\n  " + keys + ": " + reason;
      log(std::to_string(c_.ignored_keys.size()) + " keys have no effect here:" + text);
    }
    if (!c_.with_prior_preservation) log("prior preservation is off: regularization settings and restore_from_path's sampling role are ignored");
    // Inputs first: a bad instance folder, image or model stops the run before anything is written.
    const auto instance_images = data::list_images(c_.instance_dir, "model.data.instance_dir");
    if (instance_images.empty()) fail("model.data.instance_dir ", c_.instance_dir, " holds no JPEG or PNG images");
    for (const auto& path : instance_images) (void)data::load_image(path);
    const auto note = [](const std::string& n) { log("note: " + n); };
    auto pipe = assemble_training_pipeline(b, c_, note);
    pipe.unet->gradient_checkpointing = c_.gradient_checkpointing;
    const auto resume_from = resume_checkpoint(out);  // decided (and refused) before anything is written
    fs::create_directories(out);

    // regularization images: sampled by model.restore_from_path's model when it is not the one trained
    std::vector<fs::path> class_images;
    if (c_.with_prior_preservation) {
      const bool own = c_.restore_from_path.empty() ||
                       (c_.base_model_path.empty() && c_.unet_from_pretrained.empty() && c_.vae_from_pretrained.empty() && c_.text_target.empty());
      if (!own) {
        pipeline::LoadOptions o;
        o.tokenizer = c_.tokenizer_path;
        o.fallback_tokenizer = pipe.tokenizer_files;
        o.note = note;
        const auto missing = data::list_images(c_.regularization_dir, "model.data.regularization_dir", /*missing_ok=*/true).size() <
                             static_cast<std::size_t>(c_.num_reg_images);
        if (missing) {  // the sampling model is loaded only when it has images to make
          auto sampler = pipeline::load_pipeline(b, c_.restore_from_path, o);
          summary.regularization_images_made = ensure_regularization_images(sampler, c_);
        }
      } else {
        summary.regularization_images_made = ensure_regularization_images(pipe, c_);
      }
      class_images = data::list_images(c_.regularization_dir, "model.data.regularization_dir");
      class_images.resize(std::min(class_images.size(), static_cast<std::size_t>(c_.num_reg_images)));
    }
    for (const auto& path : class_images) (void)data::load_image(path);  // a corrupt image stops the run now, by name

    // latent caches
    std::optional<data::LatentCache<B>> instance_cache, class_cache;
    if (c_.use_cached_latents) {
      instance_cache.emplace(make_cache(c_.cached_instance_dir, c_.instance_dir, "instance"));
      const auto r = instance_cache->build(b, *pipe.vae, instance_images);
      log("instance latent cache (" + cache_format_name(*instance_cache) + ", " + instance_cache->folder().string() +
          "): " + std::to_string(r.encoded) + " encoded, " + std::to_string(r.reused) + " reused" + (r.rebuilt_all ? " (rebuilt)" : ""));
      if (!class_images.empty()) {
        class_cache.emplace(make_cache(c_.cached_reg_dir, c_.regularization_dir, "reg"));
        const auto rc = class_cache->build(b, *pipe.vae, class_images);
        log("regularization latent cache (" + cache_format_name(*class_cache) + ", " + class_cache->folder().string() +
            "): " + std::to_string(rc.encoded) + " encoded, " + std::to_string(rc.reused) + " reused" + (rc.rebuilt_all ? " (rebuilt)" : ""));
      }
    }

    data::DreamBoothDataset dataset(instance_images, class_images, {c_.resolution, c_.center_crop, static_cast<std::uint64_t>(c_.seed)});
    StepConfig step_config;
    step_config.train_text_encoder = c_.train_text_encoder;
    step_config.with_prior_preservation = c_.with_prior_preservation;
    step_config.prior_loss_weight = c_.prior_loss_weight;
    step_config.max_grad_norm = c_.gradient_clip_val;
    step_config.optimizer = {c_.lr, c_.beta1, c_.beta2, c_.eps, c_.weight_decay};
    step_config.schedule = c_.schedule;
    step_config.loss_scaler.enabled = c_.loss_scaling();
    if (c_.compute_precision() != "fp32")
      log("precision " + c_.compute_precision() + ": GEMMs and convolutions in " + c_.compute_precision() +
          ", weights, gradients and AdamW state in fp32" +
          (c_.loss_scaling() ? ", dynamic loss scaling (initial scale " + std::to_string(static_cast<long>(step_config.loss_scaler.init_scale)) + ")"
                             : ""));
    DreamBoothStep<B> trainer(b, *pipe.unet, *pipe.text_encoder, schedulers::NoiseSchedule(pipe.scheduler_config), step_config);

    // resume
    long step = 0;
    if (resume_from) {
      step = restore(*resume_from, pipe, trainer);
      log("resumed from " + resume_from->string() + " at step " + std::to_string(step));
    }
    summary.first_step = step;

    const auto ids = prompt_ids(pipe, dataset.with_class_images());
    const auto micro = static_cast<std::size_t>(c_.micro_batch_size);
    const auto accumulate = static_cast<std::uint64_t>(c_.accumulate_grad_batches);
    data::BatchLoader loader(dataset, micro, static_cast<std::uint64_t>(step) * accumulate, static_cast<std::size_t>(c_.num_workers));
    std::ofstream metrics(out / "metrics.jsonl", std::ios::app);
    const auto start = std::chrono::steady_clock::now();
    const std::int64_t f = pipe.vae->config.downscale(), latent = c_.resolution / f;
    const std::int64_t channels = pipe.unet->config.in_channels;
    for (; step < c_.max_steps; ++step) {
      double loss = 0, instance_loss = 0, prior_loss = 0;
      for (std::uint64_t micro_step = 0; micro_step < accumulate; ++micro_step) {
        const auto index = static_cast<std::uint64_t>(step) * accumulate + micro_step;
        const auto batch = loader.next();
        const auto n = static_cast<std::int64_t>(batch.sources.size());
        typename DreamBoothStep<B>::Batch input;
        const auto instances = static_cast<std::size_t>(dataset.with_class_images() ? n / 2 : n);
        input.latents = latents_for(b, pipe, batch, index, instances, instance_cache, class_cache, n, channels, latent);
        input.noise = Tensor<B>::empty(b, {n, channels, latent, latent});
        b.fill_normal(nn::ptr(input.noise), static_cast<std::size_t>(input.noise.numel()), static_cast<std::uint64_t>(c_.seed), kNoiseStream + index,
                      0.0f, 1.0f);
        const int train_timesteps = pipe.scheduler_config.num_train_timesteps;
        for (std::int64_t k = 0; k < n; ++k) {  // t uniform in [0, num_train_timesteps)
          const float u = rng::uniform(static_cast<std::uint64_t>(c_.seed), kTimestepStream + index, static_cast<std::uint64_t>(k));
          input.timesteps.push_back(std::min(train_timesteps - 1, static_cast<int>(u * static_cast<float>(train_timesteps))));
        }
        for (std::size_t k = 0; k < static_cast<std::size_t>(n); ++k) {
          const auto& prompt = k < instances ? ids.first : ids.second;
          input.ids.insert(input.ids.end(), prompt.begin(), prompt.end());
        }
        const auto value = trainer.accumulate(input, 1.0 / static_cast<double>(accumulate));
        loss += value.total / static_cast<double>(accumulate);
        instance_loss += value.instance / static_cast<double>(accumulate);
        prior_loss += value.prior / static_cast<double>(accumulate);
      }
      const bool scaled = trainer.loss_scaler().enabled();  // fp16: the loss scaler skips overflowed steps instead
      if (!scaled && !std::isfinite(loss)) stop_non_finite(out, step + 1, "the loss is " + std::to_string(loss));
      const auto applied = trainer.apply();
      if (applied.non_finite) stop_non_finite(out, step + 1, "the gradients' global norm is " + std::to_string(applied.grad_norm));
      summary.losses.push_back(loss);
      if (applied.skipped) ++summary.skipped_steps;
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = static_cast<double>(step + 1 - summary.first_step) / elapsed;
      nlohmann::json line = {{"step", step + 1},         {"loss", loss},     {"instance_loss", instance_loss},
                             {"prior_loss", prior_loss}, {"lr", applied.lr}, {"grad_norm", applied.grad_norm},
                             {"elapsed_s", elapsed}};
      if (trainer.loss_scaler().enabled()) {  // fp16 only, so that the other modes' lines are unchanged
        line["grad_scale"] = applied.loss_scale;
        line["skipped"] = applied.skipped;
      }
      metrics << line.dump() << "\n" << std::flush;
      if ((step + 1) % std::max(1L, c_.log_every_n_steps) == 0 || step + 1 == c_.max_steps) {
        char text[160];
        std::snprintf(text, sizeof text, "train: step %ld/%ld  loss %.4f  lr %.2e  %.2f it/s  ETA %.0f s", step + 1, c_.max_steps, loss, applied.lr,
                      rate, static_cast<double>(c_.max_steps - step - 1) / rate);
        progress_.update(text, step + 1 == c_.max_steps);
      }
      if (c_.create_checkpoint_callback && c_.checkpoint_every_n_steps > 0 && (step + 1) % c_.checkpoint_every_n_steps == 0 &&
          step + 1 < c_.max_steps) {
        save_checkpoint(out, step + 1, pipe, trainer);
        if (c_.always_save_nemo) save_nemo(out, pipe);
      }
      if (c_.validation_every_n_steps > 0 && !c_.validation_prompts.empty() &&
          ((step + 1) % c_.validation_every_n_steps == 0 || step + 1 == c_.max_steps))
        validate(out, step + 1, pipe);
    }
    summary.last_step = step;
    if (summary.skipped_steps > 0)
      log(std::to_string(summary.skipped_steps) + " of " + std::to_string(step - summary.first_step) +
          " steps skipped: fp16 gradients overflowed (the loss scale backed off; final scale " + std::to_string(trainer.loss_scaler().scale()) + ")");
    save_result(out, pipe);
    return summary;
  }

  static constexpr std::uint64_t kNoiseStream = 1ull << 32, kTimestepStream = 2ull << 32, kLatentStream = 3ull << 32;

 private:
  // A latent cache for `images_dir`: its format (model.data.cache_format; auto: NeMo's where NeMo's files are) and folder
  // (the configured one, else <images>_cached for NeMo's format and <images>_latents for ours).
  data::LatentCache<B> make_cache(const std::string& configured, const std::string& images_dir, const std::string& kind) const {
    const auto sibling = [&](const char* suffix) { return fs::path(images_dir).parent_path() / (fs::path(images_dir).filename().string() + suffix); };
    auto format = data::LatentCacheFormat::Safetensors;
    if (c_.cache_format == "nemo" ||
        (c_.cache_format == "auto" && data::holds_nemo_cache(configured.empty() ? sibling("_cached") : fs::path(configured))))
      format = data::LatentCacheFormat::Nemo;
    const fs::path folder = !configured.empty() ? fs::path(configured) : sibling(format == data::LatentCacheFormat::Nemo ? "_cached" : "_latents");
    return data::LatentCache<B>(folder, c_.resolution, format, kind);
  }
  static std::string cache_format_name(const data::LatentCache<B>& c) {
    return c.format() == data::LatentCacheFormat::Nemo ? "NeMo .pt" : "safetensors";
  }

  // The checkpoint to resume from, as NeMo's exp_manager decides: exp_manager.resume_from_checkpoint when given; else, with
  // resume_if_exists, the newest complete one in output_dir/checkpoints (none: a fresh start unless
  // resume_ignore_no_checkpoint is false). Without resume_if_exists, an output_dir that already holds checkpoints is
  // refused rather than overwritten.
  std::optional<fs::path> resume_checkpoint(const fs::path& out) const {
    if (!c_.resume_from_checkpoint.empty()) {
      const fs::path p = c_.resume_from_checkpoint;
      if (!fs::is_directory(p) || !fs::exists(p / "state.json"))
        fail("exp_manager.resume_from_checkpoint: ", p.string(), " is not a checkpoint of this trainer (a step-N folder with state.json); ",
             fs::is_regular_file(p) ? "a NeMo / Lightning .ckpt holds Lightning's optimizer state, which cannot be resumed here"
                                    : "it does not exist");
      return p;
    }
    const auto latest = latest_checkpoint(out);
    if (!c_.resume_if_exists) {
      if (latest)
        fail("output directory ", out.string(), " holds checkpoints of an earlier run (", latest->filename().string(),
             ") and exp_manager.resume_if_exists is false: choose another directory, or resume");
      return std::nullopt;
    }
    if (!latest && !c_.resume_ignore_no_checkpoint)
      fail("exp_manager.resume_ignore_no_checkpoint is false and ", (out / "checkpoints").string(), " holds no checkpoint to resume from");
    return latest;
  }

  std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> prompt_ids(pipeline::TextToImagePipeline<B>& pipe, bool with_class) {
    const auto instance = pipe.tokenizer->encode(c_.instance_prompt);
    if (instance.truncated()) log("warning: the instance prompt has " + std::to_string(instance.token_count) + " tokens and was truncated");
    const auto cls = pipe.tokenizer->encode(with_class ? c_.regularization_prompt : c_.instance_prompt);
    return {instance.ids, cls.ids};
  }

  // Scaled latents [n, C, h, w] for a batch: sampled from the cached moments, or the VAE run on the pixels; the first
  // `instances` entries are instance images, the rest class images.
  Tensor<B> latents_for(B& b, pipeline::TextToImagePipeline<B>& pipe, const data::DreamBoothDataset::Batch& batch, std::uint64_t index,
                        std::size_t instances, const std::optional<data::LatentCache<B>>& instance_cache,
                        const std::optional<data::LatentCache<B>>& class_cache, std::int64_t n, std::int64_t channels, std::int64_t latent) {
    std::vector<float> all;
    for (std::size_t k = 0; k < batch.sources.size(); ++k) {
      const auto offset = kLatentStream + index * 64 + k;
      Tensor<B> z;
      if (instance_cache) {
        const auto& cache = k < instances || !class_cache ? *instance_cache : *class_cache;
        z = cache.sample(b, *pipe.vae, batch.sources[k], static_cast<std::uint64_t>(c_.seed), offset);
      } else {
        const auto per = static_cast<std::size_t>(3 * c_.resolution * c_.resolution);
        const std::vector<float> px(batch.pixels.begin() + static_cast<std::ptrdiff_t>(k * per),
                                    batch.pixels.begin() + static_cast<std::ptrdiff_t>((k + 1) * per));
        z = pipe.vae->sample(b, pipe.vae->encode(b, Tensor<B>::from_host(b, {1, 3, c_.resolution, c_.resolution}, px)),
                             static_cast<std::uint64_t>(c_.seed), offset);
        b.scale(nn::ptr(z), nn::ptr(z), static_cast<float>(pipe.vae->config.scaling_factor), static_cast<std::size_t>(z.numel()));
      }
      const auto v = z.to_host();
      all.insert(all.end(), v.begin(), v.end());
    }
    return Tensor<B>::from_host(b, {n, channels, latent, latent}, all);
  }

  // Samples every validation prompt with the current weights (fixed seed) into one grid image,
  // output_dir/validation/step-XXXXXXXX.png (up to 4 images a row).
  void validate(const fs::path& out, long step, pipeline::TextToImagePipeline<B>& pipe) {
    const auto n = static_cast<std::int64_t>(c_.validation_prompts.size());
    const std::int64_t R = c_.resolution, columns = std::min<std::int64_t>(4, n), rows = (n + columns - 1) / columns;
    std::vector<std::uint8_t> grid(static_cast<std::size_t>(rows * R * columns * R * 3), 255);
    for (std::int64_t k = 0; k < n; ++k) {
      pipeline::GenerationOptions g;
      g.prompt = c_.validation_prompts[static_cast<std::size_t>(k)];
      g.steps = static_cast<int>(c_.validation_steps);
      g.width = g.height = R;
      g.seed = static_cast<std::uint64_t>(c_.seed) + static_cast<std::uint64_t>(k);
      g.scheduler = c_.reg_scheduler;
      const auto image = pipe.generate(g);
      const auto gy = k / columns, gx = k % columns;
      for (std::int64_t y = 0; y < R; ++y)
        std::copy_n(image.pixels.data() + y * R * 3, R * 3, grid.data() + ((gy * R + y) * columns * R + gx * R) * 3);
    }
    fs::create_directories(out / "validation");
    char name[40];
    std::snprintf(name, sizeof name, "step-%08ld.png", step);
    std::string prompts;
    for (const auto& p : c_.validation_prompts) prompts += (prompts.empty() ? "" : " | ") + p;
    io::write_png(out / "validation" / name, grid.data(), columns * R, rows * R,
                  {{"parameters", prompts}, {"Software", "dreambooth.cpp validation"}});
    progress_.end_line();
    std::fprintf(stderr, "train: validation images for step %ld in %s\n", step, (out / "validation" / name).string().c_str());
  }

  static std::optional<fs::path> latest_checkpoint(const fs::path& out) {
    const auto dir = out / "checkpoints";
    if (!fs::is_directory(dir)) return std::nullopt;
    for (const auto& e : fs::directory_iterator(dir))  // a checkpoint a killed run was writing
      if (e.path().filename().string().find(".tmp-") != std::string::npos) fs::remove_all(e.path());
    std::optional<fs::path> best;
    for (const auto& e : fs::directory_iterator(dir)) {
      const auto name = e.path().filename().string();
      if (e.is_directory() && name.rfind("step-", 0) == 0 && name.find(".tmp") == std::string::npos && fs::exists(e.path() / "state.json"))
        if (!best || name > best->filename().string()) best = e.path();
    }
    return best;
  }

  // A non-finite loss or gradient: the run stops before any update from it, naming the step; checkpoints already written
  // stay, and nothing more is written.
  [[noreturn]] void stop_non_finite(const fs::path& out, long step, const std::string& what) {
    const auto last = latest_checkpoint(out);
    progress_.end_line();
    fail("step ", step, ": ", what, "; the run stops before updating the weights with it. ",
         last ? "The last checkpoint, " + last->string() + ", stays (resume continues from it). " : std::string("No checkpoint was written. "),
         "A lower model.optim.lr or gradient clipping (trainer.gradient_clip_val) usually keeps training finite");
  }

  void save_checkpoint(const fs::path& out, long step, pipeline::TextToImagePipeline<B>& pipe, DreamBoothStep<B>& trainer) {
    nn::require_finite_parameters(*pipe.unet, "checkpoint at step " + std::to_string(step) + ": the UNet");
    if (c_.train_text_encoder) nn::require_finite_parameters(*pipe.text_encoder, "checkpoint at step " + std::to_string(step) + ": the text encoder");
    char name[32];
    std::snprintf(name, sizeof name, "step-%08ld", step);
    const auto dir = out / "checkpoints" / name;
    const auto tmp = out / "checkpoints" / (std::string(name) + ".tmp-" + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    io::save_parameters(*pipe.unet, tmp / "unet.safetensors");
    if (c_.train_text_encoder) io::save_parameters(*pipe.text_encoder, tmp / "text_encoder.safetensors");
    io::SafetensorsWriter moments;
    auto& opt = trainer.optimizer();
    for (std::size_t i = 0; i < opt.first_moments().size(); ++i) {
      moments.add("m." + std::to_string(i), opt.first_moments()[i]);
      moments.add("v." + std::to_string(i), opt.second_moments()[i]);
    }
    moments.set_metadata("optimizer_steps", std::to_string(opt.steps()));
    if (const auto& scaler = trainer.loss_scaler(); scaler.enabled()) {  // exact resume of an fp16 run
      std::ostringstream scale;
      scale << std::setprecision(17) << scaler.scale();
      moments.set_metadata("loss_scale", scale.str());
      moments.set_metadata("loss_scale_growth_tracker", std::to_string(scaler.growth_tracker()));
    }
    moments.write(tmp / "optimizer.safetensors");
    io::write_file_atomically(  // synced and checked: a failed write (a full disk) stops the run instead of publishing an empty file
        tmp / "state.json",
        nlohmann::json{{"step", step}, {"seed", c_.seed}, {"train_text_encoder", c_.train_text_encoder}, {"precision", c_.compute_precision()}}.dump(
            2) +
            "\n",
        "checkpoint writer");
    fs::remove_all(dir);
    fs::rename(tmp, dir);  // a checkpoint is complete or absent: never half-written under its final name
    // keep the last K
    std::vector<fs::path> all;
    for (const auto& e : fs::directory_iterator(out / "checkpoints"))
      if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0 && e.path().filename().string().find(".tmp") == std::string::npos)
        all.push_back(e.path());
    std::sort(all.begin(), all.end());
    while (c_.keep_last_checkpoints > 0 && all.size() > static_cast<std::size_t>(c_.keep_last_checkpoints)) {
      fs::remove_all(all.front());
      all.erase(all.begin());
    }
  }

  long restore(const fs::path& dir, pipeline::TextToImagePipeline<B>& pipe, DreamBoothStep<B>& trainer) {
    std::ifstream in(dir / "state.json");
    const auto state = nlohmann::json::parse(in);
    io::load_parameters(*pipe.unet, io::SafetensorsFile(dir / "unet.safetensors"));
    if (c_.train_text_encoder) io::load_parameters(*pipe.text_encoder, io::SafetensorsFile(dir / "text_encoder.safetensors"));
    const io::SafetensorsFile moments(dir / "optimizer.safetensors");
    auto& opt = trainer.optimizer();
    for (std::size_t i = 0; i < opt.first_moments().size(); ++i) {
      opt.first_moments()[i].copy_from_host(moments.read_f32("m." + std::to_string(i)));
      opt.second_moments()[i].copy_from_host(moments.read_f32("v." + std::to_string(i)));
    }
    opt.set_steps(std::stol(moments.metadata().at("optimizer_steps")));
    if (auto& scaler = trainer.loss_scaler(); scaler.enabled()) {
      const auto& meta = moments.metadata();
      if (meta.count("loss_scale") && meta.count("loss_scale_growth_tracker"))
        scaler.load({std::stod(meta.at("loss_scale")), std::stol(meta.at("loss_scale_growth_tracker"))});
      else
        log("the checkpoint holds no loss scale (it was not written by an fp16 run): starting from " + std::to_string(scaler.scale()));
    }
    return state.at("step").get<long>();
  }

  // The fine-tuned model in every format model.export names (output_dir/model, model.safetensors, model.ckpt, model.nemo),
  // and NeMo's <name>.nemo in checkpoints/ when its exp_manager would write one.
  void save_result(const fs::path& out, pipeline::TextToImagePipeline<B>& pipe) {
    const auto dtype = pipeline::parse_save_precision(c_.save_precision, "model.save_precision");
    for (const auto& name : c_.export_formats) {
      const auto format = pipeline::parse_export_format(name, "model.export");
      const auto path = format == pipeline::ExportFormat::Diffusers ? out / "model" : out / ("model." + name);
      pipeline::export_pipeline(pipe, path, format, dtype);
      log("saved the fine-tuned model to " + path.string() + " (" + name + ", " + std::string(dtype_name(dtype)) + ")");
    }
    if (c_.writes_nemo_on_train_end()) save_nemo(out, pipe);
  }

  // NeMo's <log dir>/checkpoints/<name>.nemo.
  void save_nemo(const fs::path& out, pipeline::TextToImagePipeline<B>& pipe) {
    const auto path = out / "checkpoints" / ((c_.name.empty() ? std::string("model") : c_.name) + ".nemo");
    pipeline::export_nemo(pipe, path, pipeline::parse_save_precision(c_.save_precision, "model.save_precision"));
    log("saved " + path.string());
  }

  B* b_;
  TrainingConfig c_;
  ProgressLine progress_;
};

}  // namespace dreambooth::train
