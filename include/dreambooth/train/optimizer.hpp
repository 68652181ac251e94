// AdamW over a set of parameters (one moment arena each for m and v) and gradient clipping by global norm (the
// learning-rate schedules are lr_schedule.hpp).
#pragma once

#include <cmath>
#include <numbers>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/arena.hpp"
#include "dreambooth/nn/modules.hpp"
#include "dreambooth/train/lr_schedule.hpp"

namespace dreambooth::train {

struct AdamWConfig {
  double lr = 5e-6;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

template <class B>
class AdamW {
 public:
  // lr_factors: each parameter's learning rate relative to the scheduled one (a parameter group's lr / the base lr, as
  // torch's param groups under one schedule); empty: 1 for all.
  AdamW(B& b, std::vector<nn::Param<B>*> params, AdamWConfig config, std::vector<double> lr_factors = {})
      : backend_(&b), params_(std::move(params)), config_(config), lr_factors_(std::move(lr_factors)) {
    if (lr_factors_.empty()) lr_factors_.assign(params_.size(), 1.0);
    DB_CHECK(lr_factors_.size() == params_.size(), "AdamW: ", lr_factors_.size(), " learning-rate factors for ", params_.size(), " parameters");
    frozen_.assign(params_.size(), false);
    std::vector<std::pair<Shape, DType>> plan;
    for (auto* p : params_) plan.emplace_back(p->shape, DType::F32);
    m_arena_.emplace(b, Arena<B>::plan(plan), "AdamW first moments");
    v_arena_.emplace(b, Arena<B>::plan(plan), "AdamW second moments");
    for (auto* p : params_) {
      m_.push_back(m_arena_->allocate(p->shape));
      v_.push_back(v_arena_->allocate(p->shape));
      m_.back().set_zero();
      v_.back().set_zero();
    }
  }

  // Scales all gradients so that their global L2 norm is at most max_norm (torch's clip_grad_norm_, 1e-6 guard);
  // returns the norm before clipping.
  double clip_grad_norm(double max_norm) {
    const double norm = std::sqrt(grad_squared_norm());
    clip_grad_norm(max_norm, norm);
    return norm;
  }

  // The same clipping when the global norm is already known (the loss scaler computed it).
  void clip_grad_norm(double max_norm, double norm) {
    const double coef = std::min(1.0, max_norm / (norm + 1e-6));
    if (coef < 1.0) scale_grads(static_cast<float>(coef));
  }

  // Stops updating the parameters marked in `frozen` (one flag per parameter, in order): from now on they have no step,
  // no weight decay, and no part in the gradient norm, as torch's AdamW and clip_grad_norm_ skip a parameter whose
  // gradient is None (kohya's stop_text_encoder_training). Their moments stay as they were.
  void freeze(const std::vector<bool>& frozen) {
    DB_CHECK(frozen.size() == params_.size(), "AdamW: ", frozen.size(), " flags for ", params_.size(), " parameters");
    for (std::size_t i = 0; i < frozen.size(); ++i) frozen_[i] = frozen_[i] || frozen[i];
  }

  // sum of the squares of every gradient element (in double); inf or NaN when any gradient is not finite.
  // A backend with squared_norm_sum (the CUDA one) reduces all tensors with one synchronisation instead of one each.
  double grad_squared_norm() {
    if constexpr (requires(B & b, std::span<const float* const> ptrs, std::span<const std::size_t> sizes) { b.squared_norm_sum(ptrs, sizes); }) {
      std::vector<const float*> pointers;
      std::vector<std::size_t> sizes;
      for (std::size_t i = 0; i < params_.size(); ++i) {
        if (frozen_[i]) continue;
        pointers.push_back(nn::ptr(params_[i]->grad));
        sizes.push_back(static_cast<std::size_t>(params_[i]->grad.numel()));
      }
      return backend_->squared_norm_sum(std::span<const float* const>(pointers), std::span<const std::size_t>(sizes));
    } else {
      double sq = 0;
      for (std::size_t i = 0; i < params_.size(); ++i)
        if (!frozen_[i]) sq += backend_->squared_norm(nn::ptr(params_[i]->grad), static_cast<std::size_t>(params_[i]->grad.numel()));
      return sq;
    }
  }

  // The parameters that train (not frozen), in order: what data-parallel training sums over the processes.
  std::vector<nn::Param<B>*> trained_parameters() const {
    std::vector<nn::Param<B>*> trained;
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (!frozen_[i]) trained.push_back(params_[i]);
    return trained;
  }

  // Multiplies every gradient by `factor`.
  void scale_grads(float factor) {
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (!frozen_[i])
        backend_->scale(nn::ptr(params_[i]->grad), nn::ptr(params_[i]->grad), factor, static_cast<std::size_t>(params_[i]->grad.numel()));
  }

  void step(double lr) {
    ++steps_;
    const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(steps_));
    const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(steps_));
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (frozen_[i]) continue;
      auto* p = params_[i];
      backend_->adamw_step(nn::ptr(p->value), nn::ptr(p->grad), nn::ptr(m_[i]), nn::ptr(v_[i]), static_cast<std::size_t>(p->value.numel()),
                           static_cast<float>(lr * lr_factors_[i]), static_cast<float>(config_.beta1), static_cast<float>(config_.beta2),
                           static_cast<float>(config_.eps), static_cast<float>(config_.weight_decay), static_cast<float>(bc1),
                           static_cast<float>(bc2));
    }
  }

  void zero_grad() {
    for (auto* p : params_) p->grad.set_zero();
  }

  long steps() const { return steps_; }
  const std::vector<Tensor<B>>& first_moments() const { return m_; }
  const std::vector<Tensor<B>>& second_moments() const { return v_; }
  std::vector<Tensor<B>>& first_moments() { return m_; }
  std::vector<Tensor<B>>& second_moments() { return v_; }
  void set_steps(long s) { steps_ = s; }

 private:
  B* backend_;
  std::vector<nn::Param<B>*> params_;
  AdamWConfig config_;
  std::vector<double> lr_factors_;
  std::vector<bool> frozen_;  // parameters no longer updated (freeze())
  std::optional<Arena<B>> m_arena_, v_arena_;
  std::vector<Tensor<B>> m_, v_;
  long steps_ = 0;
};

}  // namespace dreambooth::train
