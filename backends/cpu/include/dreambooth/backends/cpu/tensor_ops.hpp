// The tensor_ops family on the CPU: fills, elementwise arithmetic, transpose, channel bias / sums, nearest upsampling,
// channel concat / split, token + position embeddings, mean-squared error, sinusoidal timestep embedding, clamping and
// the VAE's diagonal Gaussian sampling.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/core/rng.hpp"
#include "dreambooth/nn/dims.hpp"
#include "dreambooth/nn/scalar_math.hpp"

namespace dreambooth::cpu {

template <class T>
void add(T* out, const T* a, const T* b, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
template <class T>
void mul(T* out, const T* a, const T* b, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}
template <class T>
void scale(T* out, const T* a, T s, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = a[i] * s;
}
// y += x (gradient accumulation; the backward of add is a copy or this).
template <class T>
void accumulate(T* y, const T* x, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) y[i] += x[i];
}
// out = a * b: da = dout * b, db = dout * a (assigned; either may be null).
template <class T>
void mul_backward(T* da, T* db, const T* dout, const T* a, const T* b, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) {
    if (da) da[i] = dout[i] * b[i];
    if (db) db[i] = dout[i] * a[i];
  }
}

// out[N, C, R] = in[N, R, C]^T per batch (e.g. [N, C, H*W] <-> [N, H*W, C]); it is its own backward with R, C swapped.
template <class T>
void transpose(T* out, const T* in, std::int64_t batch, std::int64_t rows, std::int64_t cols) {
  constexpr std::int64_t tile = 32;
#pragma omp parallel for collapse(3) if (parallel_worth(batch * rows * cols))
  for (std::int64_t n = 0; n < batch; ++n)
    for (std::int64_t r0 = 0; r0 < rows; r0 += tile)
      for (std::int64_t c0 = 0; c0 < cols; c0 += tile)
        for (std::int64_t r = r0; r < std::min(r0 + tile, rows); ++r)
          for (std::int64_t c = c0; c < std::min(c0 + tile, cols); ++c) out[(n * cols + c) * rows + r] = in[(n * rows + r) * cols + c];
}

// out[N, C, S] = in[N, C, S] + bias[N, C] broadcast over S (a per-sample, per-channel shift: the time embedding
// added inside a ResNet block). Its backward for bias is channel_sum; for in, the identity.
template <class T>
void add_channel_bias(T* out, const T* in, const T* bias, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
#pragma omp parallel for collapse(2) if (parallel_worth(batch * channels * spatial))
  for (std::int64_t n = 0; n < batch; ++n)
    for (std::int64_t c = 0; c < channels; ++c) {
      const T shift = bias[n * channels + c];
      const auto base = (n * channels + c) * spatial;
      for (std::int64_t i = 0; i < spatial; ++i) out[base + i] = in[base + i] + shift;
    }
}
// sums[N, C] = sum over S of in[N, C, S] (assigned).
template <class T>
void channel_sum(T* sums, const T* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
#pragma omp parallel for collapse(2) if (parallel_worth(batch * channels * spatial))
  for (std::int64_t n = 0; n < batch; ++n)
    for (std::int64_t c = 0; c < channels; ++c) {
      const auto base = (n * channels + c) * spatial;
      T sum = 0;
      for (std::int64_t i = 0; i < spatial; ++i) sum += in[base + i];
      sums[n * channels + c] = sum;
    }
}

