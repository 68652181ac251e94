// Where a benchmark's time goes, op by op: ProfiledBackend<B> is backend B with every op of the list in backend_ops.hpp
// wrapped in a timer. While profiling is on, each call of a listed op synchronizes the device, runs B's op,
// synchronizes again and adds the wall time to that op's total (so on a GPU the figures are per-op device time plus the
// launch, and the step itself runs slower than unprofiled); while it is off an op costs one branch more than B's.
// Everything else (memory, copies, the backend's own extras) is B's, inherited.
//
//   ProfiledBackend<CpuBackend> b;        b.profiling = true;   ...   b.profile_json()
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>

#include "dreambooth/backend_ops.hpp"

namespace bench {

template <class B>
class ProfiledBackend : public B {
 public:
  using B::B;

  bool profiling = false;

  struct OpTotal {
    long calls = 0;
    double seconds = 0;
  };

#define DREAMBOOTH_DETAIL_PROFILED_OP(name, family, kind, args) \
  template <class... A>                                         \
  decltype(auto) name(A&&... a) {                               \
    if (!profiling) return B::name(std::forward<A>(a)...);      \
    constexpr std::size_t index = index_of(#name);              \
    const Scope scope(*this, index);                            \
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

  // A JSON object (no trailing newline), indented by `indent` spaces: the ops called, slowest first, each with its
  // family, kind, number of calls and seconds, then the seconds of each kind and of each family.
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
      std::snprintf(line, sizeof line, "%s\n%s    {\"op\": \"%.*s\", \"family\": \"%.*s\", \"kind\": \"%s\", \"calls\": %ld, \"seconds\": %.4f}",
                    first ? "" : ",", pad.c_str(), static_cast<int>(op.name.size()), op.name.data(), static_cast<int>(op.family.size()),
                    op.family.data(), dreambooth::to_string(op.kind), totals_[i].calls, totals_[i].seconds);
      out += line;
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
    out += "}\n" + pad + "}";
    return out;
  }

 private:
  std::array<OpTotal, dreambooth::kBackendOps.size()> totals_{};

  static constexpr std::size_t index_of(std::string_view name) {
    for (std::size_t i = 0; i < dreambooth::kBackendOps.size(); ++i)
      if (dreambooth::kBackendOps[i].name == name) return i;
    return dreambooth::kBackendOps.size();
  }

  struct Scope {
    ProfiledBackend& backend;
    std::size_t index;
    std::chrono::steady_clock::time_point start;
    Scope(ProfiledBackend& b, std::size_t i) : backend(b), index(i) {
      backend.B::synchronize();
      start = std::chrono::steady_clock::now();
    }
    ~Scope() {
      backend.B::synchronize();
      auto& total = backend.totals_[index];
      total.calls += 1;
      total.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
  };
};

}  // namespace bench
