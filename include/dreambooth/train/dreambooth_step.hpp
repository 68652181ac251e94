// One DreamBooth optimisation step, as diffusers' train_dreambooth.py computes it:
//   encoder_hidden_states = text_encoder(ids) (trained or frozen); x_t = sqrt(acp[t]) x0 + sqrt(1 - acp[t]) eps;
//   pred = unet(x_t, t, encoder_hidden_states); target = eps (or v); loss = PriorPreservationLoss(pred, target);
//   backward through the UNet (and the text encoder when trained); clip the global gradient norm over the trained
//   parameters; AdamW at the scheduled learning rate; zero the gradients.
// With a LoRA network (LoRA DreamBooth, as diffusers' train_dreambooth_lora.py): the UNet and text encoder are frozen
// (their gradients freed), only the adapters are optimised and clipped; train_text_encoder trains the text encoder's
// adapters.
// With fp16 compute, dynamic loss scaling (loss_scaler.hpp, as torch's GradScaler): the loss gradient is scaled before
// the backward pass, the gradients are checked and unscaled before clipping, and an overflowed step is skipped.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/models/lora_network.hpp"
#include "dreambooth/models/unet.hpp"
#include "dreambooth/schedulers/schedulers.hpp"
#include "dreambooth/train/loss_scaler.hpp"
#include "dreambooth/train/optimizer.hpp"
#include "dreambooth/train/prior_preservation_loss.hpp"

namespace dreambooth::train {

struct StepConfig {
  bool train_text_encoder = false;
  bool with_prior_preservation = true;
  double prior_loss_weight = 1.0;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  AdamWConfig optimizer;
  std::optional<double> text_encoder_lr;  // the text encoder's (or its adapters') learning rate; none: optimizer.lr
  LRSchedule schedule;
  LossScalerConfig loss_scaler;  // enabled for fp16 compute only
  // Min-SNR weighting (Hang et al. 2023, diffusers' train_dreambooth.py --snr_gamma, kohya's --min_snr_gamma): each
  // instance sample's loss times min(SNR(t), gamma) / SNR(t) (+ 1 for v-prediction), SNR(t) = acp(t) / (1 - acp(t));
  // the prior half unweighted, as diffusers does. None: unweighted.
  std::optional<double> snr_gamma;
};

template <class B>
class DreamBoothStep {
 public:
  struct Batch {
    Tensor<B> latents;              // x0 [N, C, h, w], already scaled (instance half first, then prior)
    Tensor<B> noise;                // eps [N, C, h, w]
    std::vector<int> timesteps;     // [N], each in [0, num_train_timesteps)
    std::vector<std::int32_t> ids;  // [N * 77] prompt token ids
    std::uint64_t index = 0;        // the micro-batch's index in the run: which LoRA dropout masks it draws
  };
  struct Result {
    typename PriorPreservationLoss<B>::Value loss;
    double grad_norm = 0;  // of the unscaled gradients, before clipping (inf or NaN on an overflowed step)
    double lr = 0;
    double loss_scale = 1;    // the scale this step's gradients were computed with (1 without loss scaling)
    bool skipped = false;     // the gradients overflowed: no optimizer step was taken
    bool non_finite = false;  // without loss scaling: the gradients hold NaN or infinity; no optimizer step was taken
  };

  // `lora`: the adapters to train instead of the models' weights (attached to the models), or none.
  DreamBoothStep(B& b, models::UNet2DConditionModel<B>& unet, models::CLIPTextModel<B>& text_encoder, schedulers::NoiseSchedule schedule,
                 StepConfig config, models::LoraNetwork<B>* lora = nullptr)
      : b_(&b),
        unet_(&unet),
        text_encoder_(&text_encoder),
        lora_(lora),
        schedule_(std::move(schedule)),
        config_(config),
        loss_(config.with_prior_preservation, config.prior_loss_weight),
        optimizer_(make_optimizer(b, unet, text_encoder, config, lora, text_parameters_)),
        scaler_(config.loss_scaler) {
    config_.schedule.validate();
  }

  // One optimisation step on one batch: forward_backward() then apply().
  Result step(const Batch& batch) {
    Result r;
    r.loss = forward_backward(batch, 1.0);
    const auto applied = apply();
    r.grad_norm = applied.grad_norm;
    r.lr = applied.lr;
    r.loss_scale = applied.loss_scale;
    r.skipped = applied.skipped;
    return r;
  }

