// The row softmax of attention's score tiles, shared by its fp32 (attention.hpp), bf16 (attention_bf16.hpp) and AMX
// (attention_amx.hpp) paths: the forward turns each row of scores into probabilities and keeps the row's log-sum-exp;
// the backward recomputes the probabilities from the scores and that log-sum-exp. Rows start at Eigen-aligned
// addresses (the tiles' rows are padded to 16 elements), so the vectorised max, exp and sum take the same order on
// every thread and run.
//
// In float the exponentials are exp_packet's, in one pass with the row's sum. Eigen's own exp spends about a third of its
// time in a general ldexp for exponents these values never reach; exp_packet is the same polynomial in the same order,
// so its results are Eigen's bit for bit above ln(FLT_MIN). On 2 Zen 3 cores, SD's 64x64 self-attention (268 M
// exponentials per layer and pass): exp and sum over one row in L1 0.090 -> 0.053 s per layer, the forward 0.449 ->
// 0.406 s, the backward's score and probability recomputation 0.256 -> 0.232 s (best of 7, alternating).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

namespace dreambooth::cpu::attention_detail {

// exp(x) for x <= 88 (shifted scores, -inf included): Eigen's pexp_float (Cephes' polynomial, within 1 ulp of the exact
// value), with the power of two built from its exponent bits; below ln(FLT_MIN) = -87.34 the result is 0 (Eigen's
// gives denormals there, under 1.2e-38). NaN stays NaN, so that a non-finite score still shows in the output.
template <class Packet>
Packet exp_packet(Packet x) {
  namespace ei = Eigen::internal;
  const Packet lowest = ei::pset1<Packet>(-87.3365f);
  const Packet xc = ei::pmax<Eigen::PropagateNaN>(x, lowest);
  const Packet m = ei::pfloor(ei::pmadd(xc, ei::pset1<Packet>(1.44269504088896341f), ei::pset1<Packet>(0.5f)));
  Packet r = ei::pmadd(m, ei::pset1<Packet>(-0.693359375f), xc);  // x - m ln 2 in two parts
  r = ei::pmadd(m, ei::pset1<Packet>(2.12194440e-4f), r);
  const Packet r2 = ei::pmul(r, r), r3 = ei::pmul(r2, r);
  Packet y = ei::pmadd(ei::pset1<Packet>(1.9875691500E-4f), r, ei::pset1<Packet>(1.3981999507E-3f));
  Packet y1 = ei::pmadd(ei::pset1<Packet>(4.1665795894E-2f), r, ei::pset1<Packet>(1.6666665459E-1f));
  const Packet y2 = ei::padd(r, ei::pset1<Packet>(1.0f));
  y = ei::pmadd(y, r, ei::pset1<Packet>(8.3334519073E-3f));
  y1 = ei::pmadd(y1, r, ei::pset1<Packet>(5.0000001201E-1f));
  y = ei::pmadd(y, r3, y1);
  y = ei::pmadd(y, r2, y2);
  return ei::pselect(ei::pcmp_lt(x, lowest), ei::pzero(x), ei::pldexp_fast_impl<Packet>::run(y, m));
}

// row[i] = exp(row[i] - shift) for i < n (row[i] - shift <= 88); returns their sum when `sum` (added in a fixed order:
// two packet accumulators, then the tail).
inline float exp_shifted(float* row, std::int64_t n, float shift, bool sum) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr std::int64_t W = ei::packet_traits<float>::size;
  const Packet by = ei::pset1<Packet>(shift);
  Packet total0 = ei::pzero(by), total1 = ei::pzero(by);
  std::int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const Packet a = exp_packet(ei::psub(ei::ploadu<Packet>(row + i), by));
    const Packet b = exp_packet(ei::psub(ei::ploadu<Packet>(row + i + W), by));
    ei::pstoreu(row + i, a);
    ei::pstoreu(row + i + W, b);
    total0 = ei::padd(total0, a);
    total1 = ei::padd(total1, b);
  }
  for (; i + W <= n; i += W) {
    const Packet a = exp_packet(ei::psub(ei::ploadu<Packet>(row + i), by));
    ei::pstoreu(row + i, a);
    total0 = ei::padd(total0, a);
  }
  float total = sum ? ei::predux(ei::padd(total0, total1)) : 0.0f;
  for (; i < n; ++i) {
    row[i] = ei::pfirst(exp_packet(ei::pset1<Packet>(row[i] - shift)));
    total += row[i];
  }
  return total;
}

// row[0, n): scores in, probabilities out (max subtracted before exp). Returns the log-sum-exp of the scores.
template <class T>
T softmax_row(T* row, std::int64_t n) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::AlignedMax> s(row, n);
  const T max = s.maxCoeff();
  T sum;
  if constexpr (std::is_same_v<T, float>) {
    sum = exp_shifted(row, n, max, true);
  } else {
    s = (s - max).exp();
    sum = s.sum();
  }
  s *= T(1) / sum;
  return max + std::log(sum);
}

// row[0, n): scores in, probabilities out, exp(score - lse) with the forward's log-sum-exp.
template <class T>
void probabilities_row(T* row, std::int64_t n, T lse) {
  if constexpr (std::is_same_v<T, float>) {
    exp_shifted(row, n, lse, false);
  } else {
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::AlignedMax> p(row, n);
    p = (p - lse).exp();
  }
}

}  // namespace dreambooth::cpu::attention_detail
