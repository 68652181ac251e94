// Winograd F(2x2, 3x3) and F(4x4, 3x3) for the float 3x3 convolutions (stride 1, padding 1) on the CPU: forward,
// backward data and backward filter, each as one GEMM per transformed point over the tiles. F(2x2, 3x3) does 2.25x
// fewer multiplications than the direct convolution, F(4x4, 3x3) 4x fewer.
//
// Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): for an a x a input tile d (a = m + 2), a
// 3x3 filter g and an m x m output tile Y,
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A.
// Each variant below gives its one-dimensional transforms; the two-dimensional ones apply them to the rows, then to the
// columns.
// - F(2x2, 3x3), the interpolation points 0, 1, -1, inf: the coefficients are 0, +-1 and 1/2, so the arithmetic error
//   stays near the direct convolution's (relative L2 2e-7 to 5e-7 against a double reference).
// - F(4x4, 3x3), the points 0, 1, -1, 2, -2, inf (Lavin's matrices): coefficients up to 8 and 1/24, relative L2 1.3e-6
//   to 3.1e-6 (tests/unit/test_winograd.cpp bounds both at 1e-5).
//
// Layout. Output tile (n, ty, tx) covers rows m ty..m ty + m - 1 and columns m tx..m tx + m - 1 of image n (cut at the
// image's edge); its input tile is rows m ty - 1..m ty + m, the same columns, zero outside the image. The batch's tile
// rows (n, ty) are processed in chunks; a chunk's transformed input is V[a^2][C][T] (T = tile rows x TX columns), the
// transformed filter U[a^2][K][C], the products M[a^2][K][T] = U[xi] V[xi], one GEMM per point xi.
// - forward: out = A^T M A per tile (+ bias);
// - backward data: the forward with the filter rotated by 180 degrees and transposed, g'[c][k] = rot180(g[k][c]): U
//   from the filter's taps in reverse order, used transposed;
// - backward filter: dU[xi] = sum over tiles of dM[xi] V[xi]^T with dM = A dY A^T, then dW = G^T dU G.
//
// The transforms run on packs of 8 lanes (tiles, or filters' channels) in GCC / Clang vector types, one code for both
// variants: written as generic `omp simd` loops over the tiles' small arrays, GCC 12 left them scalar, at the GEMMs'
// cost. Every buffer a pack reads is padded by a pack; a partial pack is stored lane by lane.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dreambooth/backends/cpu/gemm.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/backends/cpu/workspace.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu::winograd {

inline constexpr int kLanes = 8;
using Pack = float __attribute__((vector_size(kLanes * sizeof(float))));

