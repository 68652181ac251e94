// DynamicLossScaler: dynamic loss scaling for fp16 training, as torch.cuda.amp.GradScaler does it.
//   - the loss gradient seed is multiplied by scale() before the backward pass, so that small gradients survive
//     the fp16 rounding of the GEMM and convolution operands;
//   - before clipping and the optimizer, the gradients are checked: a non-finite global norm (an inf or NaN in any
//     gradient) means the scaled backward overflowed, the optimizer step is skipped and the scale backs off
//     (x backoff_factor); otherwise the gradients are unscaled (x 1 / scale) and, after growth_interval finite steps
//     in a row, the scale grows (x growth_factor).
// Defaults are GradScaler's: initial scale 2^16, growth 2 every 2000 steps, backoff 0.5. The scale stays a power of
// two, so scaling and unscaling are exact in binary floating point (barring overflow and subnormals).
// A disabled scaler (fp32, tf32, bf16) has scale 1 and is never consulted: those runs are computed exactly as before.
#pragma once

#include <cmath>

#include "dreambooth/core/error.hpp"

namespace dreambooth::train {

struct LossScalerConfig {
  bool enabled = false;
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  long growth_interval = 2000;

  void validate() const {
    DB_CHECK(init_scale > 0 && std::isfinite(init_scale), "loss scaler: initial scale ", init_scale, " must be positive and finite");
    DB_CHECK(growth_factor > 1.0, "loss scaler: growth factor ", growth_factor, " must be above 1");
    DB_CHECK(backoff_factor > 0.0 && backoff_factor < 1.0, "loss scaler: backoff factor ", backoff_factor, " must be in (0, 1)");
    DB_CHECK(growth_interval >= 1, "loss scaler: growth interval ", growth_interval, " must be at least 1");
  }
};

class DynamicLossScaler {
 public:
  // What a checkpoint holds to resume exactly.
  struct State {
    double scale = 1.0;
    long growth_tracker = 0;  // finite steps in a row since the last growth or backoff
  };

  explicit DynamicLossScaler(LossScalerConfig config = {}) : config_(config) {
    config_.validate();
    state_.scale = config_.enabled ? config_.init_scale : 1.0;
  }

  bool enabled() const { return config_.enabled; }
  // The factor the loss gradient seed is multiplied by (1 when disabled).
  double scale() const { return state_.scale; }
  // The factor the gradients are multiplied by to unscale them, rounded to float as GradScaler's inv_scale.
  float inverse_scale() const { return static_cast<float>(1.0 / state_.scale); }
  long growth_tracker() const { return state_.growth_tracker; }
  const LossScalerConfig& config() const { return config_; }

  // Whether gradients with this squared global norm (of the scaled gradients) overflowed.
  static bool overflowed(double squared_norm) { return !std::isfinite(squared_norm); }

  // Called once per optimizer step, after the overflow check: backs off on overflow, grows after growth_interval
  // finite steps in a row. A disabled scaler does nothing.
  void update(bool found_inf) {
    if (!config_.enabled) return;
    if (found_inf) {
      state_.scale *= config_.backoff_factor;
      state_.growth_tracker = 0;
    } else if (++state_.growth_tracker == config_.growth_interval) {
      const double grown = state_.scale * config_.growth_factor;
      if (std::isfinite(static_cast<float>(grown))) state_.scale = grown;  // as GradScaler: never grows past float's range
      state_.growth_tracker = 0;
    }
  }

  State state() const { return state_; }
  void load(const State& s) {
    DB_CHECK(!config_.enabled || (s.scale > 0 && std::isfinite(s.scale)), "loss scaler: saved scale ", s.scale, " is not a positive number");
    DB_CHECK(s.growth_tracker >= 0, "loss scaler: saved growth tracker ", s.growth_tracker, " is negative");
    if (config_.enabled) state_ = s;
  }

 private:
  LossScalerConfig config_;
  State state_;
};

}  // namespace dreambooth::train
