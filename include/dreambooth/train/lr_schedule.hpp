// Learning-rate schedules: diffusers' get_scheduler (constant, constant_with_warmup, linear, cosine,
// cosine_with_restarts with num_cycles hard restarts, polynomial with power and lr_end 1e-7) and NeMo's
// (nemo.core.optim.lr_scheduler: WarmupPolicy, WarmupHoldPolicy, SquareAnnealing, SquareRootAnnealing, CosineAnnealing,
// NoamAnnealing, NoamHoldAnnealing, WarmupAnnealing, InverseSquareRootAnnealing, T5InverseSquareRootAnnealing,
// PolynomialDecayAnnealing, PolynomialHoldDecayAnnealing), with their formulas and step convention: the rate of optimizer
// step s (0-based) is evaluated at s, as torch's LambdaLR and Lightning's per-step scheduler.step() do.
//
// NeMo's shared warmup (its Warmup* policies): for W > 0 and s <= W the rate is lr (s + 1) / (W + 1). Past max_steps M
// every NeMo schedule gives min_lr. NeMo fills max_steps from trainer.max_steps, which the trainer does too.
#pragma once

#include <algorithm>
#include <cmath>
#include <numbers>
#include <optional>
#include <string>

#include "dreambooth/core/error.hpp"

namespace dreambooth::train {

struct LRSchedule {
  LRSchedule() = default;
  LRSchedule(std::string schedule, long warmup, long max_steps) : name(std::move(schedule)), warmup_steps(warmup), total_steps(max_steps) {}

  std::string name = "constant";
  long warmup_steps = 0;
  long total_steps = 1;  // max_steps
  // NeMo's keys (unset: the scheduler's default)
  std::optional<double> warmup_ratio, hold_steps, hold_ratio, constant_steps, constant_ratio;
  std::optional<double> min_lr;  // unset: 0, or 1e-5 for SquareAnnealing (NeMo's defaults)
  double decay_rate = 0.5;
  double power = 1.0;
  bool cycle = false;
  std::optional<double> d_model;
  long num_cycles = 1;  // cosine_with_restarts: diffusers' --lr_num_cycles
  // polynomial's final rate: diffusers' get_scheduler leaves get_polynomial_decay_schedule_with_warmup's default
  static constexpr double kPolynomialEnd = 1e-7;

  static bool is_diffusers(const std::string& n) {
    return n == "constant" || n == "constant_with_warmup" || n == "linear" || n == "cosine" || n == "cosine_with_restarts" || n == "polynomial";
  }
  static bool is_nemo(const std::string& n) {
    for (const char* s : {"WarmupPolicy", "WarmupHoldPolicy", "SquareAnnealing", "SquareRootAnnealing", "CosineAnnealing", "NoamAnnealing",
                          "NoamHoldAnnealing", "WarmupAnnealing", "InverseSquareRootAnnealing", "T5InverseSquareRootAnnealing",
                          "PolynomialDecayAnnealing", "PolynomialHoldDecayAnnealing"})
      if (n == s) return true;
    return false;
  }