  // Forward and backward of one (micro-)batch, adding micro_batch_weight * d(loss) into the gradients (the weight is
  // 1 / accumulate_grad_batches under gradient accumulation), times the dynamic loss scale when loss scaling is on;
  // returns the unweighted, unscaled loss.
  typename PriorPreservationLoss<B>::Value forward_backward(const Batch& batch, double micro_batch_weight) {
    return run(batch, micro_batch_weight, loss_, snr_weights(batch.timesteps, v_prediction(), config_.with_prior_preservation), true);
  }

  // The same loss when the instance and the prior samples cannot share one batch (aspect-ratio buckets: their pictures
  // differ in size): mse(instance) + prior_loss_weight * mse(prior) as two forward and backward passes, each adding its
  // term's gradient. Equal to forward_backward on the two batches joined, to float rounding (test_dataset).
  typename PriorPreservationLoss<B>::Value forward_backward_split(const Batch& instance, const Batch& prior, double micro_batch_weight) {
    DB_CHECK(config_.with_prior_preservation, "training step: a prior batch without prior preservation");
    const PriorPreservationLoss<B> mse(false, 1.0);
    typename PriorPreservationLoss<B>::Value v;
    v.instance = run(instance, micro_batch_weight, mse, snr_weights(instance.timesteps, v_prediction(), false), false).total;
    v.prior = run(prior, micro_batch_weight * config_.prior_loss_weight, mse, {}, true).total;
    v.total = static_cast<double>(static_cast<float>(v.instance) + static_cast<float>(config_.prior_loss_weight) * static_cast<float>(v.prior));
    return v;
  }

 private:
  bool v_prediction() const { return schedule_.config.prediction_type == "v_prediction"; }

  // last_pass: the micro-batch's last backward pass (which reports the gradients it finishes to the waiting hook).
  typename PriorPreservationLoss<B>::Value run(const Batch& batch, double micro_batch_weight, const PriorPreservationLoss<B>& loss_of,
                                               const std::vector<double>& instance_weights, bool last_pass) {
    B& b = *b_;
    const auto& s = batch.latents.shape();
    const auto N = s[0];
    DB_CHECK(static_cast<std::int64_t>(batch.timesteps.size()) == N, "training step: ", batch.timesteps.size(), " timesteps for a batch of ", N);
    DB_CHECK(batch.noise.shape() == s, "training step: noise ", batch.noise.shape().str(), " for latents ", s.str());
    const auto seq = static_cast<std::int64_t>(batch.ids.size()) / N;

    struct TrainingMode {  // LoRA dropout on for this forward and backward only (validation samples without it)
      models::LoraNetwork<B>* lora;
      ~TrainingMode() {
        if (lora) lora->set_training(false);
      }
    } training_mode{lora_};
    if (lora_) lora_->set_training(true, batch.index);

    typename models::CLIPTextModel<B>::Activations text_activations;
    const auto context = encode_prompts(batch.ids, N, seq, text_activations);

    // x_t and the target, per sample
    auto noisy = nn::empty_like(b, batch.latents);
    auto target = nn::empty_like(b, batch.latents);
    const auto per_sample = static_cast<std::size_t>(batch.latents.numel() / N);
    auto scratch = Tensor<B>::empty(b, {static_cast<std::int64_t>(per_sample)});
    const bool predict_v = v_prediction();
    std::vector<float> timesteps(static_cast<std::size_t>(N));
    for (std::int64_t n = 0; n < N; ++n) {
      const int t = batch.timesteps[static_cast<std::size_t>(n)];
      DB_CHECK(t >= 0 && t < schedule_.config.num_train_timesteps, "training step: timestep ", t, " outside [0, ",
               schedule_.config.num_train_timesteps, ")");
      timesteps[static_cast<std::size_t>(n)] = static_cast<float>(t);
      const float* x0 = nn::ptr(batch.latents) + n * static_cast<std::int64_t>(per_sample);
      const float* eps = nn::ptr(batch.noise) + n * static_cast<std::int64_t>(per_sample);
      float* xt = nn::ptr(noisy) + n * static_cast<std::int64_t>(per_sample);
      float* tg = nn::ptr(target) + n * static_cast<std::int64_t>(per_sample);
      b.scale(xt, x0, schedule_.signal(t), per_sample);
      b.scale(nn::ptr(scratch), eps, schedule_.noise(t), per_sample);
      b.accumulate(xt, nn::ptr(scratch), per_sample);
      if (predict_v) {  // v = sqrt(acp) eps - sqrt(1 - acp) x0
        b.scale(tg, eps, schedule_.signal(t), per_sample);
        b.scale(nn::ptr(scratch), x0, -schedule_.noise(t), per_sample);
        b.accumulate(tg, nn::ptr(scratch), per_sample);
      } else {
        b.copy_device(tg, eps, per_sample * sizeof(float));
      }
    }

    typename models::UNet2DConditionModel<B>::Activations activations;
    const auto pred = unet_->forward(b, noisy, timesteps, context, activations);
    Tensor<B> dpred;
    const auto loss = loss_of.forward_backward(b, pred, target, dpred, instance_weights);
    const double seed_scale = micro_batch_weight * scaler_.scale();  // scaler_.scale() is exactly 1 without loss scaling
    if (seed_scale != 1.0) b.scale(nn::ptr(dpred), nn::ptr(dpred), static_cast<float>(seed_scale), static_cast<std::size_t>(dpred.numel()));
    const auto ready = last_pass ? std::exchange(gradients_ready_, {}) : nn::GradientReadyHook<B>{};
    const auto input_grads = unet_->backward(b, dpred, activations, /*need_input_gradients=*/config_.train_text_encoder, ready);
    if (config_.train_text_encoder) text_encoder_->backward(b, input_grads.context, text_activations, ready);
    return loss;
  }

