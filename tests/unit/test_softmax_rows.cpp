// The CPU attention's row softmax (backends/cpu/.../softmax_rows.hpp): its float exponential within 1 ulp of the exact
// value over the floats from -87.3 to 88 (every 997th), Eigen's exp bit for bit there, 0 below ln(FLT_MIN) and for
// -inf, NaN kept; a row's probabilities and log-sum-exp against double's, at lengths that leave packet tails.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "dreambooth/backends/cpu/softmax_rows.hpp"

using namespace dreambooth::cpu::attention_detail;
template <class T>
using Aligned = std::vector<T, Eigen::aligned_allocator<T>>;

namespace {
std::int64_t ulps(float a, float b) { return std::abs(std::int64_t{std::bit_cast<std::int32_t>(a)} - std::bit_cast<std::int32_t>(b)); }
}  // namespace

TEST_CASE("attention's exp is within 1 ulp, Eigen's bit for bit in the normal range, 0 below it, NaN kept", "[softmax_rows]") {
  // every 997th float from -87.3 to 88 (2.2 M of them, all low-bit patterns), by stepping through their bits
  Aligned<float> x;
  for (std::uint32_t bits = std::bit_cast<std::uint32_t>(-87.3f); bits > 0x80000000u && bits <= std::bit_cast<std::uint32_t>(-87.3f); bits -= 997)
    x.push_back(std::bit_cast<float>(bits));
  for (std::uint32_t bits = 0; bits < std::bit_cast<std::uint32_t>(88.0f); bits += 997) x.push_back(std::bit_cast<float>(bits));
  Aligned<float> ours = x, eigen = x;
  exp_shifted(ours.data(), static_cast<std::int64_t>(ours.size()), 0.0f, false);
  Eigen::Map<Eigen::ArrayXf, Eigen::AlignedMax>(eigen.data(), static_cast<Eigen::Index>(eigen.size())) =
      Eigen::Map<Eigen::ArrayXf, Eigen::AlignedMax>(eigen.data(), static_cast<Eigen::Index>(eigen.size())).exp();
  std::int64_t worst = 0;
  std::size_t differ = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    worst = std::max(worst, ulps(ours[i], static_cast<float>(std::exp(static_cast<double>(x[i])))));
    differ += std::bit_cast<std::uint32_t>(ours[i]) != std::bit_cast<std::uint32_t>(eigen[i]);
  }
  INFO(x.size() << " values");
  CHECK(worst <= 1);
  CHECK(differ == 0);

  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  Aligned<float> edge = {-inf, nan, -88.0f, -100.0f, -1.0f, 0.0f, -inf, -inf, nan, -2.0f, -inf, -0.5f, -1e30f, -inf, 1.0f, -inf, -3.0f, nan, -inf};
  const Aligned<float> in = edge;
  const float sum = exp_shifted(edge.data(), static_cast<std::int64_t>(edge.size()), 0.0f, true);
  for (std::size_t i = 0; i < in.size(); ++i) {
    INFO("exp(" << in[i] << ") = " << edge[i]);
    if (std::isnan(in[i]))
      CHECK(std::isnan(edge[i]));
    else if (in[i] < -87.34f)
      CHECK(edge[i] == 0.0f);
    else
      CHECK(ulps(edge[i], static_cast<float>(std::exp(static_cast<double>(in[i])))) <= 1);
  }
  CHECK(std::isnan(sum));
}

TEST_CASE("a row's softmax and log-sum-exp in float are double's to float rounding", "[softmax_rows]") {
  for (const std::int64_t n : {1, 7, 8, 15, 16, 17, 77, 256, 4099}) {
    Aligned<float> row(static_cast<std::size_t>(n));
    Aligned<double> exact(row.size());
    for (std::int64_t i = 0; i < n; ++i)
      exact[static_cast<std::size_t>(i)] = row[static_cast<std::size_t>(i)] = 6.0f * std::sin(0.37f * static_cast<float>(i)) - 20.0f;
    const float lse = softmax_row(row.data(), n);
    const double lse_exact = softmax_row(exact.data(), n);
    INFO(n << " scores");
    CHECK(std::abs(lse - lse_exact) <= 2e-6 * std::abs(lse_exact));
    double worst = 0, total = 0;
    for (std::size_t i = 0; i < row.size(); ++i) worst = std::max(worst, std::abs(row[i] - exact[i]) / exact[i]), total += row[i];
    CHECK(worst <= 2e-6);
    CHECK(std::abs(total - 1.0) <= 1e-5);
    // the backward's recomputation from the log-sum-exp gives the same probabilities
    Aligned<float> again(row.size());
    for (std::int64_t i = 0; i < n; ++i) again[static_cast<std::size_t>(i)] = 6.0f * std::sin(0.37f * static_cast<float>(i)) - 20.0f;
    probabilities_row(again.data(), n, lse);
    for (std::size_t i = 0; i < row.size(); ++i) CHECK(std::abs(again[i] - row[i]) <= 4e-6f * row[i]);
  }
}
