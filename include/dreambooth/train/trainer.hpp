// Trainer<Backend>: DreamBooth fine-tuning end to end, from its parts:
//   model_assembly.hpp          the model (a diffusers folder, a .nemo or one original file, with NeMo's component keys);
//   regularization_images.hpp   with prior preservation, the missing class images sampled by the model;
//   latent_source.hpp           each batch's latents, from the latent caches or the VAE;
//   dreambooth_step.hpp         forward, backward, clipping and AdamW for one step;
//   ema.hpp                     with model.ema, the exponential moving average of the trained weights;
//   checkpoint_store.hpp        checkpoints every N steps and at the end, exact resume from the newest good one;
//   metrics_log.hpp             one JSON line per step in output_dir/metrics.jsonl;
//   validation_grid.hpp         validation samples during training;
//   result_export.hpp           the fine-tuned model in every format model.export names (LoRA: the adapters' file);
//   models/lora_network.hpp     with model.peft, LoRA adapters trained instead of the model's weights.
// Noise and timesteps come from the counter-based RNG keyed by the micro-batch's index, so a resumed run draws exactly
// what an uninterrupted one would.
//
// Data-parallel (trainer.devices x trainer.num_nodes processes, started by mpirun; communicator.hpp): every optimizer step
// has P x accumulate_grad_batches micro-batches, numbered as one process with that accumulation would number them;
// process r trains on the r-th run of accumulate_grad_batches of them, the gradients are summed over the processes in rank
// order before clipping (in buckets, started during the last micro-batch's backward pass: gradient_sum.hpp), and every
// process takes the same AdamW step. The losses are gathered and added in micro-batch order. Rank 0 alone logs and
// writes (metrics, checkpoints, validation images, exports); the class images to sample and the latent cache entries to
// encode are shared out.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/core/fault.hpp"
#include "dreambooth/core/progress.hpp"
#include "dreambooth/data/dataset.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/train/checkpoint_store.hpp"
#include "dreambooth/train/communicator.hpp"
#include "dreambooth/train/config.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "dreambooth/train/ema.hpp"
#include "dreambooth/train/gradient_sum.hpp"
#include "dreambooth/train/latent_source.hpp"
#include "dreambooth/train/metrics_log.hpp"
#include "dreambooth/train/model_assembly.hpp"
#include "dreambooth/train/noise_offset.hpp"
#include "dreambooth/train/regularization_images.hpp"
#include "dreambooth/train/result_export.hpp"
#include "dreambooth/train/validation_grid.hpp"

namespace dreambooth::train {

namespace fs = std::filesystem;

// Log lines go to stderr, prefixed; in a data-parallel run only rank 0's (the others are muted while they train).
inline bool& log_muted() {
  static bool muted = false;
  return muted;
}
inline void log(const std::string& message) {
  if (!log_muted()) std::fprintf(stderr, "train: %s\n", message.c_str());
}

template <class B>
class Trainer {
 public:
  // `comm`: the processes that train together (trainer.devices x trainer.num_nodes of them; one by default).
  Trainer(B& b, TrainingConfig config, Communicator& comm = single_process()) : b_(&b), c_(std::move(config)), comm_(&comm) {}

  struct Summary {
    long first_step = 0, last_step = 0;
    std::vector<double> losses;  // per optimizer step run here
    std::size_t regularization_images_made = 0;
    long skipped_steps = 0;  // fp16 steps whose gradients overflowed (no optimizer update)
  };

  static constexpr std::uint64_t kNoiseStream = 1ull << 32, kTimestepStream = 2ull << 32, kLoraInitStream = 4ull << 32,  // 3 << 32: LatentSource's
      kNoiseOffsetStream = 5ull << 32, kCaptionStream = 6ull << 32,
                                 kPriorPartStreams = 1ull << 31;  // added to the noise streams of a batch's class part when it runs apart (buckets)

