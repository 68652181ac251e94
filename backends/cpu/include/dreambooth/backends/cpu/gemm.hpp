// The gemm family on the CPU: row-major GEMM and the linear layer built on it. GEMM: OpenBLAS (OpenMP build, kernels chosen at run time for the CPU)
// for float and double, Eigen for any other scalar. On the development machine (AMD Zen, 2 cores) OpenBLAS sgemm runs at ~195 GFLOP/s against ~150
// for Eigen's AVX-512 kernels. Inside an OpenMP parallel region (per-head GEMMs of attention) Eigen runs instead, single-threaded: OpenBLAS 0.3.21
// called concurrently from several OpenMP threads shares its packing buffers and gave run-to-run differing results, while Eigen is re-entrant and
// deterministic.
#pragma once

#include <cblas.h>
#include <omp.h>

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

#include "dreambooth/backends/cpu/gemm_bf16.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// C[M, N] = alpha * op(A) * op(B) + beta * C, row-major with leading dimensions lda / ldb / ldc;
// op(A) is [M, K] (A stored [K, M] when trans_a), op(B) is [K, N] (B stored [N, K] when trans_b).
// In float under a bf16 GemmComputeScope (the backend's --precision bf16), outside OpenMP parallel regions: gemm_bf16.
template <class T>
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
          std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (k > 0 && gemm_compute() == GemmCompute::bf16 && !omp_in_parallel()) {
      gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
  }
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (!omp_in_parallel()) {
      const auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
      const auto i = [](std::int64_t v) { return static_cast<blasint>(v); };
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, i(m), i(n), i(k), alpha, a, i(lda), b, i(ldb), beta, c, i(ldc));
      else
        cblas_dgemm(CblasRowMajor, ta, tb, i(m), i(n), i(k), alpha, a, i(lda), b, i(ldb), beta, c, i(ldc));
      return;
    }
  }
  MatrixMap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
  if (beta == T(0)) {
    C.setZero();
  } else if (beta != T(1)) {
    C *= beta;
  }
  if (k == 0 || alpha == T(0)) return;
  const auto rows_a = trans_a ? k : m, cols_a = trans_a ? m : k;
  const auto rows_b = trans_b ? n : k, cols_b = trans_b ? k : n;
  ConstMatrixMap<T> A(a, rows_a, cols_a, Eigen::OuterStride<>(lda));
  ConstMatrixMap<T> B(b, rows_b, cols_b, Eigen::OuterStride<>(ldb));
  if (!trans_a && !trans_b) C.noalias() += alpha * A * B;
  if (!trans_a && trans_b) C.noalias() += alpha * A * B.transpose();
  if (trans_a && !trans_b) C.noalias() += alpha * A.transpose() * B;
  if (trans_a && trans_b) C.noalias() += alpha * A.transpose() * B.transpose();
}

// --- linear: out[N, OC] = in[N, IC] weight[OC, IC]^T + bias[OC] (bias may be null) ---
template <class T>
void linear_forward(T* out, const T* in, const T* weight, const T* bias, const nn::LinearDims& d) {
  gemm(false, true, d.rows, d.out_features, d.in_features, T(1), in, d.in_features, weight, d.in_features, T(0), out, d.out_features);
  if (bias) {
#pragma omp parallel for if (parallel_worth(d.rows * d.out_features))
    for (std::int64_t r = 0; r < d.rows; ++r)
      for (std::int64_t o = 0; o < d.out_features; ++o) out[r * d.out_features + o] += bias[o];
  }
}
// din assigned; dweight / dbias accumulated (each may be null).
template <class T>
void linear_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::LinearDims& d) {
  if (din) gemm(false, false, d.rows, d.in_features, d.out_features, T(1), dout, d.out_features, weight, d.in_features, T(0), din, d.in_features);
  if (dweight) gemm(true, false, d.out_features, d.in_features, d.rows, T(1), dout, d.out_features, in, d.in_features, T(1), dweight, d.in_features);
  if (dbias)
    for (std::int64_t r = 0; r < d.rows; ++r)
      for (std::int64_t o = 0; o < d.out_features; ++o) dbias[o] += dout[r * d.out_features + o];
}

}  // namespace dreambooth::cpu