[[gnu::always_inline]] inline Pack load(const float* p) {
  Pack v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// The first `lanes` lanes of v to p[0..lanes).
[[gnu::always_inline]] inline void store(float* p, Pack v, std::int64_t lanes) {
  if (lanes == kLanes) {
    std::memcpy(p, &v, sizeof v);
  } else {
    float lane[kLanes];
    std::memcpy(lane, &v, sizeof v);
    std::copy_n(lane, lanes, p);
  }
}
inline Pack broadcast(float v) { return Pack{} + v; }

// F(2x2, 3x3): d[4] -> B^T d, (g0, g1, g2) -> G g, s[4] -> A^T s, dy[2] -> A dy, u[4] -> G^T u.
struct F2x2 {
  static constexpr int m = 2, a = 4;
  [[gnu::always_inline]] static void input(const Pack* d, Pack* r) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
  [[gnu::always_inline]] static void filter(Pack g0, Pack g1, Pack g2, Pack* u) {
    u[0] = g0;
    u[1] = 0.5f * (g0 + g1 + g2);
    u[2] = 0.5f * (g0 - g1 + g2);
    u[3] = g2;
  }
  [[gnu::always_inline]] static void output(const Pack* s, Pack* y) {
    y[0] = s[0] + s[1] + s[2];
    y[1] = s[1] - s[2] - s[3];
  }
  [[gnu::always_inline]] static void output_gradient(const Pack* dy, Pack* r) {
    r[0] = dy[0];
    r[1] = dy[0] + dy[1];
    r[2] = dy[0] - dy[1];
    r[3] = -dy[1];
  }
  [[gnu::always_inline]] static void filter_gradient(const Pack* u, Pack* g) {
    g[0] = u[0] + 0.5f * (u[1] + u[2]);
    g[1] = 0.5f * (u[1] - u[2]);
    g[2] = 0.5f * (u[1] + u[2]) + u[3];
  }
};

// F(4x4, 3x3): B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
// G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1],
// A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
struct F4x4 {
  static constexpr int m = 4, a = 6;
  [[gnu::always_inline]] static void input(const Pack* d, Pack* r) {
    const Pack p = d[4] - 4.0f * d[2], q = d[3] - 4.0f * d[1];  // rows 1 and 2: p + q, p - q
    const Pack s = d[4] - d[2], t = 2.0f * (d[3] - d[1]);       // rows 3 and 4: s + t, s - t
    r[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    r[1] = p + q;
    r[2] = p - q;
    r[3] = s + t;
    r[4] = s - t;
    r[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
  }
  [[gnu::always_inline]] static void filter(Pack g0, Pack g1, Pack g2, Pack* u) {
    const Pack even = g0 + g2;
    const Pack far = g0 * (1.0f / 24) + g2 * (1.0f / 6), near = g1 * (1.0f / 12);
    u[0] = g0 * 0.25f;
    u[1] = -(even + g1) * (1.0f / 6);
    u[2] = -(even - g1) * (1.0f / 6);
    u[3] = far + near;
    u[4] = far - near;
    u[5] = g2;
  }
  [[gnu::always_inline]] static void output(const Pack* s, Pack* y) {
    const Pack a12 = s[1] + s[2], s12 = s[1] - s[2], a34 = s[3] + s[4], s34 = s[3] - s[4];
    y[0] = s[0] + a12 + a34;
    y[1] = s12 + 2.0f * s34;
    y[2] = a12 + 4.0f * a34;
    y[3] = s12 + 8.0f * s34 + s[5];
  }
  [[gnu::always_inline]] static void output_gradient(const Pack* dy, Pack* r) {
    const Pack e = dy[0] + dy[2], o = dy[1] + dy[3];
    const Pack e2 = dy[0] + 4.0f * dy[2], o2 = 2.0f * dy[1] + 8.0f * dy[3];
    r[0] = dy[0];
    r[1] = e + o;
    r[2] = e - o;
    r[3] = e2 + o2;
    r[4] = e2 - o2;
    r[5] = dy[3];
  }
  [[gnu::always_inline]] static void filter_gradient(const Pack* u, Pack* g) {
    const Pack a12 = u[1] + u[2], s12 = u[1] - u[2], a34 = u[3] + u[4], s34 = u[3] - u[4];
    g[0] = u[0] * 0.25f - a12 * (1.0f / 6) + a34 * (1.0f / 24);
    g[1] = s34 * (1.0f / 12) - s12 * (1.0f / 6);
    g[2] = (a34 - a12) * (1.0f / 6) + u[5];
  }
};

enum class Variant { none, f2x2, f4x4 };

// Whether a convolution is one this file computes: float 3x3, stride 1, padding 1 all round.
inline bool applies(const nn::Conv2dDims& d) {
  return d.kernel_h == 3 && d.kernel_w == 3 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 1 && d.pad_w == 1 && d.symmetric();
}

// The variant faster than the direct paths, if any, by the tiles of one image, so that an image's arithmetic does not
// depend on the batch it comes in (one process's batch or a data-parallel process's slice of it, a whole batch or its
// gradient-accumulation micro-batches). Measured on 2 Zen 3 cores, forward + backward, against the shifted GEMM and
// each other (docs/benchmarks.md):
// - F(4x4, 3x3) with at least 64 tiles of 4x4 per image: SD's 64x64 and 32x32 levels and the VAE, 1.2-1.6x faster than
//   F(2x2, 3x3) there (even with it at 64 tiles in all);
// - F(2x2, 3x3) with at least 64 tiles of 2x2 per image: the 16x16 level, whose 16 tiles of 4x4 per image make GEMMs
//   too narrow for the 4x4 tiles' larger filter transforms to pay (F(4x4, 3x3) 1.1-1.3x slower there);
// - neither at 8x8, where transforming the 1280x1280 filters costs more than the products save (the direct path is
//   1.25x faster than F(2x2, 3x3) at batch 2), nor with fewer than 64 channels in or out.
inline Variant choose(const nn::Conv2dDims& d) {
  if (!applies(d) || d.in_channels < 64 || d.out_channels < 64) return Variant::none;
  const auto tiles = [&](std::int64_t m) { return ((d.height + m - 1) / m) * ((d.width + m - 1) / m); };
  if (tiles(4) >= 64) return Variant::f4x4;
  return tiles(2) >= 64 ? Variant::f2x2 : Variant::none;
}

inline bool worth(const nn::Conv2dDims& d) { return choose(d) != Variant::none; }

template <class F>
struct Tiling {
  static constexpr std::int64_t m = F::m, a = F::a, points = a * a;
  std::int64_t N, H, W, TY, TX;
  Tiling(std::int64_t n, std::int64_t h, std::int64_t w) : N(n), H(h), W(w), TY((h + m - 1) / m), TX((w + m - 1) / m) {}
  std::int64_t rows() const { return N * TY; }  // tile rows of the batch, (n, ty)
  // Tile rows per chunk: a chunk's V or M for `channels` channels stays near 32 MiB (at least one row).
  std::int64_t chunk_rows(std::int64_t channels) const {
    const std::int64_t per_row = points * channels * TX * static_cast<std::int64_t>(sizeof(float));
    return std::clamp<std::int64_t>((std::int64_t{32} << 20) / per_row, 1, rows());
  }
};

// A buffer of n floats, read in whole packs: n rounded up by a pack.
inline std::size_t padded(std::int64_t n) { return static_cast<std::size_t>(n + kLanes); }

// U[a^2][K][C] = G g G^T for every filter g = weight[k][c] of weight[K, C, 3, 3], or with `rotated` for g rotated by
// 180 degrees (its taps in reverse order). Each k's filters are first laid out tap by tap, [9][C], so that the
// transform runs over c in packs.
template <class F>
void transform_filter(const float* weight, std::int64_t K, std::int64_t C, bool rotated, float* U) {
  constexpr int a = F::a;
#pragma omp parallel if (parallel_worth(K * C * a * a * 4))
  {
    std::vector<float> taps(padded(9 * C));
#pragma omp for schedule(static)
    for (std::int64_t k = 0; k < K; ++k) {
      const float* w = weight + k * C * 9;
      if (rotated) {
        for (std::int64_t c = 0; c < C; ++c)
          for (int t = 0; t < 9; ++t) taps[t * C + c] = w[c * 9 + 8 - t];
      } else {
        for (std::int64_t c = 0; c < C; ++c)
          for (int t = 0; t < 9; ++t) taps[t * C + c] = w[c * 9 + t];
      }
      const float* g = taps.data();  // g[(r * 3 + s) * C + c]
      float* u = U + k * C;
      const std::int64_t stride = K * C;
      for (std::int64_t c = 0; c < C; c += kLanes) {
        const std::int64_t lanes = std::min<std::int64_t>(kLanes, C - c);
        Pack h[3][a];  // g G^T
        for (int r = 0; r < 3; ++r) F::filter(load(g + (r * 3) * C + c), load(g + (r * 3 + 1) * C + c), load(g + (r * 3 + 2) * C + c), h[r]);
        for (int b = 0; b < a; ++b) {
          Pack column[a];
          F::filter(h[0][b], h[1][b], h[2][b], column);
          for (int i = 0; i < a; ++i) store(u + (i * a + b) * stride + c, column[i], lanes);
        }
      }
    }
  }
}

// dweight[K, C, 3, 3] += G^T dU G for dU[a^2][K][C] (read in packs: padded by one); computed over c in packs into
// [9][C], then added.
template <class F>
void accumulate_filter_gradient(const float* dU, std::int64_t K, std::int64_t C, float* dweight) {
  constexpr int a = F::a;
#pragma omp parallel if (parallel_worth(K * C * a * a * 4))
  {
    std::vector<float> taps(padded(9 * C));
#pragma omp for schedule(static)
    for (std::int64_t k = 0; k < K; ++k) {
      const float* u = dU + k * C;
      const std::int64_t stride = K * C;
      float* g = taps.data();  // g[(r * 3 + s) * C + c]
      for (std::int64_t c = 0; c < C; c += kLanes) {
        const std::int64_t lanes = std::min<std::int64_t>(kLanes, C - c);
        Pack q[a][3];  // dU G
        for (int i = 0; i < a; ++i) {
          Pack row[a];
          for (int b = 0; b < a; ++b) row[b] = load(u + (i * a + b) * stride + c);
          F::filter_gradient(row, q[i]);
        }
        for (int s = 0; s < 3; ++s) {
          Pack column[a], r[3];
          for (int i = 0; i < a; ++i) column[i] = q[i][s];
          F::filter_gradient(column, r);
          for (int i = 0; i < 3; ++i) store(g + (i * 3 + s) * C + c, r[i], lanes);
        }
      }
      float* w = dweight + k * C * 9;
      for (std::int64_t c = 0; c < C; ++c)
        for (int t = 0; t < 9; ++t) w[c * 9 + t] += g[t * C + c];
    }
  }
}

// phases[r][p] = row[first + m p + r] for r < m and p < count, zero outside the row's `width` columns or for a null
// row (above or below the image): the columns of a row split by their position in a tile, so that the tiles' j-th
// columns lie contiguous.
template <int m>
void split_columns(const float* row, std::int64_t width, std::int64_t first, std::int64_t count, float* const* phases) {
  if (!row) {
    for (int r = 0; r < m; ++r) std::fill_n(phases[r], count, 0.0f);
    return;
  }
  for (std::int64_t p = 0; p < count; ++p)
    for (int r = 0; r < m; ++r) {
      const std::int64_t x = first + m * p + r;
      phases[r][p] = (x >= 0 && x < width) ? row[x] : 0.0f;
    }
}

// V[a^2][C][ldv] (columns from 0) = B^T d B for the tiles of tile rows [row0, row0 + rows) of images[N, C, H, W].
template <class F>
void transform_input(const float* images, std::int64_t C, const Tiling<F>& t, std::int64_t row0, std::int64_t rows, float* V, std::int64_t ldv) {
  constexpr int m = F::m, a = F::a;
  const std::int64_t TX = t.TX, plane = t.H * t.W, stride = C * ldv, count = TX + 1, phase = count + kLanes;
#pragma omp parallel if (parallel_worth(C * rows * TX * a * a))
  {
    // The tile's a input rows, each split into m phases of padded columns (padded column p = x + 1): tile tx's column
    // j is phase j % m at tx + j / m.
    std::vector<float> split(static_cast<std::size_t>(a * m * phase));
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t n = (row0 + i) / t.TY, ty = (row0 + i) % t.TY;
        float* ph[a][m];
        for (int j = 0; j < a; ++j) {
          for (int r = 0; r < m; ++r) ph[j][r] = split.data() + (j * m + r) * phase;
          const std::int64_t y = m * ty - 1 + j;
          split_columns<m>((y >= 0 && y < t.H) ? images + n * C * plane + c * plane + y * t.W : nullptr, t.W, -1, count, ph[j]);
        }
        float* out = V + c * ldv + i * TX;
        for (std::int64_t x = 0; x < TX; x += kLanes) {
          const std::int64_t lanes = std::min<std::int64_t>(kLanes, TX - x);
          Pack rowt[a][a];  // d B, row by row
          for (int j = 0; j < a; ++j) {
            Pack d[a];
            for (int col = 0; col < a; ++col) d[col] = load(ph[j][col % m] + x + col / m);
            F::input(d, rowt[j]);
          }
          for (int b = 0; b < a; ++b) {
            Pack column[a], r[a];
            for (int j = 0; j < a; ++j) column[j] = rowt[j][b];
            F::input(column, r);
            for (int j = 0; j < a; ++j) store(out + (j * a + b) * stride + x, r[j], lanes);
          }
        }
      }
  }
}

// images[N, K, H, W] (tile rows [row0, row0 + rows)) = A^T M A (+ bias[k]) for M[a^2][K][ldm] (read in packs: padded
// by one).
template <class F>
void transform_output(const float* M, std::int64_t ldm, std::int64_t K, const float* bias, const Tiling<F>& t, std::int64_t row0, std::int64_t rows,
                      float* images) {
  constexpr int m = F::m, a = F::a;
  const std::int64_t TX = t.TX, plane = t.H * t.W, stride = K * ldm, row_length = m * (TX + kLanes);
#pragma omp parallel if (parallel_worth(K * rows * TX * a * a))
  {
    std::vector<float> tile_rows(static_cast<std::size_t>(m * row_length));  // the m output rows
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t n = (row0 + i) / t.TY, ty = (row0 + i) % t.TY;
        const float* mk = M + k * ldm + i * TX;
        const Pack beta = broadcast(bias ? bias[k] : 0.0f);
        for (std::int64_t x = 0; x < TX; x += kLanes) {
          Pack s[m][a];  // A^T M
          for (int b = 0; b < a; ++b) {
            Pack column[a], r[m];
            for (int j = 0; j < a; ++j) column[j] = load(mk + (j * a + b) * stride + x);
            F::output(column, r);
            for (int j = 0; j < m; ++j) s[j][b] = r[j];
          }
          for (int j = 0; j < m; ++j) {
            Pack r[m];
            F::output(s[j], r);
            // lane l is tile x + l: its column col goes to m (x + l) + col
            float lane[m][kLanes];
            for (int col = 0; col < m; ++col) {
              const Pack value = r[col] + beta;
              std::memcpy(lane[col], &value, sizeof value);
            }
            float* y = tile_rows.data() + j * row_length + m * x;
            for (int l = 0; l < kLanes; ++l)
              for (int col = 0; col < m; ++col) y[m * l + col] = lane[col][l];
          }
        }
        float* dst = images + n * K * plane + k * plane + m * ty * t.W;
        for (int j = 0; j < m && m * ty + j < t.H; ++j) std::copy_n(tile_rows.data() + j * row_length, t.W, dst + j * t.W);
      }
  }
}

// dM[a^2][K][ldm] = A dY A^T for the tiles of tile rows [row0, row0 + rows) of dout[N, K, H, W] (zero outside).
template <class F>
void transform_output_gradient(const float* dout, std::int64_t K, const Tiling<F>& t, std::int64_t row0, std::int64_t rows, float* dM,
                               std::int64_t ldm) {
  constexpr int m = F::m, a = F::a;
  const std::int64_t TX = t.TX, plane = t.H * t.W, stride = K * ldm, phase = TX + kLanes;
#pragma omp parallel if (parallel_worth(K * rows * TX * a * a))
  {
    std::vector<float> split(static_cast<std::size_t>(m * m * phase));  // the m rows' m phases of columns
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t n = (row0 + i) / t.TY, ty = (row0 + i) % t.TY;
        float* ph[m][m];
        for (int j = 0; j < m; ++j) {
          for (int r = 0; r < m; ++r) ph[j][r] = split.data() + (j * m + r) * phase;
          const std::int64_t y = m * ty + j;
          split_columns<m>(y < t.H ? dout + n * K * plane + k * plane + y * t.W : nullptr, t.W, 0, TX, ph[j]);
        }
        float* out = dM + k * ldm + i * TX;
        for (std::int64_t x = 0; x < TX; x += kLanes) {
          const std::int64_t lanes = std::min<std::int64_t>(kLanes, TX - x);
          Pack rowt[m][a];  // dY A^T
          for (int j = 0; j < m; ++j) {
            Pack dy[m];
            for (int col = 0; col < m; ++col) dy[col] = load(ph[j][col] + x);
            F::output_gradient(dy, rowt[j]);
          }
          for (int b = 0; b < a; ++b) {
            Pack column[m], r[a];
            for (int j = 0; j < m; ++j) column[j] = rowt[j][b];
            F::output_gradient(column, r);
            for (int j = 0; j < a; ++j) store(out + (j * a + b) * stride + x, r[j], lanes);
          }
        }
      }
  }
}

