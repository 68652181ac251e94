// Winograd F(2x2, 3x3) for the float 3x3 convolutions (stride 1, padding 1) on the CPU: forward, backward data and
// backward filter, each as 16 GEMMs over transformed tiles, 2.25x fewer multiplications than the direct convolution.
//
// Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), with the interpolation points 0, 1, -1, inf:
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A     for a 4x4 input tile d, a 3x3 filter g and a 2x2 output tile Y,
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The transforms' coefficients are 0, +-1 and 1/2, so the arithmetic error stays near the direct convolution's
// (relative L2 1.5e-7 to 4.6e-7 against a double reference, within 2x the direct path's; tests/unit/test_winograd.cpp).
//
// Layout. Output tile (n, ty, tx) covers rows 2ty..2ty+1 and columns 2tx..2tx+1 of image n (cut at odd sizes); its
// input tile is rows 2ty-1..2ty+2, columns 2tx-1..2tx+2, zero outside the image. The batch's tile rows (n, ty) are
// processed in chunks; a chunk's transformed input is V[16][C][T] (T = tile rows x TX columns), the transformed filter
// U[16][K][C], the products M[16][K][T] = U[xi] V[xi], one GEMM per point xi.
// - forward: out = A^T M A per tile (+ bias);
// - backward data: the forward with the filter flipped and transposed, g'[c][k] = rot180(g[k][c]), whose transform is
//   U's with the points' rows and columns 0 and 3 swapped (G rot180(g) G^T = P G g G^T P^T): the same U, transposed;
// - backward filter: dU[xi] = sum over tiles of dM[xi] V[xi]^T with dM = A dY A^T, then dW = G^T dU G.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "dreambooth/backends/cpu/gemm.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/backends/cpu/workspace.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu::winograd {

inline constexpr std::int64_t kPoints = 16;  // 4x4 transformed tile

// Whether a convolution is one this file computes: float 3x3, stride 1, padding 1 all round.
inline bool applies(const nn::Conv2dDims& d) {
  return d.kernel_h == 3 && d.kernel_w == 3 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 1 && d.pad_w == 1 && d.symmetric();
}

// Whether it is faster than the direct paths (measured on 2 Zen 3 cores, forward + backward, against the shifted GEMM:
// 2.2x at SD's 64x64 level, 2x at 32x32, 1.6x at 16x16 with 2 images and 1.2x with one (64 tiles); slower at 8x8,
// where transforming the 1280x1280 filters costs more than the products save, and with 32 channels, where the
// transforms dominate).
inline bool worth(const nn::Conv2dDims& d) {
  const std::int64_t tiles = d.batch * ((d.height + 1) / 2) * ((d.width + 1) / 2);
  return applies(d) && d.in_channels >= 64 && d.out_channels >= 64 && tiles >= 64;
}

struct Tiling {
  std::int64_t N, H, W, TY, TX;
  Tiling(std::int64_t n, std::int64_t h, std::int64_t w) : N(n), H(h), W(w), TY((h + 1) / 2), TX((w + 1) / 2) {}
  std::int64_t rows() const { return N * TY; }  // tile rows of the batch, (n, ty)
  // Tile rows per chunk: a chunk's V or M for `channels` channels stays near 32 MiB (at least one row).
  std::int64_t chunk_rows(std::int64_t channels) const {
    const std::int64_t per_row = kPoints * channels * TX * static_cast<std::int64_t>(sizeof(float));
    return std::clamp<std::int64_t>((std::int64_t{32} << 20) / per_row, 1, rows());
  }
};

// U[16][K][C] = G g G^T for every filter g = weight[k][c] of weight[K, C, 3, 3]. Each k's filters are first laid out
// tap by tap, [9][C], so that the transform runs over c on contiguous lanes (gathering the taps at stride 9 ran at a
// quarter of the speed).
inline void transform_filter(const float* weight, std::int64_t K, std::int64_t C, float* U) {
#pragma omp parallel if (parallel_worth(K * C * 64))
  {
    std::vector<float> taps(static_cast<std::size_t>(9 * C));
#pragma omp for schedule(static)
    for (std::int64_t k = 0; k < K; ++k) {
      const float* w = weight + k * C * 9;
      for (std::int64_t c = 0; c < C; ++c)
        for (int t = 0; t < 9; ++t) taps[t * C + c] = w[c * 9 + t];
      const float* g = taps.data();  // g[(r * 3 + s) * C + c]
      float* u = U + k * C;
      const std::int64_t stride = K * C;
#pragma omp simd
      for (std::int64_t c = 0; c < C; ++c) {
        float h[3][4];  // g G^T
        for (int r = 0; r < 3; ++r) {
          const float g0 = g[(r * 3) * C + c], g1 = g[(r * 3 + 1) * C + c], g2 = g[(r * 3 + 2) * C + c];
          h[r][0] = g0;
          h[r][1] = 0.5f * (g0 + g1 + g2);
          h[r][2] = 0.5f * (g0 - g1 + g2);
          h[r][3] = g2;
        }
        for (int b = 0; b < 4; ++b) {
          u[(0 * 4 + b) * stride + c] = h[0][b];
          u[(1 * 4 + b) * stride + c] = 0.5f * (h[0][b] + h[1][b] + h[2][b]);
          u[(2 * 4 + b) * stride + c] = 0.5f * (h[0][b] - h[1][b] + h[2][b]);
          u[(3 * 4 + b) * stride + c] = h[2][b];
        }
      }
    }
  }
}

