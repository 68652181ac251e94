// Problem sizes of the backend ops. Letters: N batch (or rows), C channels, H, W, T tokens,
// D model width, G groups, K output channels, R x S kernel.
#pragma once

#include <cmath>
#include <cstdint>

namespace dreambooth::nn {

// out[N, out_features] = in[N, in_features] * weight[out_features, in_features]^T + bias[out_features]
// (N is every leading dimension flattened: a batched linear is one GEMM).
struct LinearDims {
  std::int64_t rows = 0;
  std::int64_t in_features = 0;
  std::int64_t out_features = 0;
};

// out[N, K, P, Q] = conv(in[N, C, H, W], weight[K, C, R, S]) + bias[K], zero padding, cross-correlation
// as in PyTorch; P = (H + pad_h + pad_bottom - R) / stride_h + 1, Q likewise. pad_bottom / pad_right < 0 mean
// "as pad_h / pad_w" (symmetric); asymmetric padding is the VAE downsampler's F.pad(x, (0, 1, 0, 1)).
struct Conv2dDims {
  std::int64_t batch = 0;
  std::int64_t in_channels = 0;
  std::int64_t height = 0;
  std::int64_t width = 0;
  std::int64_t out_channels = 0;
  std::int64_t kernel_h = 1;
  std::int64_t kernel_w = 1;
  std::int64_t stride_h = 1;
  std::int64_t stride_w = 1;
  std::int64_t pad_h = 0;
  std::int64_t pad_w = 0;
  std::int64_t pad_bottom = -1;
  std::int64_t pad_right = -1;

  constexpr std::int64_t padding_bottom() const { return pad_bottom < 0 ? pad_h : pad_bottom; }
  constexpr std::int64_t padding_right() const { return pad_right < 0 ? pad_w : pad_right; }
  constexpr bool symmetric() const { return padding_bottom() == pad_h && padding_right() == pad_w; }
  constexpr std::int64_t out_height() const { return (height + pad_h + padding_bottom() - kernel_h) / stride_h + 1; }
  constexpr std::int64_t out_width() const { return (width + pad_w + padding_right() - kernel_w) / stride_w + 1; }
  constexpr double flops() const {
    return 2.0 * static_cast<double>(batch * out_channels * out_height() * out_width()) * static_cast<double>(in_channels * kernel_h * kernel_w);
  }
};

// in/out[N, C, spatial], G groups of C / G channels, per-channel affine gamma[C], beta[C];
// mean / rstd[N, G] saved for backward.
struct GroupNormDims {
  std::int64_t batch = 0;
  std::int64_t channels = 0;
  std::int64_t spatial = 0;
  std::int64_t groups = 0;
  double eps = 1e-5;
};

// in/out[N, D] normalised over D, affine gamma[D], beta[D]; mean / rstd[N] saved for backward.
struct LayerNormDims {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  double eps = 1e-5;
};

// Multi-head scaled-dot-product attention.
// q[N, Tq, heads * head_dim], k / v[N, Tk, heads * head_dim], out[N, Tq, heads * head_dim] (heads interleaved
// as a Linear layer produces them); lse[N, heads, Tq] (log-sum-exp of the scaled scores) saved for backward.
// scale <= 0 means head_dim^-0.5. causal: query i attends keys j <= i (requires Tq == Tk).
struct AttentionDims {
  std::int64_t batch = 0;
  std::int64_t heads = 0;
  std::int64_t q_len = 0;
  std::int64_t kv_len = 0;
  std::int64_t head_dim = 0;
  bool causal = false;
  double scale = 0.0;

  double effective_scale() const { return scale > 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(head_dim)); }
  constexpr double flops() const {  // forward: two GEMMs per head
    return 4.0 * static_cast<double>(batch * heads) * static_cast<double>(q_len * kv_len * head_dim);
  }
};

// out[N, dim]: sinusoidal embedding of timesteps[N] as diffusers' get_timestep_embedding:
// half = dim / 2, freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift)),
// emb = [sin(t * freq), cos(t * freq)] * scale, halves swapped when flip_sin_to_cos, zero-padded when dim is odd.
struct TimestepEmbeddingDims {
  std::int64_t batch = 0;
  std::int64_t dim = 0;
  bool flip_sin_to_cos = true;
  double downscale_freq_shift = 0.0;
  double scale = 1.0;
  double max_period = 10000.0;
};

}  // namespace dreambooth::nn
