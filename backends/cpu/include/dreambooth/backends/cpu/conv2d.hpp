// 2-D convolution on the CPU: forward, backward data and backward filter.
//
// Four paths, all reduced to GEMMs (conv_path() chooses):
// - 1x1, stride 1, no padding: one GEMM per image, weight[K, C] * in[C, HW].
// - 3x3, stride 1, padding 1, float, with enough channels and tiles (winograd::choose): Winograd F(4x4, 3x3), 36
//   GEMMs over transformed 6x6 tiles, 4x fewer multiplications, where an image has at least 64 tiles of 4x4 (SD's
//   64x64 and 32x32 levels, the VAE), else F(2x2, 3x3), 16 GEMMs over 4x4 tiles, 2.25x fewer, with at least 64 tiles of
//   2x2 per image (the 16x16 level); neither at 8x8, where the filter transform outweighs the saving (winograd.hpp).
// - 3x3, stride 1, padding 1 ("shifted GEMM"): every image is zero-padded once to [H+2, W+2] and the batch
//   laid out channel-major, padded[C, N * plane]; the output is computed over the padded geometry,
//   wide[K, N * plane], as the sum over the 9 taps (r, s) of weight_rs[K, C] * padded[C, j + r * (W+2) + s]:
//   every tap is one plain GEMM over a shifted window of the whole padded batch, so no im2col copy (9x the
//   input) is ever made, and small images still give wide GEMMs. Columns that fall in the padding are dropped.
//   Backward data and filter use the same windows.
//   Used for the other 3x3 convolutions when the image is large next to the weight (K <= N * H * W): the weight is
//   rearranged per tap once per call.
// - anything else (strided, other kernels, and small images with many channels, where rearranging a large
//   weight would cost more than im2col): im2col of a group of images into columns[C*R*S, G * P*Q], one GEMM
//   against the weight as stored, [K, C*R*S] (col2im for backward data). Groups keep columns under 64 MiB.
// Temporaries (padded images, columns, tiles) come from the caller's Workspace, so that their pages stay mapped.
// Under a bf16 GemmComputeScope (the backend's --precision bf16) every convolution runs instead on oneDNN's
// convolution primitives in bf16 (conv2d_onednn.hpp): its AMX / AVX512-BF16 kernels, 3-5x the fp32 path above at
// 64x64 and 32x32, 1.2-2x at 16x16 and 8x8 (measured on AMX).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dreambooth/backends/cpu/conv2d_onednn.hpp"
#include "dreambooth/backends/cpu/gemm.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/backends/cpu/winograd.hpp"
#include "dreambooth/backends/cpu/workspace.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu {

namespace conv_detail {

// image[C, H, W] -> columns[C*R*S, P*Q] with row stride ld (images of a group side by side).
template <class T>
void im2col(const T* image, const nn::Conv2dDims& d, T* columns, std::int64_t ld) {
  const auto P = d.out_height(), Q = d.out_width();
#pragma omp parallel for collapse(3) if (parallel_worth(d.in_channels * d.kernel_h * d.kernel_w * P * Q))
  for (std::int64_t c = 0; c < d.in_channels; ++c)
    for (std::int64_t r = 0; r < d.kernel_h; ++r)
      for (std::int64_t s = 0; s < d.kernel_w; ++s) {
        T* row = columns + ((c * d.kernel_h + r) * d.kernel_w + s) * ld;
        for (std::int64_t p = 0; p < P; ++p) {
          const std::int64_t y = p * d.stride_h - d.pad_h + r;
          for (std::int64_t q = 0; q < Q; ++q) {
            const std::int64_t x = q * d.stride_w - d.pad_w + s;
            row[p * Q + q] = (y >= 0 && y < d.height && x >= 0 && x < d.width) ? image[(c * d.height + y) * d.width + x] : T(0);
          }
        }
      }
}

// Adds columns[C*R*S, P*Q] (row stride ld) into image[C, H, W]; channels in parallel (disjoint writes).
template <class T>
void col2im(const T* columns, const nn::Conv2dDims& d, T* image, std::int64_t ld) {
  const auto P = d.out_height(), Q = d.out_width();
#pragma omp parallel for if (parallel_worth(d.in_channels * d.kernel_h * d.kernel_w * P * Q))
  for (std::int64_t c = 0; c < d.in_channels; ++c)
    for (std::int64_t r = 0; r < d.kernel_h; ++r)
      for (std::int64_t s = 0; s < d.kernel_w; ++s) {
        const T* row = columns + ((c * d.kernel_h + r) * d.kernel_w + s) * ld;
        for (std::int64_t p = 0; p < P; ++p) {
          const std::int64_t y = p * d.stride_h - d.pad_h + r;
          if (y < 0 || y >= d.height) continue;
          for (std::int64_t q = 0; q < Q; ++q) {
            const std::int64_t x = q * d.stride_w - d.pad_w + s;
            if (x >= 0 && x < d.width) image[(c * d.height + y) * d.width + x] += row[p * Q + q];
          }
        }
      }
}

// Whether a float convolution runs on oneDNN's bf16 convolutions: under a bf16 scope, outside parallel regions.
inline bool onednn_bf16() { return gemm_compute() == GemmCompute::bf16 && !omp_in_parallel(); }

inline bool is_pointwise(const nn::Conv2dDims& d) {
  return d.kernel_h == 1 && d.kernel_w == 1 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 0 && d.pad_w == 0 && d.symmetric();
}
inline bool is_3x3_same(const nn::Conv2dDims& d) {
  return d.kernel_h == 3 && d.kernel_w == 3 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 1 && d.pad_w == 1 && d.symmetric() &&
         d.out_channels <= d.batch * d.height * d.width;
}

// Images per im2col group: columns[C*R*S, G * P*Q] stay under 64 MiB (at least one image).
template <class T>
std::int64_t im2col_group(const nn::Conv2dDims& d) {
  const auto per_image = d.in_channels * d.kernel_h * d.kernel_w * d.out_height() * d.out_width() * static_cast<std::int64_t>(sizeof(T));
  return std::max<std::int64_t>(1, std::min(d.batch, (std::int64_t{64} << 20) / std::max<std::int64_t>(per_image, 1)));
}

// weight[K, C, 3, 3] -> taps[9, K, C].
template <class T>
void weight_to_taps(const T* weight, std::int64_t K, std::int64_t C, T* taps) {
#pragma omp parallel for if (parallel_worth(9 * K * C))
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t t = 0; t < 9; ++t) taps[(t * K + k) * C + c] = weight[(k * C + c) * 9 + t];
}

// dweight[K, C, 3, 3] += dtaps[9, K, C].
template <class T>
void accumulate_taps(const T* dtaps, std::int64_t K, std::int64_t C, T* dweight) {
#pragma omp parallel for if (parallel_worth(9 * K * C))
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t t = 0; t < 9; ++t) dweight[(k * C + c) * 9 + t] += dtaps[(t * K + k) * C + c];
}

inline std::size_t count(std::int64_t n) { return static_cast<std::size_t>(n); }

// Padded batch layout for the 3x3 path: each image becomes a [H+2, W+2] plane plus 2 elements of slack, planes
// of the N images back to back in each channel's row: padded[C, N * plane]. Output column j (image j / plane,
// pixel (y, x) at j % plane = y * Wp + x) reads padded[c, j + r * Wp + s]; `columns` stops 2 * Wp + 2 short of
// the end so that the last tap's window stays inside the row.
struct PaddedLayout {
  std::int64_t N, H, W, Wp, plane;
  PaddedLayout(std::int64_t n, std::int64_t h, std::int64_t w) : N(n), H(h), W(w), Wp(w + 2), plane((h + 2) * (w + 2) + 2) {}
  std::int64_t row() const { return N * plane; }
  std::int64_t columns() const { return N * plane - (2 * Wp + 2); }
  static std::int64_t tap_shift(std::int64_t tap, std::int64_t wp) { return (tap / 3) * wp + tap % 3; }
};

// images[N, C, H, W] -> padded[C, N * plane] (zeros around each image).
template <class T>
void pad_batch(const T* images, std::int64_t C, const PaddedLayout& L, T* padded) {
  std::fill(padded, padded + C * L.row(), T(0));
#pragma omp parallel for collapse(2) if (parallel_worth(C * L.N * L.H * L.W))
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t n = 0; n < L.N; ++n)
      for (std::int64_t y = 0; y < L.H; ++y) {
        const T* src = images + ((n * C + c) * L.H + y) * L.W;
        std::copy(src, src + L.W, padded + c * L.row() + n * L.plane + (y + 1) * L.Wp + 1);
      }
}

}  // namespace conv_detail

// The fp32 / fp64 paths above; a bf16 scope sends every float convolution to oneDNN instead.
enum class ConvPath { pointwise, winograd, shifted_gemm, im2col };