// The point whose filter transform, transposed, is the flipped filter's: rows and columns 0 and 3 swapped.
constexpr std::int64_t flipped_point(std::int64_t xi) {
  constexpr std::int64_t swap[4] = {3, 1, 2, 0};
  return swap[xi / 4] * 4 + swap[xi % 4];
}

// dweight[K, C, 3, 3] += G^T dU G for dU[16][K][C]; computed over c on contiguous lanes into [9][C], then added.
inline void accumulate_filter_gradient(const float* dU, std::int64_t K, std::int64_t C, float* dweight) {
#pragma omp parallel if (parallel_worth(K * C * 64))
  {
    std::vector<float> taps(static_cast<std::size_t>(9 * C));
#pragma omp for schedule(static)
    for (std::int64_t k = 0; k < K; ++k) {
      const float* u = dU + k * C;
      const std::int64_t stride = K * C;
      float* g = taps.data();  // g[(r * 3 + s) * C + c]
#pragma omp simd
      for (std::int64_t c = 0; c < C; ++c) {
        float q[4][3];  // dU G
        for (int a = 0; a < 4; ++a) {
          const float u0 = u[(a * 4 + 0) * stride + c], u1 = u[(a * 4 + 1) * stride + c];
          const float u2 = u[(a * 4 + 2) * stride + c], u3 = u[(a * 4 + 3) * stride + c];
          q[a][0] = u0 + 0.5f * (u1 + u2);
          q[a][1] = 0.5f * (u1 - u2);
          q[a][2] = 0.5f * (u1 + u2) + u3;
        }
        for (int s = 0; s < 3; ++s) {
          g[(0 * 3 + s) * C + c] = q[0][s] + 0.5f * (q[1][s] + q[2][s]);
          g[(1 * 3 + s) * C + c] = 0.5f * (q[1][s] - q[2][s]);
          g[(2 * 3 + s) * C + c] = 0.5f * (q[1][s] + q[2][s]) + q[3][s];
        }
      }
      float* w = dweight + k * C * 9;
      for (std::int64_t c = 0; c < C; ++c)
        for (int t = 0; t < 9; ++t) w[c * 9 + t] += g[t * C + c];
    }
  }
}

// even[p] = row[first + 2p], odd[p] = row[first + 2p + 1] for p < count, zero outside the row's `width` columns or
// for a null row (above or below the image).
inline void split_columns(const float* row, std::int64_t width, std::int64_t first, std::int64_t count, float* even, float* odd) {
  for (std::int64_t p = 0; p < count; ++p) {
    const std::int64_t xe = first + 2 * p, xo = xe + 1;
    even[p] = (row && xe >= 0 && xe < width) ? row[xe] : 0.0f;
    odd[p] = (row && xo >= 0 && xo < width) ? row[xo] : 0.0f;
  }
}

// V[16][C][ldv] (columns from 0) = B^T d B for the tiles of tile rows [row0, row0 + rows) of images[N, C, H, W].
inline void transform_input(const float* images, std::int64_t C, const Tiling& t, std::int64_t row0, std::int64_t rows, float* V, std::int64_t ldv) {
  const std::int64_t TX = t.TX, plane = t.H * t.W, stride = C * ldv;
#pragma omp parallel if (parallel_worth(C * rows * TX * 16))
  {
    // The tile's 4 input rows, each split into even and odd padded columns: padded column p = x + 1.
    std::vector<float> split(static_cast<std::size_t>(8 * (TX + 1)));
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t n = (row0 + i) / t.TY, ty = (row0 + i) % t.TY;
        float* e[4];
        float* o[4];
        for (int j = 0; j < 4; ++j) {
          e[j] = split.data() + (2 * j) * (TX + 1);
          o[j] = split.data() + (2 * j + 1) * (TX + 1);
          const std::int64_t y = 2 * ty - 1 + j;
          split_columns((y >= 0 && y < t.H) ? images + n * C * plane + c * plane + y * t.W : nullptr, t.W, -1, TX + 1, e[j], o[j]);
        }
        float* out = V + c * ldv + i * TX;
#pragma omp simd
        for (std::int64_t x = 0; x < TX; ++x) {
          float m[4][4];  // d B, row by row
          for (int j = 0; j < 4; ++j) {
            const float d0 = e[j][x], d1 = o[j][x], d2 = e[j][x + 1], d3 = o[j][x + 1];
            m[j][0] = d0 - d2;
            m[j][1] = d1 + d2;
            m[j][2] = d2 - d1;
            m[j][3] = d1 - d3;
          }
          for (int b = 0; b < 4; ++b) {
            out[(0 * 4 + b) * stride + x] = m[0][b] - m[2][b];
            out[(1 * 4 + b) * stride + x] = m[1][b] + m[2][b];
            out[(2 * 4 + b) * stride + x] = m[2][b] - m[1][b];
            out[(3 * 4 + b) * stride + x] = m[1][b] - m[3][b];
          }
        }
      }
  }
}

