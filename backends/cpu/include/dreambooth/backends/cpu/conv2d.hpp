// 2-D convolution on the CPU: forward, backward data and backward filter.
//
// Three paths, all reduced to GEMMs:
// - 1x1, stride 1, no padding: one GEMM per image, weight[K, C] * in[C, HW].
// - 3x3, stride 1, padding 1 ("shifted GEMM"): the image is zero-padded once to [C, H+2, W+2]; the output is
//   computed over the padded width, [K, H * (W+2)], as the sum over the 9 taps (r, s) of
//   weight_rs[K, C] * padded[C, (r * (W+2) + s) + j]: every tap is a plain GEMM over a shifted window of the
//   padded image, so no im2col copy (9x the input) is ever made. The 2 extra columns per row are dropped.
//   Backward data and filter use the same windows.
// - anything else: im2col per image, then a GEMM (col2im for backward data).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "dreambooth/backends/cpu/gemm.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu {

namespace conv_detail {

template <class T>
void im2col(const T* image, const nn::Conv2dDims& d, T* columns) {  // image[C, H, W] -> columns[C*R*S, P*Q]
  const auto P = d.out_height(), Q = d.out_width();
  for (std::int64_t c = 0; c < d.in_channels; ++c)
    for (std::int64_t r = 0; r < d.kernel_h; ++r)
      for (std::int64_t s = 0; s < d.kernel_w; ++s) {
        T* row = columns + ((c * d.kernel_h + r) * d.kernel_w + s) * P * Q;
        for (std::int64_t p = 0; p < P; ++p) {
          const std::int64_t y = p * d.stride_h - d.pad_h + r;
          for (std::int64_t q = 0; q < Q; ++q) {
            const std::int64_t x = q * d.stride_w - d.pad_w + s;
            row[p * Q + q] = (y >= 0 && y < d.height && x >= 0 && x < d.width) ? image[(c * d.height + y) * d.width + x] : T(0);
          }
        }
      }
}

template <class T>
void col2im(const T* columns, const nn::Conv2dDims& d, T* image) {  // adds columns[C*R*S, P*Q] into image[C, H, W]
  const auto P = d.out_height(), Q = d.out_width();
  for (std::int64_t c = 0; c < d.in_channels; ++c)
    for (std::int64_t r = 0; r < d.kernel_h; ++r)
      for (std::int64_t s = 0; s < d.kernel_w; ++s) {
        const T* row = columns + ((c * d.kernel_h + r) * d.kernel_w + s) * P * Q;
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

inline bool is_pointwise(const nn::Conv2dDims& d) {
  return d.kernel_h == 1 && d.kernel_w == 1 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 0 && d.pad_w == 0;
}
inline bool is_3x3_same(const nn::Conv2dDims& d) {
  return d.kernel_h == 3 && d.kernel_w == 3 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 1 && d.pad_w == 1;
}

// weight[K, C, 3, 3] -> taps[9, K, C] (and back, accumulating, for the filter gradient).
template <class T>
std::vector<T> weight_to_taps(const T* weight, std::int64_t K, std::int64_t C) {
  std::vector<T> taps(static_cast<std::size_t>(9 * K * C));
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t t = 0; t < 9; ++t) taps[static_cast<std::size_t>((t * K + k) * C + c)] = weight[(k * C + c) * 9 + t];
  return taps;
}

// Padded image layout for the 3x3 path: [C, H+2, W+2] plus 2 elements of slack so the last tap's window
// (offset 2 * (W+2) + 2, length H * (W+2)) stays inside the channel's block.
struct PaddedLayout {
  std::int64_t H, W, Wp, plane;  // Wp = W + 2; plane = (H + 2) * Wp + 2 elements per channel
  PaddedLayout(std::int64_t h, std::int64_t w) : H(h), W(w), Wp(w + 2), plane((h + 2) * (w + 2) + 2) {}
  std::int64_t wide() const { return H * Wp; }  // columns of an output computed over the padded width
};

template <class T>
void pad_image(const T* image, std::int64_t C, const PaddedLayout& L, T* padded) {  // [C,H,W] -> [C, plane]
  std::fill(padded, padded + C * L.plane, T(0));
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < L.H; ++y)
      std::copy(image + (c * L.H + y) * L.W, image + (c * L.H + y + 1) * L.W, padded + c * L.plane + (y + 1) * L.Wp + 1);
}

}  // namespace conv_detail

