// Group norm and layer norm on the CPU. Forward saves mean and rstd; backward consumes them.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "dreambooth/backends/cpu/lane_sum.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/nn/dims.hpp"
#include "dreambooth/nn/scalar_math.hpp"

namespace dreambooth::cpu {

namespace norm_detail {

// The norms' sums: 8 lanes (lane_sum.hpp).
constexpr std::int64_t kLanes = 8;
template <class Term>
double lane_sum(std::int64_t len, Term term) {
  return cpu::lane_sum<kLanes>(0, len, term);
}
template <class TermA, class TermB>
std::array<double, 2> lane_sums(std::int64_t len, TermA a, TermB b) {
  return cpu::lane_sums<kLanes>(0, len, a, b);
}

// Normalises one contiguous run x[len] (with channel `affine_index(i)` for gamma / beta).
template <class T, class AffineIndex>
void normalize_run(T* out, T* mean_out, T* rstd_out, const T* x, std::int64_t len, const T* gamma, const T* beta, double eps,
                   AffineIndex affine_index) {
  const double mean = lane_sum(len, [&](std::int64_t i) { return static_cast<double>(x[i]); }) / static_cast<double>(len);
  const double sq = lane_sum(len, [&](std::int64_t i) { return (x[i] - mean) * (x[i] - mean); });
  const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(len) + eps);  // biased variance, as PyTorch
  for (std::int64_t i = 0; i < len; ++i) {
    const auto c = affine_index(i);
    out[i] = static_cast<T>((x[i] - mean) * rstd) * gamma[c] + beta[c];
  }
  *mean_out = static_cast<T>(mean);
  *rstd_out = static_cast<T>(rstd);
}

// The input gradient of a norm, dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * gamma,
// xhat = (x - mean) * rstd, in two parts over a run x[len] whose element i has scale gamma(i): the two sums, then dx
// from their means (a group norm adds its channels' sums first). The sums run in a loop of their own, whatever
// parameter gradients the caller also wants: where one loop accumulated dgamma / dbeta too, behind null checks, the
// compiler contracted the multiply-adds differently in its versions of that loop and din changed in the last bit with
// dgamma null (seen in AVX2 builds).
template <class T, class Gamma>
std::array<double, 2> input_gradient_sums(const T* dout, const T* x, double mean, double rstd, std::int64_t len, Gamma gamma) {
  const auto dxhat = [&](std::int64_t i) { return static_cast<double>(dout[i]) * gamma(i); };
  return lane_sums(len, dxhat, [&](std::int64_t i) { return dxhat(i) * ((static_cast<double>(x[i]) - mean) * rstd); });
}
template <class T, class Gamma>
void input_gradient(T* dx, const T* dout, const T* x, double mean, double rstd, std::int64_t len, Gamma gamma, double mean_dxhat,
                    double mean_dxhat_xhat) {
  for (std::int64_t i = 0; i < len; ++i) {
    const double xhat = (static_cast<double>(x[i]) - mean) * rstd;
    dx[i] = static_cast<T>(rstd * (static_cast<double>(dout[i]) * gamma(i) - mean_dxhat - xhat * mean_dxhat_xhat));
  }
}

}  // namespace norm_detail

// out[N, C, S] = group_norm(in[N, C, S]) * gamma[C] + beta[C]; mean / rstd[N, G].
template <class T>
void group_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
  const auto group_channels = d.channels / d.groups, len = group_channels * d.spatial;
#pragma omp parallel for collapse(2) if (parallel_worth(d.batch * d.channels * d.spatial))
  for (std::int64_t n = 0; n < d.batch; ++n)
    for (std::int64_t g = 0; g < d.groups; ++g) {
      const auto base = (n * d.channels + g * group_channels) * d.spatial, stat = n * d.groups + g;
      norm_detail::normalize_run(out + base, mean + stat, rstd + stat, in + base, len, gamma, beta, d.eps,
                                 [&](std::int64_t i) { return g * group_channels + i / d.spatial; });
    }
}

