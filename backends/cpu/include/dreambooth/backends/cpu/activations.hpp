// Pointwise activations, GEGLU and softmax on the CPU (the element formulas: nn/scalar_math.hpp, shared with CUDA).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/nn/scalar_math.hpp"

namespace dreambooth::cpu {

// out = x * sigmoid(x)
template <class T>
void silu_forward(T* out, const T* in, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = math::silu(in[i]);
}
template <class T>
void silu_backward(T* din, const T* dout, const T* in, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) din[i] = math::silu_backward(dout[i], in[i]);
}

template <class T>
void gelu_forward(T* out, const T* in, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = math::gelu(in[i]);
}
template <class T>
void gelu_backward(T* din, const T* dout, const T* in, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) din[i] = dout[i] * math::gelu_derivative(in[i]);
}

// CLIP's quick_gelu: x * sigmoid(1.702 x)
template <class T>
void quick_gelu_forward(T* out, const T* in, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) out[i] = math::quick_gelu(in[i]);
}
template <class T>
void quick_gelu_backward(T* din, const T* dout, const T* in, std::size_t n) {
#pragma omp parallel for if (parallel_worth(n))
  for (std::size_t i = 0; i < n; ++i) din[i] = math::quick_gelu_backward(dout[i], in[i]);
}

// GEGLU (diffusers): in[N, 2D] = [a | b] along the last dimension, out[N, D] = a * gelu(b).
template <class T>
void geglu_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) {
#pragma omp parallel for if (parallel_worth(rows * dim))
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* a = in + r * 2 * dim;
    const T* b = a + dim;
    for (std::int64_t i = 0; i < dim; ++i) out[r * dim + i] = a[i] * math::gelu(b[i]);
  }
}
template <class T>
void geglu_backward(T* din, const T* dout, const T* in, std::int64_t rows, std::int64_t dim) {
#pragma omp parallel for if (parallel_worth(rows * dim))
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* a = in + r * 2 * dim;
    const T* b = a + dim;
    T* da = din + r * 2 * dim;
    T* db = da + dim;
    for (std::int64_t i = 0; i < dim; ++i) {
      const T g = dout[r * dim + i];
      da[i] = g * math::gelu(b[i]);
      db[i] = g * a[i] * math::gelu_derivative(b[i]);
    }
  }
}

// out[N, D] = softmax(in[N, D]) over the last dimension (max-subtracted).
template <class T>
void softmax_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) {
#pragma omp parallel for if (parallel_worth(rows * dim))
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = in + r * dim;
    T* y = out + r * dim;
    const T max = *std::max_element(x, x + dim);
    T sum = 0;
    for (std::int64_t i = 0; i < dim; ++i) sum += (y[i] = std::exp(x[i] - max));
    for (std::int64_t i = 0; i < dim; ++i) y[i] /= sum;
  }
}
// din = y * (dout - sum(dout * y)), from the forward output y.
template <class T>
void softmax_backward(T* din, const T* dout, const T* out, std::int64_t rows, std::int64_t dim) {
#pragma omp parallel for if (parallel_worth(rows * dim))
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* y = out + r * dim;
    const T* g = dout + r * dim;
    T dot = 0;
    for (std::int64_t i = 0; i < dim; ++i) dot += g[i] * y[i];
    for (std::int64_t i = 0; i < dim; ++i) din[r * dim + i] = y[i] * (g[i] - dot);
  }
}

}  // namespace dreambooth::cpu