  Summary run() {
    B& b = *b_;
    Summary summary;
    const fs::path out = c_.output_dir;
    Communicator& comm = *comm_;
    const bool leader = comm.leader();
    struct Mute {  // the other ranks' log lines muted while run() runs
      bool before = log_muted();
      explicit Mute(bool on) { log_muted() = before || on; }
      ~Mute() { log_muted() = before; }
    } mute(!leader);
    check_processes();
    note_ignored_keys();
    // Inputs first: a bad instance folder, image, model or checkpoint stops the run before anything is written.
    auto concepts = instance_images();
    auto pipe = assemble_training_pipeline(b, c_, note);
    pipe.unet->gradient_checkpointing = c_.gradient_checkpointing;
    const auto lora = lora_network(pipe);
    CheckpointStore<B> checkpoints(out, c_.keep_last_checkpoints);
    std::optional<fs::path> resume_from;
    comm.leader_first([&] {  // rank 0 tidies the output folder (a killed run's leftovers, trainer.resume=never) first
      resume_from = checkpoint_to_resume(checkpoints);
      if (!leader) return;
      fs::create_directories(out);
      if (c_.resume == "never") start_afresh(checkpoints);
    });

    add_regularization_images(b, pipe, concepts, summary);
    const data::DreamBoothDataset dataset(
        concepts, {c_.resolution, c_.center_crop, static_cast<std::uint64_t>(c_.seed), c_.max_image_pixels, c_.random_flip, c_.buckets});
    if (dataset.bucketed()) report_buckets(dataset, pipe);
    const LatentSource<B> latents(b, c_, pipe, concepts, log, dataset.bucketed() ? &dataset.bucket_choices() : nullptr, comm);
    if (concepts.size() > 1) {
      std::size_t instances = 0, classes = 0;
      for (const auto& k : concepts) instances += k.instance.size(), classes += k.classes.size();
      const auto layout = dataset.bucketed()
                              ? "the concepts' instance images pooled, and their class images, each micro-batch from one bucket of each pool "
                                "(kohya's buckets)"
                              : "each micro-batch of " + std::to_string(c_.micro_batch_size) + " examples holds " +
                                    std::to_string(c_.micro_batch_size * static_cast<long>(dataset.images_per_example())) +
                                    " images, one of each concept per example (diffusers' multi-subject DreamBooth)";
      log(std::to_string(concepts.size()) + " concepts (" + c_.concepts_source + "): " + std::to_string(instances) + " instance images" +
          (classes ? ", " + std::to_string(classes) + " class images" : std::string()) + "; " + layout);
    }
    DreamBoothStep<B> step_runner(b, *pipe.unet, *pipe.text_encoder, schedulers::NoiseSchedule(pipe.scheduler_config), step_config(), lora.get());
    const auto trained = trained_weights(*pipe.unet, c_.train_text_encoder ? pipe.text_encoder.get() : nullptr, lora.get());
    const auto ema = moving_average(trained);
    long step = 0;
    if (resume_from) {
      step =
          CheckpointStore<B>::restore(*resume_from, RunState::of(c_, 0), trained, step_runner.optimizer(), step_runner.loss_scaler(), note, ema.get())
              .step;
      log("resumed from " + resume_from->string() + " at step " + std::to_string(step));
      if (step >= c_.max_steps)
        log("the run had finished (step " + std::to_string(step) + " of trainer.max_steps " + std::to_string(c_.max_steps) +
            "): nothing to train; raise trainer.max_steps to train further, or set trainer.resume=never to start again");
    }
    summary.first_step = step;
    std::optional<MetricsLog> metrics;  // rank 0's
    if (leader) metrics.emplace(out / "metrics.jsonl", step);
    std::optional<GradientSum<B>> gradient_sum;  // data-parallel: the sum over the processes, overlapped with the last backward pass
    if (comm.size() > 1) {
      const bool overlap = c_.overlap_gradient_sum && (comm.sums_on_another_thread() || comm.sums_device_memory());
      gradient_sum.emplace(b, comm, static_cast<std::size_t>(c_.gradient_bucket_mb * 1024 * 1024), overlap, c_.gradient_sum_bf16);
      std::ostringstream bucket_mib;
      bucket_mib << c_.gradient_bucket_mb;
      log("data-parallel: " + comm.description() + ", each with " + std::to_string(c_.accumulate_grad_batches) + " micro-batches of " +
          std::to_string(c_.micro_batch_size) + " per step: " + std::to_string(c_.micro_batch_size * c_.accumulate_grad_batches * comm.size()) +
          " examples per optimizer step; gradients summed in rank order" +
          (gradient_sum->on_device() ? " in device memory"
           : gradient_sum->staged()  ? " through host memory"
                                     : "") +
          ", in buckets of " + bucket_mib.str() + " MiB" + (overlap ? " during the backward pass" : " after the backward pass") +
          (c_.gradient_sum_bf16 ? ", sent as bf16" : ""));
      if (c_.overlap_gradient_sum && !overlap)
        note(
            "the gradient sum cannot overlap the backward pass: the MPI library does not allow calls from a second thread "
            "(MPI_THREAD_SERIALIZED); it runs after the backward pass");
    }

    warn_truncated_prompts(pipe);
    add_class_captions(concepts);
    // this process's micro-batches: `local` of every step's `accumulate` (all processes'), from `first` on
    const auto local = static_cast<std::uint64_t>(c_.accumulate_grad_batches);
    const auto accumulate = local * static_cast<std::uint64_t>(comm.size());
    const auto first = static_cast<std::uint64_t>(comm.rank()) * local;
    data::BatchLoader loader(dataset, static_cast<std::size_t>(c_.micro_batch_size), static_cast<std::uint64_t>(step) * local,
                             static_cast<std::size_t>(c_.num_workers), 4, {local, accumulate, first});
    const auto start = std::chrono::steady_clock::now();
    for (; step < c_.max_steps; ++step) {
      if (c_.stop_text_encoder_training && step >= *c_.stop_text_encoder_training && step_runner.trains_text_encoder()) {
        step_runner.stop_text_encoder_training();  // kohya's rule: once `step` optimizer steps are done
        progress_.end_line();
        log("the text encoder stops training after step " + std::to_string(step) + " (model.stop_text_encoder_training); the UNet trains on");
      }
      std::vector<double> values;  // this process's micro-batches' losses: total, instance, prior each
      if (gradient_sum) gradient_sum->begin(step_runner.optimizer().trained_parameters());
      for (std::uint64_t micro = first; micro < first + local; ++micro) {
        const auto index = static_cast<std::uint64_t>(step) * accumulate + micro;
        const auto batch = loader.next();
        if (gradient_sum && gradient_sum->background() && micro + 1 == first + local)
          step_runner.report_gradients_of_next_micro_batch(gradient_sum->hook());  // its backward starts the sum
        const auto weight = 1.0 / static_cast<double>(accumulate);
        // the instance and class images in one batch, unless buckets gave them different sizes or counts
        const auto n = batch.sources.size(), instances = batch.instances;
        const bool joint = instances == n || (batch.instance_size == batch.class_size && 2 * instances == n);
        const auto value = joint ? step_runner.forward_backward(make_input(batch, index, 0, n, pipe, latents), weight)
                                 : step_runner.forward_backward_split(make_input(batch, index, 0, instances, pipe, latents),
                                                                      make_input(batch, index, instances, n, pipe, latents), weight);
        values.insert(values.end(), {value.total, value.instance, value.prior});
      }
      if (gradient_sum) gradient_sum->finish();       // before any other call of comm: the sum's thread is done with it
      typename PriorPreservationLoss<B>::Value loss;  // the mean over the step's micro-batches (every process's), in their order
      const auto all = comm.all_gather(values);
      for (std::size_t k = 0; k + 2 < all.size(); k += 3) {
        loss.total += all[k] / static_cast<double>(accumulate);
        loss.instance += all[k + 1] / static_cast<double>(accumulate);
        loss.prior += all[k + 2] / static_cast<double>(accumulate);
      }
      const bool scaled = step_runner.loss_scaler().enabled();  // fp16: the loss scaler skips overflowed steps instead
      if (!scaled && !std::isfinite(loss.total)) stop_non_finite(checkpoints, step + 1, "the loss is " + std::to_string(loss.total));
      const auto applied = step_runner.apply();
      if (applied.non_finite) stop_non_finite(checkpoints, step + 1, "the gradients' global norm is " + std::to_string(applied.grad_norm));
      // the average follows the optimizer's steps (an fp16 step the loss scaler skipped is none, as for NeMo's EMAOptimizer)
      if (ema && !applied.skipped) ema->after_step(step_runner.optimizer().steps());
      summary.losses.push_back(loss.total);
      if (applied.skipped) ++summary.skipped_steps;
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (leader) {
        auto line = metrics_line(step + 1, loss, applied, elapsed, scaled);
        if (ema) line["ema_decay"] = ema->last_decay();
        if (gradient_sum) line["gradient_sum_wait_s"] = gradient_sum->last().waited_seconds;
        metrics->write(line);
        report_progress(step + 1, loss.total, applied.lr, static_cast<double>(step + 1 - summary.first_step) / elapsed);
      }
      fault::point("step");
      const bool last = step + 1 == c_.max_steps;
      if (!leader) continue;  // the others go on to the next step's gradient sum, where they wait for rank 0
      if (c_.create_checkpoint_callback && (last || (c_.checkpoint_every_n_steps > 0 && (step + 1) % c_.checkpoint_every_n_steps == 0))) {
        checkpoints.save(RunState::of(c_, step + 1), trained, step_runner.optimizer(), step_runner.loss_scaler(), ema.get());
        if (c_.always_save_nemo && !lora) log("saved " + save_nemo_checkpoint(c_, out, pipe).string());
      }
      if (c_.validation_every_n_steps > 0 && !c_.validation_prompts.empty() && ((step + 1) % c_.validation_every_n_steps == 0 || last)) {
        const bool average = ema && !c_.ema_validate_original_weights;  // NeMo's default: validation samples the average
        if (average) ema->swap();
        const auto grid = write_validation_grid(c_, out, step + 1, pipe);
        if (average) ema->swap();
        progress_.end_line();
        log("validation images for step " + std::to_string(step + 1) + " in " + grid.string());
      }
    }
    summary.last_step = step;
    if (summary.skipped_steps > 0)
      log(std::to_string(summary.skipped_steps) + " of " + std::to_string(step - summary.first_step) +
          " steps skipped: fp16 gradients overflowed (the loss scale backed off; final scale " + std::to_string(step_runner.loss_scaler().scale()) +
          ")");
    if (!leader) return summary;                   // rank 0 writes the results
    if (ema && !c_.ema_export_original_weights) {  // as diffusers' scripts save ema_unet.copy_to(...)'s weights
      ema->copy_to_weights();
      log("the exports hold the EMA of the trained weights (model.ema.export_original_weights=true keeps the trained ones)");
    }
    if (lora) {
      std::size_t instances = 0, classes = 0;
      for (const auto& k : concepts) instances += k.instance.size(), classes += k.classes.size();
      log("saved the LoRA adapters to " + export_lora(c_, out, *lora, instances, classes).string());
      if (!c_.lora_merged_export) return summary;
      pipeline::merge_lora(pipe, pipeline::lora_deltas(*lora), 1.0);  // the adapters folded into the weights, then removed
      lora->detach();
    }
    export_trained_model(c_, out, pipe, log);
    return summary;
  }