// out[N, K, P, Q] = conv(in[N, C, H, W], weight[K, C, R, S]) + bias[K] (bias may be null)
template <class T>
void conv2d_forward(T* out, const T* in, const T* weight, const T* bias, const nn::Conv2dDims& d) {
  using namespace conv_detail;
  const auto N = d.batch, C = d.in_channels, H = d.height, W = d.width, K = d.out_channels;
  const auto P = d.out_height(), Q = d.out_width();
  const auto in_image = C * H * W, out_image = K * P * Q;
  if (is_pointwise(d)) {
    for (std::int64_t n = 0; n < N; ++n) gemm<T>(false, false, K, H * W, C, T(1), weight, C, in + n * in_image, H * W, T(0), out + n * out_image, H * W);
  } else if (is_3x3_same(d)) {
    const PaddedLayout L(H, W);
    const std::vector<T> taps = weight_to_taps(weight, K, C);
    std::vector<T> padded(static_cast<std::size_t>(C * L.plane)), wide(static_cast<std::size_t>(K * L.wide()));
    for (std::int64_t n = 0; n < N; ++n) {
      pad_image(in + n * in_image, C, L, padded.data());
      for (std::int64_t t = 0; t < 9; ++t) {
        const std::int64_t shift = (t / 3) * L.Wp + (t % 3);
        gemm<T>(false, false, K, L.wide(), C, T(1), taps.data() + t * K * C, C, padded.data() + shift, L.plane, t == 0 ? T(0) : T(1), wide.data(), L.wide());
      }
      T* o = out + n * out_image;
#pragma omp parallel for
      for (std::int64_t k = 0; k < K; ++k)
        for (std::int64_t y = 0; y < H; ++y) std::copy_n(wide.data() + k * L.wide() + y * L.Wp, W, o + (k * H + y) * W);
    }
  } else {
    const auto patch = C * d.kernel_h * d.kernel_w;
    std::vector<T> columns(static_cast<std::size_t>(patch * P * Q));
    for (std::int64_t n = 0; n < N; ++n) {
      im2col(in + n * in_image, d, columns.data());
      gemm<T>(false, false, K, P * Q, patch, T(1), weight, patch, columns.data(), P * Q, T(0), out + n * out_image, P * Q);
    }
  }
  if (bias) {
#pragma omp parallel for collapse(2)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k) {
        T* o = out + n * out_image + k * P * Q;
        for (std::int64_t i = 0; i < P * Q; ++i) o[i] += bias[k];
      }
  }
}

// din[N, C, H, W] (assigned), dweight[K, C, R, S] and dbias[K] (accumulated); any may be null.
template <class T>
void conv2d_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::Conv2dDims& d) {
  using namespace conv_detail;
  const auto N = d.batch, C = d.in_channels, H = d.height, W = d.width, K = d.out_channels;
  const auto P = d.out_height(), Q = d.out_width();
  const auto in_image = C * H * W, out_image = K * P * Q;
  if (dbias) {
    for (std::int64_t k = 0; k < K; ++k) {
      T sum = 0;
      for (std::int64_t n = 0; n < N; ++n) {
        const T* g = dout + n * out_image + k * P * Q;
        for (std::int64_t i = 0; i < P * Q; ++i) sum += g[i];
      }
      dbias[k] += sum;
    }
  }
  if (is_pointwise(d)) {
    for (std::int64_t n = 0; n < N; ++n) {
      if (din) gemm<T>(true, false, C, H * W, K, T(1), weight, C, dout + n * out_image, H * W, T(0), din + n * in_image, H * W);
      if (dweight) gemm<T>(false, true, K, C, H * W, T(1), dout + n * out_image, H * W, in + n * in_image, H * W, T(1), dweight, C);
    }
  } else if (is_3x3_same(d)) {
    const PaddedLayout L(H, W);
    const std::vector<T> taps = weight_to_taps(weight, K, C);
    std::vector<T> padded(static_cast<std::size_t>(C * L.plane)), dpadded(static_cast<std::size_t>(C * L.plane));
    std::vector<T> dwide(static_cast<std::size_t>(K * L.wide()), T(0));  // dout over the padded width, zeros in the 2 extra columns
    std::vector<T> dtaps(dweight ? static_cast<std::size_t>(9 * K * C) : 0, T(0));
    for (std::int64_t n = 0; n < N; ++n) {
      const T* g = dout + n * out_image;
#pragma omp parallel for
      for (std::int64_t k = 0; k < K; ++k)
        for (std::int64_t y = 0; y < H; ++y) std::copy_n(g + (k * H + y) * W, W, dwide.data() + k * L.wide() + y * L.Wp);
      if (dweight) {
        pad_image(in + n * in_image, C, L, padded.data());
        for (std::int64_t t = 0; t < 9; ++t) {
          const std::int64_t shift = (t / 3) * L.Wp + (t % 3);
          gemm<T>(false, true, K, C, L.wide(), T(1), dwide.data(), L.wide(), padded.data() + shift, L.plane, T(1), dtaps.data() + t * K * C, C);
        }
      }
      if (din) {
        std::fill(dpadded.begin(), dpadded.end(), T(0));
        for (std::int64_t t = 0; t < 9; ++t) {
          const std::int64_t shift = (t / 3) * L.Wp + (t % 3);
          gemm<T>(true, false, C, L.wide(), K, T(1), taps.data() + t * K * C, C, dwide.data(), L.wide(), T(1), dpadded.data() + shift, L.plane);
        }
        T* di = din + n * in_image;
#pragma omp parallel for
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t y = 0; y < H; ++y) std::copy_n(dpadded.data() + c * L.plane + (y + 1) * L.Wp + 1, W, di + (c * H + y) * W);
      }
    }
    if (dweight)
      for (std::int64_t k = 0; k < K; ++k)
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t t = 0; t < 9; ++t) dweight[(k * C + c) * 9 + t] += dtaps[static_cast<std::size_t>((t * K + k) * C + c)];
  } else {
    const auto patch = C * d.kernel_h * d.kernel_w;
    std::vector<T> columns(static_cast<std::size_t>(patch * P * Q));
    for (std::int64_t n = 0; n < N; ++n) {
      if (dweight) {
        im2col(in + n * in_image, d, columns.data());
        gemm<T>(false, true, K, patch, P * Q, T(1), dout + n * out_image, P * Q, columns.data(), P * Q, T(1), dweight, patch);
      }
      if (din) {
        gemm<T>(true, false, patch, P * Q, K, T(1), weight, patch, dout + n * out_image, P * Q, T(0), columns.data(), P * Q);
        std::fill(din + n * in_image, din + (n + 1) * in_image, T(0));
        col2im(columns.data(), d, din + n * in_image);
      }
    }
  }
}

}  // namespace dreambooth::cpu
