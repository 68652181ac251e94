// An exponential moving average (EMA) of the trained weights, as diffusers' EMAModel (diffusers.training_utils, what
// train_text_to_image.py's --use_ema runs) and NeMo's EMA callback (exp_manager.ema) compute it:
//   the average starts as a copy of the weights before training; after an optimizer step k (1-based) with
//   (k - 1) % every_n_steps == 0 (NeMo's rule; every step by default), update u (1-based) moves it toward the weights:
//   shadow -= (1 - decay_u) * (shadow - weights)   (EMAModel.step; NeMo's decay * shadow + (1 - decay) * weights is the
//   same update, rounded differently).
// decay_u: ema_schedule.hpp.
// The average is what validation samples and what the exports hold unless asked otherwise (trainer.hpp), and it is part of
// every checkpoint (checkpoint_store.hpp), so that a resumed run continues it exactly.
#pragma once

#include <algorithm>
#include <optional>
#include <vector>

#include "dreambooth/core/arena.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/nn/modules.hpp"
#include "dreambooth/train/ema_schedule.hpp"

namespace dreambooth::train {

template <class B>
class ExponentialMovingAverage {
 public:
  // The average of `params` (the trained weights), starting as their copy.
  ExponentialMovingAverage(B& b, std::vector<nn::Param<B>*> params, EmaConfig config)
      : b_(&b), params_(std::move(params)), config_(std::move(config)) {
    std::vector<std::pair<Shape, DType>> plan;
    for (auto* p : params_) plan.emplace_back(p->shape, DType::F32);
    arena_.emplace(b, Arena<B>::plan(plan), "EMA of the weights");
    for (auto* p : params_) {
      shadows_.push_back(arena_->allocate(p->shape));
      copy(shadows_.back(), p->value);
    }
  }

  const EmaConfig& config() const { return config_; }

  // After optimizer step `step` (1-based): the update, when the step is one that has one.
  void after_step(long step) {
    if (config_.updates_after(step)) update();
  }

  // One update toward the weights (EMAModel.step).
  void update() {
    ++updates_;
    last_decay_ = config_.decay_at(updates_);
    const auto one_minus_decay = static_cast<float>(1.0 - last_decay_);
    for (std::size_t i = 0; i < params_.size(); ++i)
      b_->ema_update(nn::ptr(shadows_[i]), nn::ptr(params_[i]->value), static_cast<std::size_t>(shadows_[i].numel()), one_minus_decay);
  }

  // Exchanges the average and the weights (NeMo's swap_model_weights): once to sample or export the average, again to
  // train on. Through one scratch tensor the size of the largest parameter.
  void swap() {
    std::int64_t largest = 0;
    for (auto* p : params_) largest = std::max(largest, p->value.numel());
    auto scratch = Tensor<B>::empty(*b_, {largest});
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const auto bytes = static_cast<std::size_t>(shadows_[i].numel()) * sizeof(float);
      b_->copy_device(nn::ptr(scratch), nn::ptr(params_[i]->value), bytes);
      b_->copy_device(nn::ptr(params_[i]->value), nn::ptr(shadows_[i]), bytes);
      b_->copy_device(nn::ptr(shadows_[i]), nn::ptr(scratch), bytes);
    }
    swapped_ = !swapped_;
  }
  bool swapped() const { return swapped_; }

  // The weights replaced by the average for good (EMAModel.copy_to), at the end of training.
  void copy_to_weights() {
    for (std::size_t i = 0; i < params_.size(); ++i) copy(params_[i]->value, shadows_[i]);
  }

  long updates() const { return updates_; }
  void set_updates(long updates) { updates_ = updates; }
  double last_decay() const { return last_decay_; }
  std::vector<Tensor<B>>& shadows() { return shadows_; }
  const std::vector<Tensor<B>>& shadows() const { return shadows_; }

 private:
  void copy(Tensor<B>& to, const Tensor<B>& from) {
    DB_CHECK(to.numel() == from.numel(), "EMA: ", to.numel(), " values for a weight of ", from.numel());
    b_->copy_device(nn::ptr(to), nn::ptr(from), static_cast<std::size_t>(to.numel()) * sizeof(float));
  }

  B* b_;
  std::vector<nn::Param<B>*> params_;
  EmaConfig config_;
  std::optional<Arena<B>> arena_;
  std::vector<Tensor<B>> shadows_;
  long updates_ = 0;
  double last_decay_ = 0;
  bool swapped_ = false;
};

}  // namespace dreambooth::train
