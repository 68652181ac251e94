// The decay rule of the exponential moving average of the trained weights (ema.hpp), as diffusers' EMAModel.get_decay
// and NeMo's EMA callback compute it; the settings are model.ema.* / NeMo's exp_manager.ema.* (config.hpp).
//   decay_u for update u (1-based): s = u - update_after_step - 1; 0 while s <= 0 (the average copies the weights); then
//   warm-up "diffusers" (EMAModel's default): (1 + s) / (10 + s), "power" (EMAModel's use_ema_warmup):
//   1 - (1 + s / inv_gamma)^-power, each at most `decay` and at least `min_decay`; warm-up "none" (NeMo's EMA): `decay`
//   from the first update (the first update_after_step updates copy the weights).
//   An update follows optimizer step k (1-based) when (k - 1) % every_n_steps == 0 (NeMo's rule).
#pragma once

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

namespace dreambooth::train {

struct EmaConfig {
  double decay = 0.9999;                      // diffusers' EMAModel default (NeMo's exp_manager.ema.decay defaults to 0.999)
  double min_decay = 0.0;                     // EMAModel's min_decay
  long update_after_step = 0;                 // EMAModel's: the first updates (this many, plus one) copy the weights
  std::string warmup = "diffusers";           // diffusers, power (EMAModel's use_ema_warmup) or none (NeMo's)
  double inv_gamma = 1.0, power = 2.0 / 3.0;  // the power warm-up's
  long every_n_steps = 1;                     // NeMo's: an update after every N-th optimizer step

  // The decay of update `update` (1-based), as EMAModel.get_decay computes it in double.
  double decay_at(long update) const {
    const long step = std::max(0L, update - update_after_step - 1);
    if (warmup == "none") return update <= update_after_step ? 0.0 : decay;
    if (step <= 0) return 0.0;
    const auto s = static_cast<double>(step);
    const double value = warmup == "power" ? 1.0 - std::pow(1.0 + s / inv_gamma, -power) : (1.0 + s) / (10.0 + s);
    return std::max(std::min(value, decay), min_decay);
  }
  // Whether optimizer step `step` (1-based) is followed by an update.
  bool updates_after(long step) const { return (step - 1) % every_n_steps == 0; }

  // What a checkpoint records and a resume must match.
  std::string description() const {
    std::ostringstream d;
    d << "decay " << decay << ", warmup " << warmup;
    if (warmup == "power") d << " (inv_gamma " << inv_gamma << ", power " << power << ")";
    if (min_decay > 0) d << ", min_decay " << min_decay;
    if (update_after_step > 0) d << ", update_after_step " << update_after_step;
    if (every_n_steps != 1) d << ", every " << every_n_steps << " steps";
    return d.str();
  }
};

}  // namespace dreambooth::train