 private:
  static void note(const std::string& n) { log("note: " + n); }

  // LoRA training (model.peft): adapters on the UNet's target layers and, when they train, the text encoder's.
  std::unique_ptr<models::LoraNetwork<B>> lora_network(pipeline::TextToImagePipeline<B>& pipe) const {
    if (!c_.lora()) return nullptr;
    models::LoraConfig config;
    config.rank = c_.lora_rank;
    config.alpha = c_.lora_alpha;
    config.text_encoder_rank = c_.lora_text_encoder_rank;
    config.text_encoder_alpha = c_.lora_text_encoder_alpha;
    config.init = c_.lora_init;
    config.unet_targets = c_.lora_unet_target_modules();
    config.text_encoder_targets = c_.lora_text_encoder_target_modules();
    config.conv_rank = c_.lora_conv_rank;
    config.conv_alpha = c_.lora_conv_alpha;
    config.dropout = c_.lora_dropout;
    config.seed = static_cast<std::uint64_t>(c_.seed);
    config.stream = kLoraInitStream;
    auto lora = std::make_unique<models::LoraNetwork<B>>(*b_, *pipe.unet, c_.text_encoder_lora() ? pipe.text_encoder.get() : nullptr, config);
    std::size_t values = 0;
    lora->visit([&](const std::string&, nn::Param<B>& p) { values += static_cast<std::size_t>(p.shape.numel()); });
    log("LoRA (" + c_.lora_description() + "): " + std::to_string(lora->modules().size()) + " adapters, " + std::to_string(values) +
        " parameters; the model's own weights are frozen");
    if (c_.always_save_nemo) log("note: LoRA: no .nemo is written during training (the adapters are in the checkpoints)");
    return lora;
  }

