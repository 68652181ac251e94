// The optimizer family on the CPU: the AdamW step and the EMA update (their element formulas in nn/scalar_math.hpp,
// shared with CUDA) and the squared norm of a vector (gradient clipping).
#pragma once

#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "dreambooth/backends/cpu/lane_sum.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/nn/scalar_math.hpp"

namespace dreambooth::cpu {

// One AdamW update, as torch.optim.AdamW computes it: param *= 1 - lr * wd; m = lerp(m, g, 1 - beta1);
// v = beta2 v + (1 - beta2) g^2; param -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), bc = 1 - beta^step.
template <class T>
void adamw_step(T* param, const T* grad, T* m, T* v, std::size_t n, T lr, T beta1, T beta2, T eps, T weight_decay, T bias_correction1,
                T bias_correction2) {
  const auto factors = math::adamw_factors(lr, weight_decay, bias_correction1, bias_correction2);
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) math::adamw_update(param[i], m[i], v[i], grad[i], factors, beta1, beta2, eps);
}

// The EMA of the trained weights (diffusers' EMAModel.step): shadow[n] -= one_minus_decay * (shadow - param).
template <class T>
void ema_update(T* shadow, const T* param, std::size_t n, T one_minus_decay) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) math::ema_update(shadow[i], param[i], one_minus_decay);
}

// sum(x^2) accumulated in double (gradient norms for clipping). Each thread sums a fixed slice of whole groups of
// kNormLanes in lanes (lane_sum.hpp; one running sum ran at a quarter of memory speed), the slices' sums are added in
// thread order, then the elements past the last group: the result depends only on the thread count.
constexpr std::size_t kNormLanes = 16;
template <class T>
double squared_norm(const T* x, std::size_t n) {
  const int threads = parallel_worth(n) ? omp_get_max_threads() : 1;
  std::vector<double> slices(static_cast<std::size_t>(threads), 0.0);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num()), count = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t blocks = n / kNormLanes, first = blocks * t / count * kNormLanes, last = blocks * (t + 1) / count * kNormLanes;
    slices[t] = lane_sum<kNormLanes>(static_cast<std::int64_t>(first), static_cast<std::int64_t>(last),
                                     [x](std::int64_t i) { return static_cast<double>(x[i]) * x[i]; });
  }
  double sum = 0;
  for (const double slice : slices) sum += slice;
  for (std::size_t i = n / kNormLanes * kNormLanes; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return sum;
}

}  // namespace dreambooth::cpu