// out[N, K, H, W] = the 3x3 convolution of in[N, C, H, W] with the filter transformed in U (+ bias): U[a^2][K][C], or
// for the backward data pass (transposed) the rotated forward filter's U[a^2][C][K], used transposed.
// V and M hold a chunk's tiles: [a^2][C][columns] and [a^2][K][columns].
template <class F>
void convolve(float* out, const float* in, const float* U, bool transposed, const float* bias, std::int64_t C, std::int64_t K, const Tiling<F>& t,
              std::int64_t chunk, float* V, float* M) {
  const std::int64_t columns = chunk * t.TX;
  for (std::int64_t row0 = 0; row0 < t.rows(); row0 += chunk) {
    const std::int64_t rows = std::min(chunk, t.rows() - row0), T = rows * t.TX;
    transform_input(in, C, t, row0, rows, V, columns);
    for (std::int64_t xi = 0; xi < t.points; ++xi)
      gemm<float>(transposed, false, K, T, C, 1.0f, U + xi * K * C, transposed ? K : C, V + xi * C * columns, columns, 0.0f, M + xi * K * columns,
                  columns);
    transform_output(M, columns, K, bias, t, row0, rows, out);
  }
}

// A call's tiles and its workspace pieces: the filter's transform U[a^2][K][C] and a chunk's transformed tiles, V for
// the GEMMs' input side ([a^2][v_channels][columns]) and M for their output side ([a^2][m_channels][columns]), each
// padded by a pack.
template <class F>
struct Plan {
  Tiling<F> t;
  std::int64_t chunk, columns;
  float *U, *V, *M;
  Plan(Workspace& workspace, const nn::Conv2dDims& d, std::int64_t v_channels, std::int64_t m_channels)
      : t(d.batch, d.height, d.width), chunk(t.chunk_rows(std::max(v_channels, m_channels))), columns(chunk * t.TX) {
    const auto pieces = workspace.take<float, 3>(
        {padded(t.points * d.out_channels * d.in_channels), padded(t.points * v_channels * columns), padded(t.points * m_channels * columns)});
    U = pieces[0];
    V = pieces[1];
    M = pieces[2];
  }
};

