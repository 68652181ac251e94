// Comparing the CUDA backend's results with the CPU reference backend's: relative L2 error with the worst element
// named, non-finite values and size mismatches counted as failures, and bit-for-bit equality.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <vector>

#include "dreambooth/backends/cpu.hpp"

namespace dreambooth::gpu_testing {

using Host = std::vector<float>;

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

// n values from the backends' common Philox stream (seed, offset 0): N(mean, stddev).
inline Host normal(std::size_t n, std::uint64_t seed, float stddev = 1.0f, float mean = 0.0f) {
  Host v(n);
  CpuBackend().fill_normal(v.data(), n, seed, 0, mean, stddev);
  return v;
}

struct Comparison {
  double error = 0;  // relative L2 |got - expected| / |expected|; +inf on a size mismatch or a non-finite value
  std::size_t got_size = 0, expected_size = 0;
  std::size_t non_finite = 0;  // NaN or inf in got or expected
  std::size_t differing = 0;   // elements whose bits differ
  std::size_t worst = 0;       // index of the largest absolute difference
  double got_at_worst = 0, expected_at_worst = 0;
  double expected_norm = 0;

  bool within(double tolerance) const { return error <= tolerance; }
  bool bitwise_equal() const { return got_size == expected_size && differing == 0; }
};

inline Comparison compare(const Host& got, const Host& expected) {
  Comparison c;
  c.got_size = got.size();
  c.expected_size = expected.size();
  if (got.size() != expected.size()) {
    c.error = std::numeric_limits<double>::infinity();
    return c;
  }
  double num = 0, den = 0, worst = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(expected[i])) ++c.differing;
    if (!std::isfinite(got[i]) || !std::isfinite(expected[i])) {
      if (c.non_finite++ == 0) c.worst = i, c.got_at_worst = got[i], c.expected_at_worst = expected[i], worst = HUGE_VAL;
      continue;
    }
    const double d = double(got[i]) - double(expected[i]);
    num += d * d;
    den += double(expected[i]) * expected[i];
    if (std::abs(d) > worst) worst = std::abs(d), c.worst = i, c.got_at_worst = got[i], c.expected_at_worst = expected[i];
  }
  c.expected_norm = std::sqrt(den);
  if (c.non_finite)
    c.error = std::numeric_limits<double>::infinity();
  else if (den == 0)
    c.error = num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  else
    c.error = std::sqrt(num / den);
  return c;
}

inline std::ostream& operator<<(std::ostream& os, const Comparison& c) {
  if (c.got_size != c.expected_size) return os << "size " << c.got_size << " where " << c.expected_size << " was expected";
  os << "relative L2 " << c.error << " over " << c.got_size << " values (norm " << c.expected_norm << "), " << c.differing << " differ in bits";
  if (c.non_finite) os << ", " << c.non_finite << " non-finite";
  if (c.got_size) os << "; worst [" << c.worst << "]: got " << c.got_at_worst << ", expected " << c.expected_at_worst;
  return os;
}

}  // namespace dreambooth::gpu_testing
