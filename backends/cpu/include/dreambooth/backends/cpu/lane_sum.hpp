// Sums in double over interleaved partial sums ("lanes"): term(i) for i in [first, last) is added into lane
// (i - first) % Lanes, the elements past the last whole group of Lanes into a running sum, and the lanes into that sum
// in lane order at the end. Lanes are independent chains the compiler vectorises, where one running sum waits on every
// add (4 cycles a term); the order of additions depends only on the range, so results are the same on every run.
#pragma once

#include <array>
#include <cstdint>

namespace dreambooth::cpu {

template <std::int64_t Lanes, class Term>
double lane_sum(std::int64_t first, std::int64_t last, Term term) {
  double lanes[Lanes] = {};
  std::int64_t i = first;
  for (; i + Lanes <= last; i += Lanes)
    for (std::int64_t l = 0; l < Lanes; ++l) lanes[l] += term(i + l);
  double sum = 0;
  for (; i < last; ++i) sum += term(i);
  for (const double lane : lanes) sum += lane;
  return sum;
}

// Two sums in one pass over the range, each in lane_sum's order.
template <std::int64_t Lanes, class TermA, class TermB>
std::array<double, 2> lane_sums(std::int64_t first, std::int64_t last, TermA a, TermB b) {
  double lanes_a[Lanes] = {}, lanes_b[Lanes] = {};
  std::int64_t i = first;
  for (; i + Lanes <= last; i += Lanes)
    for (std::int64_t l = 0; l < Lanes; ++l) {
      lanes_a[l] += a(i + l);
      lanes_b[l] += b(i + l);
    }
  std::array<double, 2> sum{};
  for (; i < last; ++i) {
    sum[0] += a(i);
    sum[1] += b(i);
  }
  for (std::int64_t l = 0; l < Lanes; ++l) {
    sum[0] += lanes_a[l];
    sum[1] += lanes_b[l];
  }
  return sum;
}

}  // namespace dreambooth::cpu
