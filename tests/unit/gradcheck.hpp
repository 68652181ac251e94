// Central finite-difference gradient checks in double precision for the CPU backend's ops.
//
// For an op y = f(x_1, ..., x_k) and a fixed random R, L = sum(y * R). The op's backward, fed dy = R,
// gives dL/dx_i; each element is compared with (L(x + h e) - L(x - h e)) / 2h. With smooth ops in double
// precision and h = 1e-5 the truncation error is ~1e-10 and rounding ~1e-11, so a tolerance of
// 1e-6 (relative, with an absolute floor of 1e-7) leaves two orders of margin while any real error in a
// backward formula (a missing term, a wrong index, a wrong sign) shows up at the 1e-2 level or worse.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "dreambooth/backends/cpu.hpp"

namespace dreambooth::testing {

using Reference = CpuBackendT<double>;

inline std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::vector<double> v(n);
  Reference backend;
  backend.fill_normal(v.data(), n, seed, 0, 0.0, scale);
  return v;
}

struct GradientInput {
  std::string name;
  std::vector<double>* values;          // the input, perturbed in place during the check
  const std::vector<double>* analytic;  // the backward's gradient for it
};

struct GradientReport {
  bool ok = true;
  std::string worst;  // "name[index]: analytic a, numeric n" of the worst element
  double worst_error = 0;
};

// forward() recomputes the op's output from the current input values.
inline GradientReport check_gradients(const std::function<std::vector<double>()>& forward, const std::vector<double>& weights,
                                      const std::vector<GradientInput>& inputs, double rtol = 1e-6, double atol = 1e-7, double h = 1e-5) {
  const auto loss = [&] {
    const auto y = forward();
    double sum = 0;
    for (std::size_t i = 0; i < y.size(); ++i) sum += y[i] * weights[i];
    return sum;
  };
  GradientReport report;
  for (const auto& input : inputs) {
    auto& x = *input.values;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double saved = x[i];
      x[i] = saved + h;
      const double plus = loss();
      x[i] = saved - h;
      const double minus = loss();
      x[i] = saved;
      const double numeric = (plus - minus) / (2 * h);
      const double analytic = (*input.analytic)[i];
      const double error = std::abs(analytic - numeric) / (atol + rtol * std::abs(numeric));
      // A NaN gradient (or loss) compares false with everything: it counts as the worst error there is.
      const bool bad = !(error <= 1.0);
      if (error > report.worst_error || (bad && report.ok)) {
        report.worst_error = std::isnan(error) ? INFINITY : error;
        report.worst = input.name + "[" + std::to_string(i) + "]: analytic " + std::to_string(analytic) + ", numeric " + std::to_string(numeric);
      }
      if (bad) report.ok = false;
    }
  }
  return report;
}

}  // namespace dreambooth::testing
