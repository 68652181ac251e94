// The row softmax of attention's score tiles, shared by its fp32 (attention.hpp), bf16 (attention_bf16.hpp) and AMX
// (attention_amx.hpp) paths: the forward turns each row of scores into probabilities and keeps the row's log-sum-exp;
// the backward recomputes the probabilities from the scores and that log-sum-exp. Rows start at Eigen-aligned
// addresses (the tiles' rows are padded to 16 elements), so the vectorised max, exp and sum take the same order on
// every thread and run.
#pragma once

#include <cmath>
#include <cstdint>

#include <Eigen/Core>

namespace dreambooth::cpu::attention_detail {

// row[0, n): scores in, probabilities out (max subtracted before exp). Returns the log-sum-exp of the scores.
template <class T>
T softmax_row(T* row, std::int64_t n) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::AlignedMax> s(row, n);
  const T max = s.maxCoeff();
  s = (s - max).exp();
  const T sum = s.sum();
  s *= T(1) / sum;
  return max + std::log(sum);
}

// row[0, n): scores in, probabilities out, exp(score - lse) with the forward's log-sum-exp.
template <class T>
void probabilities_row(T* row, std::int64_t n, T lse) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::AlignedMax> p(row, n);
  p = (p - lse).exp();
}

}  // namespace dreambooth::cpu::attention_detail