// din[N, C, S] assigned; dgamma / dbeta[C] accumulated. Groups of one image run in parallel; the
// per-channel parameter gradients of different groups touch disjoint channels, each channel's sums over S in lanes.
template <class T>
void group_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                         const nn::GroupNormDims& d) {
  const auto group_channels = d.channels / d.groups;
  for (std::int64_t n = 0; n < d.batch; ++n) {
#pragma omp parallel for if (parallel_worth(d.channels * d.spatial))
    for (std::int64_t g = 0; g < d.groups; ++g) {
      const auto first = g * group_channels, base = (n * d.channels + first) * d.spatial, stat = n * d.groups + g;
      const double mu = mean[stat], r = rstd[stat];
      if (dgamma || dbeta) {
        for (std::int64_t c = 0; c < group_channels; ++c) {
          const T* gs = dout + base + c * d.spatial;
          const T* xs = in + base + c * d.spatial;
          if (dgamma)
            dgamma[first + c] += static_cast<T>(norm_detail::lane_sum(
                d.spatial, [&](std::int64_t i) { return static_cast<double>(gs[i]) * ((static_cast<double>(xs[i]) - mu) * r); }));
          if (dbeta) dbeta[first + c] += static_cast<T>(norm_detail::lane_sum(d.spatial, [&](std::int64_t i) { return static_cast<double>(gs[i]); }));
        }
      }
      if (!din) continue;
      // the group's sums a channel at a time (gamma constant along S: no division per element)
      std::array<double, 2> sums{};
      for (std::int64_t c = 0; c < group_channels; ++c) {
        const double gm = gamma[first + c];
        const auto at = base + c * d.spatial;
        const auto part = norm_detail::input_gradient_sums(dout + at, in + at, mu, r, d.spatial, [gm](std::int64_t) { return gm; });
        sums[0] += part[0];
        sums[1] += part[1];
      }
      const double len = static_cast<double>(group_channels * d.spatial);
      for (std::int64_t c = 0; c < group_channels; ++c) {
        const double gm = gamma[first + c];
        const auto at = base + c * d.spatial;
        norm_detail::input_gradient(
            din + at, dout + at, in + at, mu, r, d.spatial, [gm](std::int64_t) { return gm; }, sums[0] / len, sums[1] / len);
      }
    }
  }
}

// out[N, C, S] = silu(group_norm(in) * gamma + beta): the ResNet blocks' norm -> activation, fused so that the
// normalised tensor need not be kept (backward recomputes it from the statistics). The forward output is exactly
// silu of group_norm_forward's.
template <class T>
void group_norm_silu_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
  group_norm_forward(out, mean, rstd, in, gamma, beta, d);
  const auto n = d.batch * d.channels * d.spatial;
#pragma omp parallel for if (parallel_worth(n))
  for (std::int64_t i = 0; i < n; ++i) out[i] = math::silu(out[i]);
}

// din[N, C, S] assigned, dgamma / dbeta[C] accumulated: dy = dout * silu'(y) with y = xhat * gamma + beta recomputed
// from the saved statistics, then the group norm backward of dy. dy[N, C, S] is scratch memory the caller provides.
template <class T>
void group_norm_silu_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma, const T* beta,
                              const nn::GroupNormDims& d, T* dy) {
  const auto group_channels = d.channels / d.groups;
#pragma omp parallel for collapse(2) if (parallel_worth(d.batch * d.channels * d.spatial))
  for (std::int64_t n = 0; n < d.batch; ++n)
    for (std::int64_t c = 0; c < d.channels; ++c) {
      const auto stat = n * d.groups + c / group_channels, base = (n * d.channels + c) * d.spatial;
      for (std::int64_t s = 0; s < d.spatial; ++s) {
        const T y = math::normalized_affine(in[base + s], mean[stat], rstd[stat], gamma[c], beta[c]);
        dy[base + s] = math::silu_backward(dout[base + s], y);
      }
    }
  group_norm_backward(din, dgamma, dbeta, dy, in, mean, rstd, gamma, d);
}

// out[N, D] = layer_norm(in[N, D]) * gamma[D] + beta[D]; mean / rstd[N].
template <class T>
void layer_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::LayerNormDims& d) {
#pragma omp parallel for if (parallel_worth(d.rows * d.dim))
  for (std::int64_t r = 0; r < d.rows; ++r)
    norm_detail::normalize_run(out + r * d.dim, mean + r, rstd + r, in + r * d.dim, d.dim, gamma, beta, d.eps, [](std::int64_t i) { return i; });
}

// din[N, D] assigned; dgamma / dbeta[D] accumulated (rows run serially into them, din rows in parallel).
template <class T>
void layer_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                         const nn::LayerNormDims& d) {
  if (din) {
#pragma omp parallel for if (parallel_worth(d.rows * d.dim))
    for (std::int64_t r = 0; r < d.rows; ++r) {
      const auto gamma_of = [gamma](std::int64_t i) { return static_cast<double>(gamma[i]); };
      const double mu = mean[r], rs = rstd[r], len = static_cast<double>(d.dim);
      const auto sums = norm_detail::input_gradient_sums(dout + r * d.dim, in + r * d.dim, mu, rs, d.dim, gamma_of);
      norm_detail::input_gradient(din + r * d.dim, dout + r * d.dim, in + r * d.dim, mu, rs, d.dim, gamma_of, sums[0] / len, sums[1] / len);
    }
  }
  if (dgamma || dbeta) {
    for (std::int64_t r = 0; r < d.rows; ++r)
      for (std::int64_t i = 0; i < d.dim; ++i) {
        const T g = dout[r * d.dim + i];
        if (dgamma) dgamma[i] += g * (in[r * d.dim + i] - mean[r]) * rstd[r];
        if (dbeta) dbeta[i] += g;
      }
  }
}

}  // namespace dreambooth::cpu