template <class F>
void forward(Workspace& workspace, float* out, const float* in, const float* weight, const float* bias, const nn::Conv2dDims& d) {
  const Plan<F> p(workspace, d, d.in_channels, d.out_channels);
  transform_filter<F>(weight, d.out_channels, d.in_channels, false, p.U);
  convolve<F>(out, in, p.U, false, bias, d.in_channels, d.out_channels, p.t, p.chunk, p.V, p.M);
}

template <class F>
void backward_data(Workspace& workspace, float* din, const float* dout, const float* weight, const nn::Conv2dDims& d) {
  const Plan<F> p(workspace, d, d.out_channels, d.in_channels);
  transform_filter<F>(weight, d.out_channels, d.in_channels, true, p.U);
  convolve<F>(din, dout, p.U, true, nullptr, d.out_channels, d.in_channels, p.t, p.chunk, p.V, p.M);
}

template <class F>
void backward_filter(Workspace& workspace, float* dweight, const float* dout, const float* in, const nn::Conv2dDims& d) {
  const std::int64_t C = d.in_channels, K = d.out_channels;
  const Plan<F> p(workspace, d, C, K);  // U holds dU here
  for (std::int64_t row0 = 0; row0 < p.t.rows(); row0 += p.chunk) {
    const std::int64_t rows = std::min(p.chunk, p.t.rows() - row0), T = rows * p.t.TX;
    transform_input(in, C, p.t, row0, rows, p.V, p.columns);
    transform_output_gradient(dout, K, p.t, row0, rows, p.M, p.columns);
    for (std::int64_t xi = 0; xi < p.t.points; ++xi)
      gemm<float>(false, true, K, C, T, 1.0f, p.M + xi * K * p.columns, p.columns, p.V + xi * C * p.columns, p.columns, row0 == 0 ? 0.0f : 1.0f,
                  p.U + xi * K * C, C);
  }
  accumulate_filter_gradient<F>(p.U, K, C, dweight);
}

