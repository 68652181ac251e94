// Scalar formulas shared by the backends, written once: the CPU backend calls them in its loops, the CUDA backend in
// its kernels (compiled by nvcc as __host__ __device__), so that both compute the same float operations in the same
// order. Each one is the element-wise core of an op of backend_ops.hpp; the op's loops, reductions and memory layout
// stay in each backend's file of the op's family.
//
// The elementary functions are the C library's float / double ones called by their plain names (expf, erff, sqrtf
// and exp, erf, sqrt): on the host they are the calls std::exp / std::erf / std::sqrt make, on the device CUDA's.
// Only the standard library and core/host_device.hpp are included: this header is usable from any component and from
// device code.
#pragma once

#include <cmath>
#include <cstdint>

#include "dreambooth/core/host_device.hpp"

namespace dreambooth::math {

namespace detail {
DB_HOST_DEVICE inline float exp(float x) { return ::expf(x); }
DB_HOST_DEVICE inline double exp(double x) { return ::exp(x); }
DB_HOST_DEVICE inline float erf(float x) { return ::erff(x); }
DB_HOST_DEVICE inline double erf(double x) { return ::erf(x); }
DB_HOST_DEVICE inline float sqrt(float x) { return ::sqrtf(x); }
DB_HOST_DEVICE inline double sqrt(double x) { return ::sqrt(x); }
}  // namespace detail

// --- activations ---

// 1 / (1 + e^-x)
template <class T>
DB_HOST_DEVICE inline T sigmoid(T x) {
  return T(1) / (T(1) + detail::exp(-x));
}
// SiLU: x * sigmoid(x)
template <class T>
DB_HOST_DEVICE inline T silu(T x) {
  return x * sigmoid(x);
}
// dout * silu'(x) = dout * s (1 + x (1 - s)), s = sigmoid(x)
template <class T>
DB_HOST_DEVICE inline T silu_backward(T dout, T x) {
  const T s = sigmoid(x);
  return dout * s * (T(1) + x * (T(1) - s));
}
// GELU, exact (erf) form: 0.5 x (1 + erf(x / sqrt 2))
template <class T>
DB_HOST_DEVICE inline T gelu(T x) {
  return T(0.5) * x * (T(1) + detail::erf(x * T(0.70710678118654752440)));
}
// GELU'(x) = 0.5 (1 + erf(x / sqrt 2)) + x * phi(x)
template <class T>
DB_HOST_DEVICE inline T gelu_derivative(T x) {
  return T(0.5) * (T(1) + detail::erf(x * T(0.70710678118654752440))) + x * T(0.39894228040143267794) * detail::exp(T(-0.5) * x * x);
}
// CLIP's quick_gelu: x * sigmoid(1.702 x)
template <class T>
DB_HOST_DEVICE inline T quick_gelu(T x) {
  return x * sigmoid(T(1.702) * x);
}
// dout * quick_gelu'(x) = dout * (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x)
template <class T>
DB_HOST_DEVICE inline T quick_gelu_backward(T dout, T x) {
  const T s = sigmoid(T(1.702) * x);
  return dout * (s + T(1.702) * x * s * (T(1) - s));
}

// --- normalization ---

// A normalised element with its affine transform, recomputed from the saved statistics: (x - mean) * rstd * gamma + beta.
template <class T>
DB_HOST_DEVICE inline T normalized_affine(T x, T mean, T rstd, T gamma, T beta) {
  return (x - mean) * rstd * gamma + beta;
}

// --- tensor_ops ---

// v limited to [low, high] (std::clamp's comparisons: NaN stays NaN).
template <class T>
DB_HOST_DEVICE inline T clamp(T v, T low, T high) {
  return v < low ? low : high < v ? high : v;
}
// Dropout of one element as torch.nn.functional.dropout computes it in training: dropped (0) when its uniform draw u
// in [0, 1) is below p, else x / (1 - p), as x * keep_scale with keep_scale = 1 / (1 - p).
template <class T>
DB_HOST_DEVICE inline T dropout(T x, float u, float p, T keep_scale) {
  return u < p ? T(0) : x * keep_scale;
}
// diffusers' DiagonalGaussianDistribution: logvar is clamped to [-30, 20]; a sample is mean + exp(logvar / 2) * eps.
inline constexpr double kLogvarMin = -30.0, kLogvarMax = 20.0;
template <class T>
DB_HOST_DEVICE inline T clamp_logvar(T logvar) {
  return clamp(logvar, T(kLogvarMin), T(kLogvarMax));
}
template <class T>
DB_HOST_DEVICE inline T diagonal_gaussian_sample(T mean, T logvar, T eps) {
  return mean + detail::exp(T(0.5) * clamp_logvar(logvar)) * eps;
}

// Sinusoidal timestep embedding (diffusers' get_timestep_embedding, nn::TimestepEmbeddingDims): frequency i of
// `half` is exp(-ln(max_period) * i / (half - shift)), exponent and exponential in float32 as diffusers computes
// them; the angle is t * frequency * scale in float32. Both backends evaluate the frequency on the host (CUDA's
// expf may differ from the C library's by an ulp, which t up to 1000 magnifies).
inline float timestep_frequency(std::int64_t i, std::int64_t half, double max_period, double downscale_freq_shift) {
  const float exponent =
      static_cast<float>(-std::log(max_period)) * static_cast<float>(i) / static_cast<float>(static_cast<double>(half) - downscale_freq_shift);
  return detail::exp(exponent);
}
DB_HOST_DEVICE inline float timestep_angle(float t, float frequency, float scale) { return t * frequency * scale; }

// --- optimizer ---

// The per-step factors of torch.optim.AdamW: decay = 1 - lr * wd, step_size = lr / bc1, bc2_sqrt = sqrt(bc2).
template <class T>
struct AdamWFactors {
  T decay, step_size, bc2_sqrt;
};
template <class T>
inline AdamWFactors<T> adamw_factors(T lr, T weight_decay, T bias_correction1, T bias_correction2) {
  return {T(1) - lr * weight_decay, lr / bias_correction1, detail::sqrt(bias_correction2)};
}
// One element of an AdamW step: param *= decay; m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
// param -= step_size * m / (sqrt(v) / bc2_sqrt + eps).
template <class T>
DB_HOST_DEVICE inline void adamw_update(T& param, T& m, T& v, T grad, const AdamWFactors<T>& f, T beta1, T beta2, T eps) {
  param *= f.decay;
  m += (T(1) - beta1) * (grad - m);
  v = v * beta2 + (T(1) - beta2) * grad * grad;
  param -= f.step_size * m / (detail::sqrt(v) / f.bc2_sqrt + eps);
}

// One element of an exponential moving average of a weight, as diffusers' EMAModel.step computes it:
// shadow -= (1 - decay) * (shadow - param).
template <class T>
DB_HOST_DEVICE inline void ema_update(T& shadow, T param, T one_minus_decay) {
  const T difference = shadow - param;
  const T step = one_minus_decay * difference;
  shadow -= step;
}

}  // namespace dreambooth::math