// images[N, K, H, W] (tile rows [row0, row0 + rows)) = A^T M A (+ bias[k]) for M[16][K][ldm].
inline void transform_output(const float* M, std::int64_t ldm, std::int64_t K, const float* bias, const Tiling& t, std::int64_t row0,
                             std::int64_t rows, float* images) {
  const std::int64_t TX = t.TX, plane = t.H * t.W, stride = K * ldm;
#pragma omp parallel if (parallel_worth(K * rows * TX * 16))
  {
    std::vector<float> pair(static_cast<std::size_t>(4 * TX));  // the two output rows, 2 TX columns each
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t n = (row0 + i) / t.TY, ty = (row0 + i) % t.TY;
        const float* m = M + k * ldm + i * TX;
        const float beta = bias ? bias[k] : 0.0f;
        float* y0 = pair.data();
        float* y1 = pair.data() + 2 * TX;
#pragma omp simd
        for (std::int64_t x = 0; x < TX; ++x) {
          float s[2][4];  // A^T M
          for (int b = 0; b < 4; ++b) {
            const float m0 = m[(0 * 4 + b) * stride + x], m1 = m[(1 * 4 + b) * stride + x];
            const float m2 = m[(2 * 4 + b) * stride + x], m3 = m[(3 * 4 + b) * stride + x];
            s[0][b] = m0 + m1 + m2;
            s[1][b] = m1 - m2 - m3;
          }
          y0[2 * x] = s[0][0] + s[0][1] + s[0][2] + beta;
          y0[2 * x + 1] = s[0][1] - s[0][2] - s[0][3] + beta;
          y1[2 * x] = s[1][0] + s[1][1] + s[1][2] + beta;
          y1[2 * x + 1] = s[1][1] - s[1][2] - s[1][3] + beta;
        }
        float* dst = images + n * K * plane + k * plane + 2 * ty * t.W;
        std::copy_n(y0, t.W, dst);
        if (2 * ty + 1 < t.H) std::copy_n(y1, t.W, dst + t.W);
      }
  }
}

// dM[16][K][ldm] = A dY A^T for the tiles of tile rows [row0, row0 + rows) of dout[N, K, H, W] (zero outside).
inline void transform_output_gradient(const float* dout, std::int64_t K, const Tiling& t, std::int64_t row0, std::int64_t rows, float* dM,
                                      std::int64_t ldm) {
  const std::int64_t TX = t.TX, plane = t.H * t.W, stride = K * ldm;
#pragma omp parallel if (parallel_worth(K * rows * TX * 16))
  {
    std::vector<float> split(static_cast<std::size_t>(4 * TX));  // the two rows' even and odd columns
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t n = (row0 + i) / t.TY, ty = (row0 + i) % t.TY;
        float* e[2];
        float* o[2];
        for (int j = 0; j < 2; ++j) {
          e[j] = split.data() + (2 * j) * TX;
          o[j] = split.data() + (2 * j + 1) * TX;
          const std::int64_t y = 2 * ty + j;
          split_columns(y < t.H ? dout + n * K * plane + k * plane + y * t.W : nullptr, t.W, 0, TX, e[j], o[j]);
        }
        float* out = dM + k * ldm + i * TX;
#pragma omp simd
        for (std::int64_t x = 0; x < TX; ++x) {
          float r[2][4];  // dY A^T
          for (int j = 0; j < 2; ++j) {
            r[j][0] = e[j][x];
            r[j][1] = e[j][x] + o[j][x];
            r[j][2] = e[j][x] - o[j][x];
            r[j][3] = -o[j][x];
          }
          for (int b = 0; b < 4; ++b) {
            out[(0 * 4 + b) * stride + x] = r[0][b];
            out[(1 * 4 + b) * stride + x] = r[0][b] + r[1][b];
            out[(2 * 4 + b) * stride + x] = r[0][b] - r[1][b];
            out[(3 * 4 + b) * stride + x] = -r[1][b];
          }
        }
      }
  }
}

