// Where a benchmark's time goes, op by op: ProfiledBackend<B> is backend B with every op of the list in backend_ops.hpp
// wrapped in a timer. While profiling is on, each call of a listed op synchronizes the device, runs B's op,
// synchronizes again and adds the wall time to that op's total (so on a GPU the figures are per-op device time plus the
// launch, and the step itself runs slower than unprofiled); while it is off an op costs one branch more than B's.
// Everything else (memory, copies, the backend's own extras) is B's, inherited.
// Each call also adds its matrix arithmetic (op_flops below: the products of gemm, linear, conv2d and attention, 2
// FLOP per multiply-add, a convolution counted as the direct one even where Winograd multiplies less), so the profile
// shows each op's rate and the step's arithmetic.
//
//   ProfiledBackend<CpuBackend> b;        b.profiling = true;   ...   b.profile_json()
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <string>
#include <tuple>
#include <utility>

#include "dreambooth/backend_ops.hpp"
#include "dreambooth/nn/dims.hpp"

namespace bench {

template <class B>
class ProfiledBackend : public B {
 public:
  using B::B;

  bool profiling = false;

  struct OpTotal {
    long calls = 0;
    double seconds = 0;
    double flops = 0;
  };

#define DREAMBOOTH_DETAIL_PROFILED_OP(name, family, kind, args) \
  template <class... A>                                         \
  decltype(auto) name(A&&... a) {                               \
    if (!profiling) return B::name(std::forward<A>(a)...);      \
    constexpr std::size_t index = index_of(#name);              \
    const Scope scope(*this, index, op_flops<index>(a...));     \
    return B::name(std::forward<A>(a)...);                      \
  }
  DREAMBOOTH_BACKEND_OPS(DREAMBOOTH_DETAIL_PROFILED_OP)
#undef DREAMBOOTH_DETAIL_PROFILED_OP

  const std::array<OpTotal, dreambooth::kBackendOps.size()>& totals() const { return totals_; }

  void reset_profile() { totals_ = {}; }

  double profiled_seconds() const {
    double s = 0;
    for (const auto& t : totals_) s += t.seconds;
    return s;
  }
  double profiled_flops() const {
    double f = 0;
    for (const auto& t : totals_) f += t.flops;
    return f;
  }

  // The matrix arithmetic of one call of op I with these arguments (0 for the ops without products): gemm
  // 2 m n k; linear and conv2d the forward's products, and in backward one such product per gradient asked for (input,
  // weight); attention forward its two products per head, backward the flash-style five (the scores again, dV = P^T dO,
  // dP = dO V^T, dQ = dS K, dK = dS^T Q), each left out with the gradient it serves.
  template <std::size_t I, class... A>
  static double op_flops(const A&... a) {
    constexpr std::string_view op = dreambooth::kBackendOps[I].name;
    [[maybe_unused]] const auto arg = std::tie(a...);
    const auto given = [](const auto& p) { return p != nullptr ? 1.0 : 0.0; };
    if constexpr (op == "gemm") {
      return 2.0 * static_cast<double>(std::get<2>(arg)) * static_cast<double>(std::get<3>(arg)) * static_cast<double>(std::get<4>(arg));
    } else if constexpr (op == "linear_forward") {
      return linear_product(std::get<4>(arg));
    } else if constexpr (op == "linear_backward") {
      return linear_product(std::get<6>(arg)) * (given(std::get<0>(arg)) + given(std::get<1>(arg)));
    } else if constexpr (op == "conv2d_forward") {
      return std::get<4>(arg).flops();
    } else if constexpr (op == "conv2d_backward") {
      return std::get<6>(arg).flops() * (given(std::get<0>(arg)) + given(std::get<1>(arg)));
    } else if constexpr (op == "attention_forward") {
      return std::get<5>(arg).flops();
    } else if constexpr (op == "attention_backward") {
      const double dq = given(std::get<0>(arg)), dk = given(std::get<1>(arg)), dv = given(std::get<2>(arg));
      const double scores = dq + dk + dv > 0 ? 1.0 : 0.0, dp = dq + dk > 0 ? 1.0 : 0.0;
      return std::get<9>(arg).flops() / 2 * (scores + dv + dp + dq + dk);
    } else {
      return 0.0;
    }
  }

  // A JSON object (no trailing newline), indented by `indent` spaces: the ops called, slowest first, each with its
  // family, kind, number of calls and seconds (and its arithmetic in GFLOP and GFLOP/s where it has products), then
  // the seconds of each kind and of each family, and the arithmetic of all the ops.
  std::string profile_json(int indent = 2) const {
    const std::string pad(static_cast<std::size_t>(indent), ' ');
    std::array<std::size_t, dreambooth::kBackendOps.size()> order{};
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return totals_[a].seconds > totals_[b].seconds; });
    std::string out = "{\n" + pad + "  \"ops\": [";
    bool first = true;
    char line[256];
    for (const auto i : order) {
      if (totals_[i].calls == 0) continue;
      const auto& op = dreambooth::kBackendOps[i];
      std::snprintf(line, sizeof line, "%s\n%s    {\"op\": \"%.*s\", \"family\": \"%.*s\", \"kind\": \"%s\", \"calls\": %ld, \"seconds\": %.4f",
                    first ? "" : ",", pad.c_str(), static_cast<int>(op.name.size()), op.name.data(), static_cast<int>(op.family.size()),
                    op.family.data(), dreambooth::to_string(op.kind), totals_[i].calls, totals_[i].seconds);
      out += line;
      if (totals_[i].flops > 0) {
        std::snprintf(line, sizeof line, ", \"gflop\": %.1f, \"gflop_per_second\": %.1f", totals_[i].flops * 1e-9,
                      totals_[i].seconds > 0 ? totals_[i].flops * 1e-9 / totals_[i].seconds : 0.0);
        out += line;
      }
      out += "}";
      first = false;
    }
    out += "\n" + pad + "  ],\n" + pad + "  \"by_kind\": {";
    first = true;
    for (const auto kind : {dreambooth::OpKind::forward, dreambooth::OpKind::backward, dreambooth::OpKind::other}) {
      double s = 0;
      for (std::size_t i = 0; i < totals_.size(); ++i)
        if (dreambooth::kBackendOps[i].kind == kind) s += totals_[i].seconds;
      std::snprintf(line, sizeof line, "%s\"%s\": %.4f", first ? "" : ", ", dreambooth::to_string(kind), s);
      out += line;
      first = false;
    }
    out += "},\n" + pad + "  \"by_family\": {";
    first = true;
    for (const auto family : dreambooth::kOpFamilies) {
      double s = 0;
      for (std::size_t i = 0; i < totals_.size(); ++i)
        if (dreambooth::kBackendOps[i].family == family) s += totals_[i].seconds;
      std::snprintf(line, sizeof line, "%s\"%.*s\": %.4f", first ? "" : ", ", static_cast<int>(family.size()), family.data(), s);
      out += line;
      first = false;
    }
    std::snprintf(line, sizeof line, "},\n%s  \"gflop\": %.1f", pad.c_str(), profiled_flops() * 1e-9);
    out += line;
    out += "\n" + pad + "}";
    return out;
  }

 private:
  std::array<OpTotal, dreambooth::kBackendOps.size()> totals_{};

  static constexpr std::size_t index_of(std::string_view name) {
    for (std::size_t i = 0; i < dreambooth::kBackendOps.size(); ++i)
      if (dreambooth::kBackendOps[i].name == name) return i;
    return dreambooth::kBackendOps.size();
  }

  static double linear_product(const dreambooth::nn::LinearDims& d) {
    return 2.0 * static_cast<double>(d.rows) * static_cast<double>(d.in_features) * static_cast<double>(d.out_features);
  }

  struct Scope {
    ProfiledBackend& backend;
    std::size_t index;
    std::chrono::steady_clock::time_point start;
    double flops;
    Scope(ProfiledBackend& b, std::size_t i, double f) : backend(b), index(i), flops(f) {
      backend.B::synchronize();
      start = std::chrono::steady_clock::now();
    }
    ~Scope() {
      backend.B::synchronize();
      auto& total = backend.totals_[index];
      total.calls += 1;
      total.flops += flops;
      total.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
  };
};

}  // namespace bench