// out[P, 2H, 2W] = in[P, H, W] repeated 2x2 (P = N * C planes).
template <class T>
void upsample_nearest2x_forward(T* out, const T* in, std::int64_t planes, std::int64_t H, std::int64_t W) {
#pragma omp parallel for if (parallel_worth(planes * 4 * H * W))
  for (std::int64_t p = 0; p < planes; ++p)
    for (std::int64_t y = 0; y < 2 * H; ++y)
      for (std::int64_t x = 0; x < 2 * W; ++x) out[(p * 2 * H + y) * 2 * W + x] = in[(p * H + y / 2) * W + x / 2];
}
// din[P, H, W] = sum of the 2x2 block of dout[P, 2H, 2W].
template <class T>
void upsample_nearest2x_backward(T* din, const T* dout, std::int64_t planes, std::int64_t H, std::int64_t W) {
#pragma omp parallel for if (parallel_worth(planes * 4 * H * W))
  for (std::int64_t p = 0; p < planes; ++p)
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x) {
        const T* g = dout + (p * 2 * H + 2 * y) * 2 * W + 2 * x;
        din[(p * H + y) * W + x] = g[0] + g[1] + g[2 * W] + g[2 * W + 1];
      }
}

// out[O, Ca + Cb, I] = concat(a[O, Ca, I], b[O, Cb, I]) along the middle axis (channels, for O = N, I = H*W).
// Its backward is split_channels, and split's backward is concat.
template <class T>
void concat_channels(T* out, const T* a, const T* b, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
#pragma omp parallel for if (parallel_worth(outer * (ca + cb) * inner))
  for (std::int64_t o = 0; o < outer; ++o) {
    std::copy_n(a + o * ca * inner, ca * inner, out + o * (ca + cb) * inner);
    std::copy_n(b + o * cb * inner, cb * inner, out + o * (ca + cb) * inner + ca * inner);
  }
}
template <class T>
void split_channels(T* a, T* b, const T* in, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
#pragma omp parallel for if (parallel_worth(outer * (ca + cb) * inner))
  for (std::int64_t o = 0; o < outer; ++o) {
    if (a) std::copy_n(in + o * (ca + cb) * inner, ca * inner, a + o * ca * inner);
    if (b) std::copy_n(in + o * (ca + cb) * inner + ca * inner, cb * inner, b + o * cb * inner);
  }
}

// out[N, T, D] = token_table[ids[N, T]] + position_table[t] (position_table[Tmax, D] may be null).
template <class T>
void embedding_forward(T* out, const std::int32_t* ids, const T* token_table, const T* position_table, std::int64_t batch, std::int64_t seq,
                       std::int64_t vocab, std::int64_t dim) {
  for (std::int64_t i = 0; i < batch * seq; ++i)
    DB_CHECK(ids[i] >= 0 && ids[i] < vocab, "embedding: token id ", ids[i], " at position ", i, " is outside the vocabulary of ", vocab);
#pragma omp parallel for if (parallel_worth(batch * seq * dim))
  for (std::int64_t i = 0; i < batch * seq; ++i) {
    const T* token = token_table + static_cast<std::int64_t>(ids[i]) * dim;
    const T* position = position_table ? position_table + (i % seq) * dim : nullptr;
    for (std::int64_t c = 0; c < dim; ++c) out[i * dim + c] = token[c] + (position ? position[c] : T(0));
  }
}
// Scatter-add: dtoken_table[ids[i]] += dout[i]; dposition_table[t] += sum over the batch (either may be null).
template <class T>
void embedding_backward(T* dtoken_table, T* dposition_table, const T* dout, const std::int32_t* ids, std::int64_t batch, std::int64_t seq,
                        std::int64_t vocab, std::int64_t dim) {
  for (std::int64_t i = 0; i < batch * seq; ++i) {
    DB_CHECK(ids[i] >= 0 && ids[i] < vocab, "embedding: token id ", ids[i], " is outside the vocabulary of ", vocab);
    for (std::int64_t c = 0; c < dim; ++c) {
      if (dtoken_table) dtoken_table[static_cast<std::int64_t>(ids[i]) * dim + c] += dout[i * dim + c];
      if (dposition_table) dposition_table[(i % seq) * dim + c] += dout[i * dim + c];
    }
  }
}

