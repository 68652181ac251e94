// The test data of the data-parallel sums (tests/mpi, tests/gpu/test_nccl_communicator.cpp): rank q's element i, a float
// of magnitude 2^-20 .. 2^20 and either sign, so that the order of addition shows in the bits; and its rank-order sum.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dreambooth::test {

inline float rank_value(int q, std::size_t i) {
  std::uint64_t x = (static_cast<std::uint64_t>(q) + 1) * 0x9E3779B97F4A7C15ull ^ (i * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  const float mantissa = 1.0f + static_cast<float>(x & 0xFFFFFF) / static_cast<float>(1 << 24);
  const int exponent = static_cast<int>((x >> 24) % 41) - 20;
  return ((x >> 40) & 1 ? -1.0f : 1.0f) * std::ldexp(mantissa, exponent);
}

// Element i: ((rank_value(0, first + i) + rank_value(1, first + i)) + ...) over `processes` ranks, each value passed
// through `round` first (the identity, or a rounding to bf16).
template <class Round>
std::vector<float> rank_order_sum(int processes, std::size_t first, std::size_t n, Round round) {
  std::vector<float> sum(n);
  for (std::size_t i = 0; i < n; ++i) {
    float total = round(rank_value(0, first + i));
    for (int q = 1; q < processes; ++q) total += round(rank_value(q, first + i));
    sum[i] = total;
  }
  return sum;
}

}  // namespace dreambooth::test