 public:
  // Clips the accumulated gradients, takes the AdamW step at the scheduled learning rate, zeroes the gradients.
  // With loss scaling: first the overflow check (a non-finite global norm skips the step: no AdamW update, the
  // optimizer's step count and so the learning-rate schedule do not advance, the scale backs off) and the unscaling.
  Result apply() {
    Result r;
    r.lr = config_.schedule.rate(optimizer_.steps(), config_.optimizer.lr);
    r.loss_scale = scaler_.scale();
    if (scaler_.enabled()) {
      const double squared = optimizer_.grad_squared_norm();  // of the scaled gradients
      if (DynamicLossScaler::overflowed(squared)) {
        scaler_.update(true);
        r.skipped = true;
        r.grad_norm = std::sqrt(squared);
        zero_grad();
        return r;
      }
      const float inverse = scaler_.inverse_scale();
      optimizer_.scale_grads(inverse);
      r.grad_norm = std::sqrt(squared) * static_cast<double>(inverse);  // exact: the scale is a power of two
      if (config_.max_grad_norm > 0) optimizer_.clip_grad_norm(config_.max_grad_norm, r.grad_norm);
      scaler_.update(false);
    } else {
      r.grad_norm = config_.max_grad_norm > 0 ? optimizer_.clip_grad_norm(config_.max_grad_norm) : std::sqrt(optimizer_.grad_squared_norm());
      if (!std::isfinite(r.grad_norm)) {  // fp32 / bf16: no update from NaN or infinite gradients, the weights stay as they are
        r.non_finite = true;
        zero_grad();
        return r;
      }
    }
    optimizer_.step(r.lr);
    zero_grad();
    return r;
  }

  // Data-parallel training: the next micro-batch is this process's last of the step, and its backward pass tells `ready`
  // each trained gradient it finishes, so that the sum over the processes (GradientSum) can start during the pass. Each
  // process's micro-batch weights divide by the number of micro-batches of the whole step (all processes'), so the sum
  // is the step's gradient.
  void report_gradients_of_next_micro_batch(nn::GradientReadyHook<B> ready) { gradients_ready_ = std::move(ready); }

  AdamW<B>& optimizer() { return optimizer_; }

  // kohya's stop_text_encoder_training: from the next step on the text encoder is frozen (no gradients, no AdamW step,
  // no part in the gradient norm; its output cached like a frozen encoder's). The UNet trains on.
  void stop_text_encoder_training() {
    if (!config_.train_text_encoder) return;
    config_.train_text_encoder = false;
    optimizer_.freeze(text_parameters_);
    text_encoder_->zero_grad();
  }
  bool trains_text_encoder() const { return config_.train_text_encoder; }
  // How many times the text encoder has run (a frozen one runs once per distinct batch of prompts).
  long text_encoder_runs() const { return text_encoder_runs_; }