// loss[0] = mean((a - b)^2) over n elements, accumulated in double.
template <class T>
void mse_forward(T* loss, const T* a, const T* b, std::size_t n) {
  double sum = 0;
#pragma omp parallel for reduction(+ : sum) if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) sum += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  loss[0] = static_cast<T>(n ? sum / static_cast<double>(n) : 0.0);
}
// da = dloss * 2 (a - b) / n, db = -da (assigned; either may be null).
template <class T>
void mse_backward(T* da, T* db, const T* dloss, const T* a, const T* b, std::size_t n) {
  const T factor = dloss[0] * T(2) / static_cast<T>(n);
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) {
    const T g = factor * (a[i] - b[i]);
    if (da) da[i] = g;
    if (db) db[i] = -g;
  }
}

// out[N, dim] from timesteps[N]: see nn::TimestepEmbeddingDims. Angles are computed in double.
template <class T>
void timestep_embedding_forward(T* out, const T* timesteps, const nn::TimestepEmbeddingDims& d) {
  const std::int64_t half = d.dim / 2;
  for (std::int64_t n = 0; n < d.batch; ++n) {
    T* row = out + n * d.dim;
    for (std::int64_t i = 0; i < half; ++i) {
      // diffusers computes the exponent and frequency in float32, then t * freq in float32; we do likewise.
      const float angle = math::timestep_angle(static_cast<float>(timesteps[n]),
                                               math::timestep_frequency(i, half, d.max_period, d.downscale_freq_shift), static_cast<float>(d.scale));
      const T s = static_cast<T>(std::sin(angle)), c = static_cast<T>(std::cos(angle));
      row[i] = d.flip_sin_to_cos ? c : s;
      row[half + i] = d.flip_sin_to_cos ? s : c;
    }
    if (d.dim % 2) row[d.dim - 1] = T(0);
  }
}

// out = in limited to [low, high] (NaN stays NaN); out may be in.
template <class T>
void clamp(T* out, const T* in, T low, T high, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = math::clamp(in[i], low, high);
}

// out[i] = dropout of in[i] with probability p, element i dropped when rng::uniform(seed, offset, i) < p (what
// fill_uniform(seed, offset) over [0, 1) draws for it); the rest scaled by 1 / (1 - p). Its own backward: the same call
// on the output gradient, with the same seed and offset, masks it alike. out may be in.
template <class T>
void dropout(T* out, const T* in, std::size_t n, std::uint64_t seed, std::uint64_t offset, T p) {
  const T keep_scale = T(1) / (T(1) - p);
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = math::dropout(in[i], rng::uniform(seed, offset, i), static_cast<float>(p), keep_scale);
}

// latents[N, C, S] = mean + exp(logvar / 2) * eps, from moments[N, 2C, S] = [mean, logvar] (logvar clamped to
// [-30, 20], diffusers' DiagonalGaussianDistribution) and eps[N, C, S]; latents may be eps.
template <class T>
void diagonal_gaussian_sample(T* latents, const T* moments, const T* eps, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
#pragma omp parallel for collapse(2) if (parallel_worth(batch * channels * spatial))
  for (std::int64_t n = 0; n < batch; ++n)
    for (std::int64_t c = 0; c < channels; ++c) {
      const T* mean = moments + (n * 2 * channels + c) * spatial;
      const T* logvar = mean + channels * spatial;
      const auto base = (n * channels + c) * spatial;
      for (std::int64_t i = 0; i < spatial; ++i) latents[base + i] = math::diagonal_gaussian_sample(mean[i], logvar[i], eps[base + i]);
    }
}

template <class T>
void fill(T* x, T value, std::size_t n) {
  std::fill_n(x, n, value);
}
template <class T>
void fill_normal(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T mean, T stddev) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) x[i] = mean + stddev * static_cast<T>(rng::normal(seed, offset, i));
}
template <class T>
void fill_uniform(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T low, T high) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) x[i] = low + (high - low) * static_cast<T>(rng::uniform(seed, offset, i));
}

}  // namespace dreambooth::cpu