// out[N, K, H, W] = the 3x3 convolution of in[N, C, H, W] with the filter transformed in U (+ bias): U[16][K][C], or
// for the backward data pass (flipped) the forward filter's U[16][C][K], used transposed with the points swapped.
// V and M hold a chunk's tiles: [16][C][columns] and [16][K][columns].
inline void convolve(float* out, const float* in, const float* U, bool flipped, const float* bias, std::int64_t C, std::int64_t K, const Tiling& t,
                     std::int64_t chunk, float* V, float* M) {
  const std::int64_t columns = chunk * t.TX;
  for (std::int64_t row0 = 0; row0 < t.rows(); row0 += chunk) {
    const std::int64_t rows = std::min(chunk, t.rows() - row0), T = rows * t.TX;
    transform_input(in, C, t, row0, rows, V, columns);
    for (std::int64_t xi = 0; xi < kPoints; ++xi) {
      const float* u = U + (flipped ? flipped_point(xi) : xi) * K * C;
      gemm<float>(flipped, false, K, T, C, 1.0f, u, flipped ? K : C, V + xi * C * columns, columns, 0.0f, M + xi * K * columns, columns);
    }
    transform_output(M, columns, K, bias, t, row0, rows, out);
  }
}

// A call's tiles and its workspace pieces: the filter's transform U[16][K][C] and a chunk's transformed tiles, V for
// the GEMMs' input side ([16][v_channels][columns]) and M for their output side ([16][m_channels][columns]).
struct Plan {
  Tiling t;
  std::int64_t chunk, columns;
  float *U, *V, *M;
  Plan(Workspace& workspace, const nn::Conv2dDims& d, std::int64_t v_channels, std::int64_t m_channels)
      : t(d.batch, d.height, d.width), chunk(t.chunk_rows(std::max(v_channels, m_channels))), columns(chunk * t.TX) {
    const auto n = [](std::int64_t v) { return static_cast<std::size_t>(v); };
    const auto pieces =
        workspace.take<float, 3>({n(kPoints * d.out_channels * d.in_channels), n(kPoints * v_channels * columns), n(kPoints * m_channels * columns)});
    U = pieces[0];
    V = pieces[1];
    M = pieces[2];
  }
};

// out[N, K, H, W] = conv(in[N, C, H, W], weight[K, C, 3, 3]) + bias[K] (bias may be null).
inline void conv3x3_forward(Workspace& workspace, float* out, const float* in, const float* weight, const float* bias, const nn::Conv2dDims& d) {
  const Plan p(workspace, d, d.in_channels, d.out_channels);
  transform_filter(weight, d.out_channels, d.in_channels, p.U);
  convolve(out, in, p.U, false, bias, d.in_channels, d.out_channels, p.t, p.chunk, p.V, p.M);
}

// din[N, C, H, W] (assigned) from dout[N, K, H, W] and weight[K, C, 3, 3].
inline void conv3x3_backward_data(Workspace& workspace, float* din, const float* dout, const float* weight, const nn::Conv2dDims& d) {
  const Plan p(workspace, d, d.out_channels, d.in_channels);
  transform_filter(weight, d.out_channels, d.in_channels, p.U);
  convolve(din, dout, p.U, true, nullptr, d.out_channels, d.in_channels, p.t, p.chunk, p.V, p.M);
}

// dweight[K, C, 3, 3] += the filter gradient from dout[N, K, H, W] and in[N, C, H, W].
inline void conv3x3_backward_filter(Workspace& workspace, float* dweight, const float* dout, const float* in, const nn::Conv2dDims& d) {
  const std::int64_t C = d.in_channels, K = d.out_channels;
  const Plan p(workspace, d, C, K);  // U holds dU here
  for (std::int64_t row0 = 0; row0 < p.t.rows(); row0 += p.chunk) {
    const std::int64_t rows = std::min(p.chunk, p.t.rows() - row0), T = rows * p.t.TX;
    transform_input(in, C, p.t, row0, rows, p.V, p.columns);
    transform_output_gradient(dout, K, p.t, row0, rows, p.M, p.columns);
    for (std::int64_t xi = 0; xi < kPoints; ++xi)
      gemm<float>(false, true, K, C, T, 1.0f, p.M + xi * K * p.columns, p.columns, p.V + xi * C * p.columns, p.columns, row0 == 0 ? 0.0f : 1.0f,
                  p.U + xi * K * C, C);
  }
  accumulate_filter_gradient(p.U, K, C, dweight);
}

}  // namespace dreambooth::cpu::winograd