  // The min-SNR weights of the instance samples (the first half of the batch when it holds the prior half too), computed
  // as diffusers' compute_snr does in float32: (sqrt(acp) / sqrt(1 - acp))^2; empty without snr_gamma.
  std::vector<double> snr_weights(const std::vector<int>& timesteps, bool v_prediction, bool with_prior_half) const {
    if (!config_.snr_gamma) return {};
    const auto instances = with_prior_half ? timesteps.size() / 2 : timesteps.size();
    std::vector<double> weights;
    for (std::size_t i = 0; i < instances; ++i) {
      const float ratio = schedule_.signal(timesteps[i]) / schedule_.noise(timesteps[i]);
      const float snr = ratio * ratio;
      const float gamma = static_cast<float>(*config_.snr_gamma);
      const float base = std::min(snr, gamma) / snr;
      weights.push_back(static_cast<double>(v_prediction ? base + 1.0f : base));
    }
    return weights;
  }
  DynamicLossScaler& loss_scaler() { return scaler_; }

 private:
  // AdamW over what trains: the LoRA adapters (the models frozen, their gradients freed), else the UNet and, when
  // trained, the text encoder; the text encoder's parameters at config.text_encoder_lr when given.
  // of_text: set to which of them are the text encoder's (or its adapters').
  static AdamW<B> make_optimizer(B& b, models::UNet2DConditionModel<B>& unet, models::CLIPTextModel<B>& text_encoder, const StepConfig& config,
                                 models::LoraNetwork<B>* lora, std::vector<bool>& of_text) {
    std::vector<nn::Param<B>*> params;
    if (lora) {
      unet.freeze();
      text_encoder.freeze();
      if constexpr (requires { b.release_cached(); }) b.release_cached();  // the freed gradients go back to the system
      params = lora->parameters(config.train_text_encoder);
      for (auto* p : params) of_text.push_back(lora->is_text_encoder_parameter(p));
    } else {
      unet.visit([&](const std::string&, nn::Param<B>& p) { params.push_back(&p); });
      of_text.assign(params.size(), false);
      if (config.train_text_encoder)
        text_encoder.visit([&](const std::string&, nn::Param<B>& p) {
          params.push_back(&p);
          of_text.push_back(true);
        });
    }
    std::vector<double> factors;
    const double text_factor = config.text_encoder_lr ? *config.text_encoder_lr / config.optimizer.lr : 1.0;
    for (const bool t : of_text) factors.push_back(t ? text_factor : 1.0);
    return AdamW<B>(b, std::move(params), config.optimizer, std::move(factors));
  }

  B* b_;
  models::UNet2DConditionModel<B>* unet_;
  models::CLIPTextModel<B>* text_encoder_;
  models::LoraNetwork<B>* lora_;
  schedulers::NoiseSchedule schedule_;
  StepConfig config_;
  PriorPreservationLoss<B> loss_;
  std::vector<bool> text_parameters_;  // per optimizer parameter: the text encoder's (or its adapters'); before optimizer_, which fills it
  AdamW<B> optimizer_;
  DynamicLossScaler scaler_;
  // A frozen text encoder's outputs for the last two distinct prompt-id batches (a step's batch, or with buckets its
  // instance and prior parts): the same prompts give the same embeddings every step, so they are computed once
  // (diffusers' --pre_compute_text_embeddings, kohya's cache of a frozen encoder's outputs).
  struct CachedContext {
    std::vector<std::int32_t> ids;
    Tensor<B> context;
  };
  std::array<CachedContext, 2> cached_;       // [0]: the most recently used
  nn::GradientReadyHook<B> gradients_ready_;  // for the next micro-batch's last backward pass
  long text_encoder_runs_ = 0;

  // context[N, seq, D] for ids[N * seq]: the text encoder's forward, or with a frozen encoder its cached output.
  Tensor<B> encode_prompts(const std::vector<std::int32_t>& ids, std::int64_t N, std::int64_t seq,
                           typename models::CLIPTextModel<B>::Activations& a) {
    if (config_.train_text_encoder) {
      ++text_encoder_runs_;
      return text_encoder_->forward(*b_, ids, N, seq, a);
    }
    if (cached_[1].context.defined() && cached_[1].ids == ids) std::swap(cached_[0], cached_[1]);
    if (!cached_[0].context.defined() || cached_[0].ids != ids) {
      ++text_encoder_runs_;
      std::swap(cached_[0], cached_[1]);  // the older entry makes room
      cached_[0] = {ids, text_encoder_->forward(*b_, ids, N, seq, a)};
    }
    return cached_[0].context;
  }

  void zero_grad() {
    optimizer_.zero_grad();
    if (lora_) {
      lora_->zero_grad();  // a frozen text encoder's adapters too (their gradients are never used)
    } else if (!config_.train_text_encoder) {
      text_encoder_->zero_grad();  // the frozen encoder's gradients are never used
    }
  }
};

}  // namespace dreambooth::train