// The entry points, on the variant `choose` picks where `variant` is none (the tests run each).

// out[N, K, H, W] = conv(in[N, C, H, W], weight[K, C, 3, 3]) + bias[K] (bias may be null).
inline void conv3x3_forward(Workspace& workspace, float* out, const float* in, const float* weight, const float* bias, const nn::Conv2dDims& d,
                            Variant variant = Variant::none) {
  if (variant == Variant::none) variant = choose(d);
  if (variant == Variant::f4x4) return forward<F4x4>(workspace, out, in, weight, bias, d);
  forward<F2x2>(workspace, out, in, weight, bias, d);
}

// din[N, C, H, W] (assigned) from dout[N, K, H, W] and weight[K, C, 3, 3].
inline void conv3x3_backward_data(Workspace& workspace, float* din, const float* dout, const float* weight, const nn::Conv2dDims& d,
                                  Variant variant = Variant::none) {
  if (variant == Variant::none) variant = choose(d);
  if (variant == Variant::f4x4) return backward_data<F4x4>(workspace, din, dout, weight, d);
  backward_data<F2x2>(workspace, din, dout, weight, d);
}

// dweight[K, C, 3, 3] += the filter gradient from dout[N, K, H, W] and in[N, C, H, W].
inline void conv3x3_backward_filter(Workspace& workspace, float* dweight, const float* dout, const float* in, const nn::Conv2dDims& d,
                                    Variant variant = Variant::none) {
  if (variant == Variant::none) variant = choose(d);
  if (variant == Variant::f4x4) return backward_filter<F4x4>(workspace, dweight, dout, in, d);
  backward_filter<F2x2>(workspace, dweight, dout, in, d);
}

}  // namespace dreambooth::cpu::winograd