  // diffusers' multiplier of the base rate (its schedules only; polynomial's for a base rate of 1).
  double factor(long step) const {
    const double s = static_cast<double>(step), w = static_cast<double>(warmup_steps), t = static_cast<double>(total_steps);
    if (!is_diffusers(name)) {
      if (is_nemo(name)) return rate(step, 1.0);
      fail("learning-rate schedule \"", name, "\" is not supported (", supported(), ")");
    }
    if (name == "constant") return 1.0;
    if (step < warmup_steps) return s / std::max(1.0, w);
    if (name == "constant_with_warmup") return 1.0;
    const double progress = (s - w) / std::max(1.0, t - w);
    if (name == "linear") return std::max(0.0, (t - s) / std::max(1.0, t - w));
    if (name == "polynomial") return rate(step, 1.0);
    if (name == "cosine_with_restarts") {  // num_cycles hard restarts, each a half cosine
      if (progress >= 1.0) return 0.0;
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * std::fmod(static_cast<double>(num_cycles) * progress, 1.0))));
    }
    return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 2.0 * 0.5 * progress)));  // cosine, half a cycle
  }

  // The learning rate of optimizer step `step` for the base rate `lr`.
  double rate(long step, double lr) const {
    if (name == "polynomial") {  // get_polynomial_decay_schedule_with_warmup: from lr to lr_end over the steps after warmup
      if (!(lr > kPolynomialEnd)) fail("learning-rate schedule polynomial: the learning rate ", lr, " must exceed its end rate ", kPolynomialEnd);
      if (step < warmup_steps) return lr * static_cast<double>(step) / std::max(1.0, static_cast<double>(warmup_steps));
      if (step > total_steps) return kPolynomialEnd;
      const double remaining = 1.0 - static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
      return (lr - kPolynomialEnd) * std::pow(remaining, power) + kPolynomialEnd;
    }
    if (is_diffusers(name)) return lr * factor(step);
    if (!is_nemo(name)) fail("learning-rate schedule \"", name, "\" is not supported (", supported(), ")");
    const double s = static_cast<double>(step), M = static_cast<double>(total_steps);
    const double m = min_lr.value_or(name == "SquareAnnealing" ? 1e-5 : 0.0);
    const double W = warmup_ratio ? std::floor(*warmup_ratio * M) : static_cast<double>(warmup_steps);
    const auto warmup = [&] { return lr * (s + 1.0) / (W + 1.0); };
    const bool in_warmup = W > 0 && s <= W;
    // WarmupHoldPolicy's end of the hold phase
    const double hold_end = hold_steps ? *hold_steps + W : hold_ratio ? std::floor(*hold_ratio * M) + W : 0.0;
    const auto poly = [&](double x, double D) {
      if (cycle) {
        D *= x == 0 ? 1.0 : std::ceil(x / D);
      } else {
        x = std::min(x, D);
      }
      return (lr - m) * std::pow(1.0 - x / D, power) + m;
    };
    if (name == "NoamAnnealing") {
      if (!d_model) fail("learning-rate schedule NoamAnnealing needs model.optim.sched.d_model");
      if (lr < m) fail("learning-rate schedule NoamAnnealing: min_lr ", m, " exceeds the learning rate ", lr);
      const double sp = std::max(1.0, s);
      const double out = W > 0 ? lr * std::pow(*d_model, -0.5) * std::min(std::pow(sp, -0.5), sp * std::pow(W, -1.5))
                               : lr * std::pow(*d_model, -0.5) * std::pow(sp, -0.5);
      return sp > W ? std::max(out, m) : out;
    }
    if (name == "T5InverseSquareRootAnnealing") {  // SquareRootConstantPolicy: the base rate is not used
      const double C = constant_ratio ? std::floor(*constant_ratio * M) : constant_steps.value_or(0.0);
      if (C <= 0) fail("learning-rate schedule T5InverseSquareRootAnnealing needs constant_steps or constant_ratio");
      if (s <= C) return 1.0 / std::sqrt(C);
      if (s > M) return m;
      return 1.0 / std::sqrt(s);
    }
    if (name == "CosineAnnealing") {  // WarmupAnnealHoldPolicy
      if (lr < m) fail("learning-rate schedule CosineAnnealing: min_lr ", m, " exceeds the learning rate ", lr);
      const double C = constant_ratio ? std::floor(*constant_ratio * M) : constant_steps.value_or(0.0);
      const double D = M - (C + W);
      if (s > M) return m;
      if (C > 0) {  // every phase through _linear_warmup_with_cosine_annealing
        if (W > 0 && s <= W) return lr * s / W;
        if (s > W + D) return m;
        const double r = (s - W) / D;
        return m + (lr - m) * 0.5 * (std::cos(std::numbers::pi * r) + 1.0);
      }
      if (in_warmup) return warmup();
      return (lr - m) * 0.5 * (1.0 + std::cos(std::numbers::pi * (s - W) / (M - W))) + m;
    }
    const bool hold_policy = name == "WarmupHoldPolicy" || name == "NoamHoldAnnealing" || name == "PolynomialHoldDecayAnnealing";
    if (in_warmup) return warmup();
    if (hold_policy && s >= W && s < hold_end) return lr;
    if (s > M) return m;
    if (name == "WarmupPolicy" || name == "WarmupHoldPolicy") return lr;
    if (name == "SquareAnnealing") return std::max(lr * std::pow((M - s) / (M - W), 2.0), m);
    if (name == "SquareRootAnnealing") return std::max(lr * std::sqrt((M - s) / M), m);
    if (name == "WarmupAnnealing") return m + (1.0 - (s - W) / (M - W)) * (lr - m);
    if (name == "InverseSquareRootAnnealing") return lr / std::sqrt((s + 1.0) / (W + 1.0));
    if (name == "PolynomialDecayAnnealing") return poly(s - W, M - W);
    if (name == "PolynomialHoldDecayAnnealing") return poly(s - hold_end, M - std::max(W, hold_end));
    // NoamHoldAnnealing's decay
    if (W <= 0) fail("learning-rate schedule NoamHoldAnnealing needs warmup_steps or warmup_ratio");
    const double h = hold_end > 0 ? hold_end - W : 0.0;
    return std::max(lr * std::max(1.0, std::pow(W, decay_rate)) / std::max(1.0, std::pow(s - h, decay_rate)), m);
  }

  void validate() const {
    if (!is_diffusers(name) && !is_nemo(name)) fail("learning-rate schedule \"", name, "\" is not supported (", supported(), ")");
    if (warmup_steps < 0) fail("learning-rate schedule: warmup_steps must not be negative");
    if (warmup_ratio && (warmup_steps > 0)) fail("learning-rate schedule: give warmup_steps or warmup_ratio, not both (NeMo's rule)");
    if (hold_steps && hold_ratio) fail("learning-rate schedule: give hold_steps or hold_ratio, not both (NeMo's rule)");
    if (constant_steps && constant_ratio) fail("learning-rate schedule: give constant_steps or constant_ratio, not both (NeMo's rule)");
    if (num_cycles < 1) fail("learning-rate schedule cosine_with_restarts: num_cycles must be at least 1, not ", num_cycles);
    if (name == "polynomial" && total_steps <= warmup_steps) fail("learning-rate schedule polynomial: warmup_steps must be below max_steps");
    (void)rate(0, 1.0);
  }

  static std::string supported() {
    return "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial; NeMo's WarmupPolicy, WarmupHoldPolicy, "
           "SquareAnnealing, SquareRootAnnealing, "
           "CosineAnnealing, NoamAnnealing, NoamHoldAnnealing, WarmupAnnealing, InverseSquareRootAnnealing, T5InverseSquareRootAnnealing, "
           "PolynomialDecayAnnealing, PolynomialHoldDecayAnnealing";
  }
};

}  // namespace dreambooth::train