  // model.ema: the exponential moving average of what trains, from its values before the first step.
  std::unique_ptr<ExponentialMovingAverage<B>> moving_average(std::vector<TrainedWeights<B>> weights) const {
    if (!c_.ema_enabled) return nullptr;
    std::vector<nn::Param<B>*> params;
    for (auto& w : weights) w.visit([&](const std::string&, nn::Param<B>& p) { params.push_back(&p); });
    log("EMA of the trained weights (" + c_.ema.description() + "); validation samples the " +
        (c_.ema_validate_original_weights ? "trained weights" : "average") + ", the exports hold the " +
        (c_.ema_export_original_weights ? "trained weights" : "average"));
    return std::make_unique<ExponentialMovingAverage<B>>(*b_, std::move(params), c_.ema);
  }

  // One note for the keys that have no effect here, grouped by reason.
  void note_ignored_keys() const {
    if (c_.ignored_keys.empty()) return;
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

  StepConfig step_config() const {
    StepConfig s;
    s.train_text_encoder = c_.lora() ? c_.text_encoder_lora() : c_.train_text_encoder;
    s.with_prior_preservation = c_.with_prior_preservation;
    s.prior_loss_weight = c_.prior_loss_weight;
    s.max_grad_norm = c_.gradient_clip_val;
    s.optimizer = {c_.lr, c_.beta1, c_.beta2, c_.eps, c_.weight_decay};
    s.text_encoder_lr = c_.text_encoder_lr;
    s.schedule = c_.schedule;
    s.loss_scaler.enabled = c_.loss_scaling();
    s.snr_gamma = c_.snr_gamma;
    if (c_.scale_lr) {
      std::ostringstream text;
      text << "model.optim.scale_lr: learning rate " << c_.lr_given << " x "
           << c_.accumulate_grad_batches * c_.micro_batch_size * c_.devices * c_.num_nodes << " instance images per optimizer step = " << c_.lr;
      log(text.str());
    }
    if (c_.compute_precision() != "fp32")
      log("precision " + c_.compute_precision() + ": GEMMs and convolutions in " + c_.compute_precision() +
          ", weights, gradients and AdamW state in fp32" +
          (c_.loss_scaling() ? ", dynamic loss scaling (initial scale " + std::to_string(static_cast<long>(s.loss_scaler.init_scale)) + ")" : ""));
    return s;
  }

  // The checkpoint to resume from, decided (and a wrong one refused) before anything is written:
  //   trainer.resume=never: none; trainer.resume=PATH (or NeMo's exp_manager.resume_from_checkpoint): that one;
  //   auto: as NeMo's exp_manager decides: with resume_if_exists, the newest good one in output_dir/checkpoints (none: a
  //   fresh start unless resume_ignore_no_checkpoint is false); without it, an output_dir that already holds
  //   checkpoints is refused rather than overwritten.
  // A checkpoint trained with another seed, text-encoder setting, precision or model is refused, naming the key.
  std::optional<fs::path> checkpoint_to_resume(const CheckpointStore<B>& checkpoints) const {
    if (c_.resume == "never") return std::nullopt;
    const bool from_key = c_.resume != "auto";
    const std::string key = from_key ? "trainer.resume" : "exp_manager.resume_from_checkpoint";
    const std::string given = from_key ? c_.resume : c_.resume_from_checkpoint;
    std::optional<fs::path> chosen;
    if (!given.empty()) {
      const fs::path p = given;
      if (!fs::is_directory(p) || !fs::exists(p / "state.json"))
        fail(key, ": ", p.string(), " is not a checkpoint of this trainer (a step-N folder with state.json); ",
             fs::is_regular_file(p) ? "a NeMo / Lightning .ckpt holds Lightning's optimizer state, which cannot be resumed here"
                                    : "it does not exist");
      if (const auto why = CheckpointStore<B>::damage(p); !why.empty()) fail(key, ": checkpoint ", p.string(), " is damaged: ", why);
      chosen = p;
    } else {
      const auto latest = checkpoints.latest_good(note);
      if (!c_.resume_if_exists) {
        if (!checkpoints.list().empty())
          fail("output directory ", c_.output_dir, " holds checkpoints of an earlier run (", checkpoints.list().back().filename().string(),
               ") and exp_manager.resume_if_exists is false: choose another directory, resume, or start afresh with trainer.resume=never");
        return std::nullopt;
      }
      if (!latest && !c_.resume_ignore_no_checkpoint)
        fail("exp_manager.resume_ignore_no_checkpoint is false and ", checkpoints.folder().string(), " holds no checkpoint to resume from");
      chosen = latest;
    }
    if (chosen)
      CheckpointStore<B>::require_compatible(
          *chosen, RunState::from_json(io::read_json(*chosen / "state.json", "checkpoint state"), *chosen / "state.json"), RunState::of(c_, 0));
    return chosen;
  }

  // trainer.resume=never: an earlier run's checkpoints and metrics in output_dir are removed.
  void start_afresh(const CheckpointStore<B>& checkpoints) const {
    const auto earlier = checkpoints.list().size();
    const fs::path metrics = fs::path(c_.output_dir) / "metrics.jsonl";
    if (earlier == 0 && !fs::exists(metrics)) return;
    checkpoints.remove_all();
    fs::remove(metrics);
    log("trainer.resume=never: removed " + std::to_string(earlier) + " checkpoints and the metrics of an earlier run in " + c_.output_dir);
  }

  // Every concept's instance images, checked before anything is written: a missing folder, a folder without images, an
  // unreadable image or an empty caption file stops the run, by name (the instance captions are read here, once, into
  // captions_). The class images follow (add_regularization_images).
  std::vector<data::ConceptImages> instance_images() {
    std::vector<data::ConceptImages> concepts;
    if (c_.captions.active()) captions_.emplace();
    for (const auto& k : c_.concepts) {
      auto images = data::list_images(k.instance_dir, k.key("instance_dir"));
      if (images.empty()) fail(k.key("instance_dir"), " ", k.instance_dir, " holds no JPEG or PNG images");
      for (const auto& path : images) (void)data::load_image(path, c_.max_image_pixels);
      if (captions_) instance_caption_files_ += captions_->add(images, c_.captions.extension, k.instance_prompt);
      concepts.push_back({std::move(images), {}, k.instance_prompt, k.regularization_prompt});
    }
    return concepts;
  }

  // The class images for prior preservation (none without it), sampled first where a concept's folder lacks some: by
  // model.restore_from_path's model when it is not the one trained (loaded only when it has images to make).
  void add_regularization_images(B& b, pipeline::TextToImagePipeline<B>& pipe, std::vector<data::ConceptImages>& concepts, Summary& summary) const {
    if (!c_.with_prior_preservation) {
      log("prior preservation is off: regularization settings and restore_from_path's sampling role are ignored");
      return;
    }
    const bool own = c_.restore_from_path.empty() ||
                     (c_.base_model_path.empty() && c_.unet_from_pretrained.empty() && c_.vae_from_pretrained.empty() && c_.text_target.empty());
    std::optional<pipeline::TextToImagePipeline<B>> sampler;
    for (const auto& k : c_.concepts) {
      if (own) {
        summary.regularization_images_made += ensure_regularization_images(pipe, c_, k, log, *comm_);
      } else if (data::list_images(k.regularization_dir, k.key("regularization_dir"), /*missing_ok=*/true).size() <
                 static_cast<std::size_t>(k.num_reg_images)) {
        if (!sampler) sampler.emplace(pipeline::load_pipeline(b, sampler_pipeline_spec(c_, pipe.tokenizer_files, note)));
        summary.regularization_images_made += ensure_regularization_images(*sampler, c_, k, log, *comm_);
      }
    }
    for (std::size_t i = 0; i < concepts.size(); ++i) {
      const auto& k = c_.concepts[i];
      auto images = data::list_images(k.regularization_dir, k.key("regularization_dir"));
      images.resize(std::min(images.size(), static_cast<std::size_t>(k.num_reg_images)));
      for (const auto& path : images) (void)data::load_image(path, c_.max_image_pixels);  // a corrupt image stops the run now, by name
      concepts[i].classes = std::move(images);
    }
  }

  // model.data's captions (kohya's): each image's caption file or its concept's prompt, read once (the instance images'
  // in instance_images(), the class images' here); none when captions are off (every sample then takes its concept's
  // prompt).
  void add_class_captions(const std::vector<data::ConceptImages>& concepts) {
    const auto& cc = c_.captions;
    if (!captions_) return;
    std::size_t instances = 0, classes = 0, class_files = 0;
    for (const auto& k : concepts) {
      class_files += captions_->add(k.classes, cc.extension, k.class_prompt);
      instances += k.instance.size(), classes += k.classes.size();
    }
    std::ostringstream note;
    note << "captions:";
    if (!cc.extension.empty())
      note << " " << instance_caption_files_ << " of " << instances << " instance images"
           << (classes == 0 ? "" : " and " + std::to_string(class_files) + " of " + std::to_string(classes) + " class images")
           << " have a caption file (" << cc.extension << "), the others their folder's prompt;";
    note << " caption dropout " << cc.dropout_rate << ", shuffle " << (cc.shuffle ? "on" : "off") << " (keep " << cc.keep_tokens
         << " leading tags), tag dropout " << cc.tag_dropout_rate;
    log(note.str());
  }

  // With aspect-ratio buckets: each bucket's image counts, and the check that the UNet takes every bucket's latents (each
  // side a multiple of the VAE's factor times 2 per UNet down-sampling).
  void report_buckets(const data::DreamBoothDataset& dataset, const pipeline::TextToImagePipeline<B>& pipe) const {
    const auto factor = pipe.vae->config.downscale() * (std::int64_t{1} << (pipe.unet->config.block_out_channels.size() - 1));
    std::ostringstream text;
    text << "aspect-ratio buckets (kohya's; steps " << c_.buckets.steps
         << (c_.buckets.no_upscale ? ", no upscaling"
                                   : ", sides " + std::to_string(c_.buckets.min_size) + " to " + std::to_string(c_.buckets.max_size))
         << "):";
    for (int pool = 0; pool < 2; ++pool) {
      const auto counts = dataset.bucket_counts(pool);
      if (counts.empty()) continue;
      text << (pool == 0 ? " instance images" : "; class images");
      for (const auto& [size, count] : counts) {
        text << " " << size.str() << " x" << count;
        if (size.width % factor || size.height % factor)
          fail("model.data.enable_bucket: the bucket ", size.str(), " (", count, pool == 0 ? " instance" : " class", " images) is not a multiple of ",
               factor, " pixels on each side, which this UNet needs (its VAE's factor ", pipe.vae->config.downscale(),
               " times 2 per down-sampling); ", "give model.data.bucket_reso_steps and min_bucket_reso as multiples of ", factor);
      }
    }
    log(text.str());
  }

  // A warning for each concept prompt longer than the text encoder's window (the tokenizer truncates it).
  void warn_truncated_prompts(pipeline::TextToImagePipeline<B>& pipe) const {
    for (const auto& k : c_.concepts)
      for (const auto* prompt : {&k.instance_prompt, &k.regularization_prompt}) {
        if (prompt->empty()) continue;
        const auto encoded = pipe.tokenizer->encode(*prompt);
        if (encoded.truncated())
          log("warning: the prompt \"" + *prompt + "\" has " + std::to_string(encoded.token_count) + " tokens and was truncated");
      }
  }

  // The token ids of `prompt`, tokenized once per prompt.
  const std::vector<std::int32_t>& prompt_ids(const pipeline::TextToImagePipeline<B>& pipe, const std::string& prompt) const {
    auto it = prompt_ids_.find(prompt);
    if (it == prompt_ids_.end()) it = prompt_ids_.emplace(prompt, pipe.tokenizer->encode(prompt).ids).first;
    return it->second;
  }

  // The step's input for images [begin, end) of micro-batch `index` (all of it, or with buckets its instance or its class
  // part): latents, noise, timesteps t uniform in [0, num_train_timesteps) (numbered by the image's place in the batch)
  // and each sample's prompt ids. The noise of a part that starts after the first image comes from its own streams
  // (kPriorPartStreams apart).
  typename DreamBoothStep<B>::Batch make_input(const data::DreamBoothDataset::Batch& batch, std::uint64_t index, std::size_t begin, std::size_t end,
                                               const pipeline::TextToImagePipeline<B>& pipe, const LatentSource<B>& latents) const {
    B& b = *b_;
    typename DreamBoothStep<B>::Batch input;
    input.index = index;
    input.latents = latents.latents(batch, index, begin, end);
    input.noise = nn::empty_like(b, input.latents);
    const auto seed = static_cast<std::uint64_t>(c_.seed), part = begin == 0 ? 0 : kPriorPartStreams;
    b.fill_normal(nn::ptr(input.noise), static_cast<std::size_t>(input.noise.numel()), seed, kNoiseStream + part + index, 0.0f, 1.0f);
    if (c_.noise_offset > 0) add_noise_offset(b, input.noise, c_.noise_offset, seed, kNoiseOffsetStream + part + index);
    const int train_timesteps = pipe.scheduler_config.num_train_timesteps;
    for (auto k = static_cast<std::int64_t>(begin); k < static_cast<std::int64_t>(end); ++k) {
      const float u = rng::uniform(static_cast<std::uint64_t>(c_.seed), kTimestepStream + index, static_cast<std::uint64_t>(k));
      input.timesteps.push_back(std::min(train_timesteps - 1, static_cast<int>(u * static_cast<float>(train_timesteps))));
    }
    for (std::size_t k = begin; k < end; ++k) {
      if (captions_) {  // this sample's caption, varied by its own draws
        data::CaptionDraws draws{static_cast<std::uint64_t>(c_.seed), kCaptionStream + index, k};
        const auto ids = pipe.tokenizer->encode(data::process_caption(captions_->at(batch.sources[k]), c_.captions, draws)).ids;
        input.ids.insert(input.ids.end(), ids.begin(), ids.end());
        continue;
      }
      const auto& ids = prompt_ids(pipe, batch.prompts[k]);  // its concept's instance or class prompt
      input.ids.insert(input.ids.end(), ids.begin(), ids.end());
    }
    return input;
  }

  static nlohmann::json metrics_line(long step, const typename PriorPreservationLoss<B>::Value& loss,
                                     const typename DreamBoothStep<B>::Result& applied, double elapsed, bool loss_scaling) {
    nlohmann::json line = {{"step", step},
                           {"loss", loss.total},
                           {"instance_loss", loss.instance},
                           {"prior_loss", loss.prior},
                           {"lr", applied.lr},
                           {"grad_norm", applied.grad_norm},
                           {"elapsed_s", elapsed}};
    if (loss_scaling) {  // fp16 only, so that the other modes' lines are unchanged
      line["grad_scale"] = applied.loss_scale;
      line["skipped"] = applied.skipped;
    }
    return line;
  }

  void report_progress(long step, double loss, double lr, double rate) {
    if (step % std::max(1L, c_.log_every_n_steps) != 0 && step != c_.max_steps) return;
    char text[160];
    std::snprintf(text, sizeof text, "train: step %ld/%ld  loss %.4f  lr %.2e  %.2f it/s  ETA %.0f s", step, c_.max_steps, loss, lr, rate,
                  static_cast<double>(c_.max_steps - step) / rate);
    progress_.update(text, step == c_.max_steps);
  }

  // A non-finite loss or gradient: the run stops before any update from it, naming the step; checkpoints already written
  // stay, and nothing more is written.
  [[noreturn]] void stop_non_finite(const CheckpointStore<B>& checkpoints, long step, const std::string& what) {
    const auto all = comm_->leader() ? checkpoints.list() : std::vector<fs::path>{};  // (list() tidies the folder: rank 0's)
    progress_.end_line();
    fail("step ", step, ": ", what, "; the run stops before updating the weights with it. ",
         all.empty() ? std::string("No checkpoint was written. ")
                     : "The last checkpoint, " + all.back().string() + ", stays (resume continues from it). ",
         "A lower model.optim.lr or gradient clipping (trainer.gradient_clip_val) usually keeps training finite");
  }

  // trainer.devices x trainer.num_nodes must be the number of processes running.
  void check_processes() const {
    const long wanted = c_.processes(), running = comm_->size();
    if (wanted != running) {
      if (running == 1)
        fail("trainer.devices x trainer.num_nodes = ", c_.devices, " x ", c_.num_nodes, " = ", wanted,
             " processes, but this is one process: start it with mpirun -np ", wanted, " (or set trainer.devices=1 trainer.num_nodes=1)");
      fail("the launcher started ", running, " processes, but trainer.devices x trainer.num_nodes = ", c_.devices, " x ", c_.num_nodes, " = ", wanted,
           ": set trainer.devices to the processes per node (", running, " over trainer.num_nodes ", c_.num_nodes, " nodes)");
    }
  }

  B* b_;
  TrainingConfig c_;
  Communicator* comm_;
  ProgressLine progress_;
  std::optional<data::Captions> captions_;                               // every image's caption (instance_images(), add_class_captions())
  std::size_t instance_caption_files_ = 0;                               // instance images with a caption file
  mutable std::map<std::string, std::vector<std::int32_t>> prompt_ids_;  // token ids by prompt
};

}  // namespace dreambooth::train