template <class T>
ConvPath conv_path(const nn::Conv2dDims& d) {
  if (conv_detail::is_pointwise(d)) return ConvPath::pointwise;
  if (std::is_same_v<T, float> && winograd::worth(d)) return ConvPath::winograd;
  if (conv_detail::is_3x3_same(d)) return ConvPath::shifted_gemm;
  return ConvPath::im2col;
}

// out[N, K, P, Q] = conv(in[N, C, H, W], weight[K, C, R, S]) + bias[K] (bias may be null)
template <class T>
void conv2d_forward(Workspace& workspace, T* out, const T* in, const T* weight, const T* bias, const nn::Conv2dDims& d) {
  using namespace conv_detail;
  const auto N = d.batch, C = d.in_channels, H = d.height, W = d.width, K = d.out_channels;
  const auto P = d.out_height(), Q = d.out_width();
  const auto in_image = C * H * W, out_image = K * P * Q;
  if constexpr (std::is_same_v<T, float>) {
#if DREAMBOOTH_WITH_ONEDNN
    if (onednn_bf16()) return conv2d_forward_onednn(out, in, weight, bias, d, dnnl::memory::data_type::bf16);
#endif
    if (conv_path<T>(d) == ConvPath::winograd) return winograd::conv3x3_forward(workspace, out, in, weight, bias, d);
  }
  const ConvPath path = conv_path<T>(d);
  if (path == ConvPath::pointwise) {
    for (std::int64_t n = 0; n < N; ++n)
      gemm<T>(false, false, K, H * W, C, T(1), weight, C, in + n * in_image, H * W, T(0), out + n * out_image, H * W);
  } else if (path == ConvPath::shifted_gemm) {
    const PaddedLayout L(N, H, W);
    const auto [taps, padded, wide] = workspace.take<T, 3>({count(9 * K * C), count(C * L.row()), count(K * L.row())});
    weight_to_taps(weight, K, C, taps);
    pad_batch(in, C, L, padded);
    for (std::int64_t t = 0; t < 9; ++t)
      gemm<T>(false, false, K, L.columns(), C, T(1), taps + t * K * C, C, padded + L.tap_shift(t, L.Wp), L.row(), t == 0 ? T(0) : T(1), wide,
              L.row());
#pragma omp parallel for collapse(2) if (parallel_worth(N * K * H * W))
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k)
        for (std::int64_t y = 0; y < H; ++y) std::copy_n(wide + k * L.row() + n * L.plane + y * L.Wp, W, out + n * out_image + (k * H + y) * W);
  } else {
    const auto patch = C * d.kernel_h * d.kernel_w, PQ = P * Q, group = im2col_group<T>(d);
    const auto [columns, wide] = workspace.take<T, 2>({count(patch * group * PQ), count(K * group * PQ)});
    for (std::int64_t n0 = 0; n0 < N; n0 += group) {
      const auto g = std::min(group, N - n0), ld = g * PQ;
      for (std::int64_t i = 0; i < g; ++i) im2col(in + (n0 + i) * in_image, d, columns + i * PQ, ld);
      gemm<T>(false, false, K, ld, patch, T(1), weight, patch, columns, ld, T(0), wide, ld);
#pragma omp parallel for collapse(2) if (parallel_worth(g * K * PQ))
      for (std::int64_t i = 0; i < g; ++i)
        for (std::int64_t k = 0; k < K; ++k) std::copy_n(wide + k * ld + i * PQ, PQ, out + (n0 + i) * out_image + k * PQ);
    }
  }
  if (bias) {
#pragma omp parallel for collapse(2) if (parallel_worth(N * K * P * Q))
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k) {
        T* o = out + n * out_image + k * P * Q;
        for (std::int64_t i = 0; i < P * Q; ++i) o[i] += bias[k];
      }
  }
}

