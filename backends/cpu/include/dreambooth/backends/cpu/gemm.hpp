// Row-major GEMM on the CPU through Eigen (which threads it with OpenMP when built with -fopenmp).
#pragma once

#include <Eigen/Core>
#include <cstdint>

namespace dreambooth::cpu {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// C[M, N] = alpha * op(A) * op(B) + beta * C, row-major with leading dimensions lda / ldb / ldc;
// op(A) is [M, K] (A stored [K, M] when trans_a), op(B) is [K, N] (B stored [N, K] when trans_b).
template <class T>
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
          std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
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

}  // namespace dreambooth::cpu
