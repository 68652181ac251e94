// Pointwise activations, GEGLU and softmax on the CPU.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace dreambooth::cpu {

namespace activation_detail {
template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
template <class T>
T gelu(T x) {  // exact: 0.5 x (1 + erf(x / sqrt 2))
  return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
}
template <class T>
T gelu_derivative(T x) {  // 0.5 (1 + erf(x / sqrt 2)) + x * phi(x)
  return T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440))) + x * T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
}
}  // namespace activation_detail

// out = x * sigmoid(x)
template <class T>
void silu_forward(T* out, const T* in, std::size_t n) {
#pragma omp parallel for
  for (std::size_t i = 0; i < n; ++i) out[i] = in[i] * activation_detail::sigmoid(in[i]);
}
template <class T>
void silu_backward(T* din, const T* dout, const T* in, std::size_t n) {
#pragma omp parallel for
  for (std::size_t i = 0; i < n; ++i) {
    const T s = activation_detail::sigmoid(in[i]);
    din[i] = dout[i] * s * (T(1) + in[i] * (T(1) - s));
  }
}

template <class T>
void gelu_forward(T* out, const T* in, std::size_t n) {
#pragma omp parallel for
  for (std::size_t i = 0; i < n; ++i) out[i] = activation_detail::gelu(in[i]);
}
template <class T>
void gelu_backward(T* din, const T* dout, const T* in, std::size_t n) {
#pragma omp parallel for
  for (std::size_t i = 0; i < n; ++i) din[i] = dout[i] * activation_detail::gelu_derivative(in[i]);
}

// CLIP's quick_gelu: x * sigmoid(1.702 x)
template <class T>
void quick_gelu_forward(T* out, const T* in, std::size_t n) {
#pragma omp parallel for
  for (std::size_t i = 0; i < n; ++i) out[i] = in[i] * activation_detail::sigmoid(T(1.702) * in[i]);
}
template <class T>
void quick_gelu_backward(T* din, const T* dout, const T* in, std::size_t n) {
#pragma omp parallel for
  for (std::size_t i = 0; i < n; ++i) {
    const T s = activation_detail::sigmoid(T(1.702) * in[i]);
    din[i] = dout[i] * (s + T(1.702) * in[i] * s * (T(1) - s));
  }
}

// GEGLU (diffusers): in[N, 2D] = [a | b] along the last dimension, out[N, D] = a * gelu(b).
template <class T>
void geglu_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) {
#pragma omp parallel for
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* a = in + r * 2 * dim;
    const T* b = a + dim;
    for (std::int64_t i = 0; i < dim; ++i) out[r * dim + i] = a[i] * activation_detail::gelu(b[i]);
  }
}
template <class T>
void geglu_backward(T* din, const T* dout, const T* in, std::int64_t rows, std::int64_t dim) {
#pragma omp parallel for
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* a = in + r * 2 * dim;
    const T* b = a + dim;
    T* da = din + r * 2 * dim;
    T* db = da + dim;
    for (std::int64_t i = 0; i < dim; ++i) {
      const T g = dout[r * dim + i];
      da[i] = g * activation_detail::gelu(b[i]);
      db[i] = g * a[i] * activation_detail::gelu_derivative(b[i]);
    }
  }
}

// out[N, D] = softmax(in[N, D]) over the last dimension (max-subtracted).
template <class T>
void softmax_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) {
#pragma omp parallel for
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
#pragma omp parallel for
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* y = out + r * dim;
    const T* g = dout + r * dim;
    T dot = 0;
    for (std::int64_t i = 0; i < dim; ++i) dot += g[i] * y[i];
    for (std::int64_t i = 0; i < dim; ++i) din[r * dim + i] = y[i] * (g[i] - dot);
  }
}

}  // namespace dreambooth::cpu