// din[N, C, H, W] (assigned), dweight[K, C, R, S] and dbias[K] (accumulated); any may be null.
template <class T>
void conv2d_backward(Workspace& workspace, T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::Conv2dDims& d) {
  using namespace conv_detail;
  const auto N = d.batch, C = d.in_channels, H = d.height, W = d.width, K = d.out_channels;
  const auto P = d.out_height(), Q = d.out_width();
  const auto in_image = C * H * W, out_image = K * P * Q;
  if (dbias) {
#pragma omp parallel for if (parallel_worth(N * K * P * Q))
    for (std::int64_t k = 0; k < K; ++k) {
      T sum = 0;
      for (std::int64_t n = 0; n < N; ++n) {
        const T* g = dout + n * out_image + k * P * Q;
        for (std::int64_t i = 0; i < P * Q; ++i) sum += g[i];
      }
      dbias[k] += sum;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
#if DREAMBOOTH_WITH_ONEDNN
    if (onednn_bf16()) return conv2d_backward_onednn(din, dweight, dout, in, weight, d, dnnl::memory::data_type::bf16);
#endif
    if (conv_path<T>(d) == ConvPath::winograd) {
      if (dweight) winograd::conv3x3_backward_filter(workspace, dweight, dout, in, d);
      if (din) winograd::conv3x3_backward_data(workspace, din, dout, weight, d);
      return;
    }
  }
  const ConvPath path = conv_path<T>(d);
  if (path == ConvPath::pointwise) {
    for (std::int64_t n = 0; n < N; ++n) {
      if (din) gemm<T>(true, false, C, H * W, K, T(1), weight, C, dout + n * out_image, H * W, T(0), din + n * in_image, H * W);
      if (dweight) gemm<T>(false, true, K, C, H * W, T(1), dout + n * out_image, H * W, in + n * in_image, H * W, T(1), dweight, C);
    }
  } else if (path == ConvPath::shifted_gemm) {
    const PaddedLayout L(N, H, W);
    // dwide: dout laid out like the forward's wide output, [K, N * plane], zeros in the padding columns; then the
    // filter pass's padded input and tap gradients, the data pass's taps and padded input gradient.
    const std::int64_t filter = dweight ? 1 : 0, data = din ? 1 : 0;
    const auto [dwide, padded, dtaps, taps, dpadded] = workspace.take<T, 5>(
        {count(K * L.row()), count(filter * C * L.row()), count(filter * 9 * K * C), count(data * 9 * K * C), count(data * C * L.row())});
    std::fill(dwide, dwide + K * L.row(), T(0));
#pragma omp parallel for collapse(2) if (parallel_worth(N * K * H * W))
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k)
        for (std::int64_t y = 0; y < H; ++y) std::copy_n(dout + n * out_image + (k * H + y) * W, W, dwide + k * L.row() + n * L.plane + y * L.Wp);
    if (dweight) {
      pad_batch(in, C, L, padded);
      for (std::int64_t t = 0; t < 9; ++t)
        gemm<T>(false, true, K, C, L.columns(), T(1), dwide, L.row(), padded + L.tap_shift(t, L.Wp), L.row(), T(0), dtaps + t * K * C, C);
      accumulate_taps(dtaps, K, C, dweight);
    }
    if (din) {
      weight_to_taps(weight, K, C, taps);
      std::fill(dpadded, dpadded + C * L.row(), T(0));
      for (std::int64_t t = 0; t < 9; ++t)
        gemm<T>(true, false, C, L.columns(), K, T(1), taps + t * K * C, C, dwide, L.row(), T(1), dpadded + L.tap_shift(t, L.Wp), L.row());
#pragma omp parallel for collapse(2) if (parallel_worth(N * C * H * W))
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t y = 0; y < H; ++y)
            std::copy_n(dpadded + c * L.row() + n * L.plane + (y + 1) * L.Wp + 1, W, din + n * in_image + (c * H + y) * W);
    }
  } else {
    const auto patch = C * d.kernel_h * d.kernel_w, PQ = P * Q, group = im2col_group<T>(d);
    const auto [columns, dwide] = workspace.take<T, 2>({count(patch * group * PQ), count(K * group * PQ)});
    for (std::int64_t n0 = 0; n0 < N; n0 += group) {
      const auto g = std::min(group, N - n0), ld = g * PQ;
#pragma omp parallel for collapse(2) if (parallel_worth(g * K * PQ))
      for (std::int64_t i = 0; i < g; ++i)
        for (std::int64_t k = 0; k < K; ++k) std::copy_n(dout + (n0 + i) * out_image + k * PQ, PQ, dwide + k * ld + i * PQ);
      if (dweight) {
        for (std::int64_t i = 0; i < g; ++i) im2col(in + (n0 + i) * in_image, d, columns + i * PQ, ld);
        gemm<T>(false, true, K, patch, ld, T(1), dwide, ld, columns, ld, T(1), dweight, patch);
      }
      if (din) {
        gemm<T>(true, false, patch, ld, K, T(1), weight, patch, dwide, ld, T(0), columns, ld);
        std::fill(din + n0 * in_image, din + (n0 + g) * in_image, T(0));
        for (std::int64_t i = 0; i < g; ++i) col2im(columns + i * PQ, d, din + (n0 + i) * in_image, ld);
      }
    }
  }
}

}  // namespace dreambooth::cpu
