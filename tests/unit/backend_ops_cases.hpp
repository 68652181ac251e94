// The op test driver: one case per op of include/dreambooth/backend_ops.hpp, templated on the backend.
//
// tests/unit/test_backend_ops.cpp runs every case on CpuBackendT<float> and CpuBackendT<double>;
// tests/gpu/test_cuda_backend_ops.cpp runs the same cases on the CUDA backend, where every op call is also made on the
// CPU backend from the same inputs and every buffer compared (ParityReference below).
//
// What a case checks, through Case<B>:
// - expect(): a forward (or other) op's outputs against a small case worked out by hand, or computed in the test in
//   double from the inputs (the comments give the arithmetic);
// - expect_gradients(): a backward op's gradients against central finite differences of the forward op, the forward
//   run in double on the CPU reference (gradcheck.hpp): 1e-6 relative for a double backend, 1e-3 for float ones;
// - expect_null_skipping(): every subset of the pointers the contract lets be null, passed as null: the others are as
//   in the full call;
// - expect_assign_or_accumulate(): the op called twice on the same buffers: what it must assign is the same after the
//   second call, what it must accumulate into has grown by the same amount twice;
// - outputs start as NaN (out()): an op that reads what it must overwrite shows NaN; what an op accumulates into
//   starts as random values (acc()), taken off before the gradients are compared, so an op that overwrites it fails.
// run_op<B>(name) runs one listed op's case and requires the checks its kind asks for (see required_checks).
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "dreambooth/backend_ops.hpp"
#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/core/rng.hpp"
#include "gradcheck.hpp"

namespace dreambooth::op_testing {

using Vec = std::vector<double>;
using testing::random_vector;
using testing::Reference;
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class B>
inline constexpr bool is_cpu_backend = false;
template <class S>
inline constexpr bool is_cpu_backend<CpuBackendT<S>> = true;

// The backend a tested backend's results are compared with, call by call (none by default; the CUDA driver names the
// CPU backend). Specialise before the first run_op<B>.
template <class B>
struct ParityReference {
  using type = void;
  static constexpr double tolerance = 0;
};

// Which checks a case ran (reset by run_op for each op).
struct Coverage {
  bool reference = false, gradient = false, null_skip = false, assign_accumulate = false, prefilled = false;
};
inline Coverage*& current_coverage() {
  static Coverage* coverage = nullptr;
  return coverage;
}
inline void record(bool Coverage::*what) {
  if (auto* c = current_coverage()) c->*what = true;
}

// |got - expected| <= tol * max(1, |expected|) per element (NaN fails).
inline void require_close(const std::string& what, const Vec& got, const Vec& expected, double tol) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO(what << "[" << i << "]: got " << got[i] << ", expected " << expected[i] << " (tolerance " << tol << ")");
    REQUIRE(std::abs(got[i] - expected[i]) <= tol * std::max(1.0, std::abs(expected[i])));
  }
}

// Relative L2 of got against expected; NaN where both have NaN counts as equal, NaN in only one as infinite error.
inline double relative_l2(const Vec& got, const Vec& expected) {
  if (got.size() != expected.size()) return INFINITY;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && std::isnan(expected[i])) continue;
    if (!std::isfinite(got[i]) || !std::isfinite(expected[i])) return INFINITY;
    num += (got[i] - expected[i]) * (got[i] - expected[i]);
    den += expected[i] * expected[i];
  }
  return num == 0 ? 0.0 : std::sqrt(num / std::max(den, 1e-300));
}

inline void require_same(const std::string& what, const Vec& got, const Vec& expected, double tol) {
  const double e = relative_l2(got, expected);
  INFO(what << ": relative L2 " << e << " (tolerance " << tol << ")");
  REQUIRE(e <= tol);
}

struct Grad {
  std::string input, gradient;
};

// What a buffer is to the op: read only, overwritten (starts as NaN), or accumulated into / updated in place.
enum class Role { input, output, accumulated };

// The buffers of one op call on backend B, from initial values given in double.
template <class B>
class Case {
 public:
  using T = typename B::value_type;
  using Parity = typename ParityReference<B>::type;
  static constexpr bool has_parity = !std::is_void_v<Parity>;

  Case(B& backend, std::string op, bool primary = true) : b_(&backend), op_(std::move(op)), primary_(primary) {
    if constexpr (has_parity) {
      parity_backend_ = std::make_unique<Parity>();
      parity_ = std::make_unique<Case<Parity>>(*parity_backend_, op_ + " on " + parity_backend_->name(), false);
    }
  }
  Case(const Case&) = delete;
  Case& operator=(const Case&) = delete;
  ~Case() {
    for (auto& [name, buffer] : buffers_) b_->deallocate(buffer.device, bytes(buffer.initial.size()));
    for (auto& [name, buffer] : ids_) b_->deallocate(buffer.first, buffer.second * sizeof(std::int32_t));
  }

  B& backend() { return *b_; }

  // An input.
  Case& in(const std::string& name, Vec values) { return add(name, std::move(values), Role::input); }
  // An output the op must overwrite: NaN.
  Case& out(const std::string& name, std::size_t n) {
    if (primary_) record(&Coverage::prefilled);
    return add(name, Vec(n, kNaN), Role::output);
  }
  // A buffer the op must accumulate into (or update in place), with these initial values.
  Case& acc(const std::string& name, Vec values) {
    if (primary_) record(&Coverage::prefilled);
    return add(name, std::move(values), Role::accumulated);
  }
  // Token ids, in device memory.
  Case& ids(const std::string& name, const std::vector<std::int32_t>& values) {
    const auto n = std::max<std::size_t>(values.size(), 1);
    auto* p = static_cast<std::int32_t*>(b_->allocate(n * sizeof(std::int32_t)));
    b_->copy_to_device(p, values.data(), values.size() * sizeof(std::int32_t));
    if (auto it = ids_.find(name); it != ids_.end()) b_->deallocate(it->second.first, it->second.second * sizeof(std::int32_t));
    ids_[name] = {p, n};
    id_values_[name] = values;
    if constexpr (has_parity) parity_->ids(name, values);
    return *this;
  }
  // New initial values for an existing buffer (uploaded now).
  void set(const std::string& name, const Vec& values) {
    auto& buffer = find(name);
    REQUIRE(values.size() == buffer.initial.size());
    buffer.initial = values;
    upload(buffer);
    if constexpr (has_parity) parity_->set(name, values);
  }
  // Every output and accumulated buffer back to its initial values (NaN for outputs).
  void reset() {
    for (auto& [name, buffer] : buffers_)
      if (buffer.role != Role::input) upload(buffer);
    if constexpr (has_parity) parity_->reset();
  }

  struct Pointers {
    Case* c;
    const std::set<std::string>* null_names;
    T* operator()(const std::string& name) const { return c->find(name).device; }
    // A pointer the op's contract lets be null: null when expect_null_skipping says so.
    T* opt(const std::string& name) const { return null_names && null_names->count(name) ? nullptr : c->find(name).device; }
    const std::int32_t* ids(const std::string& name) const {
      const auto it = c->ids_.find(name);
      if (it == c->ids_.end()) FAIL("test error: no ids named " << name);
      return it->second.first;
    }
  };

  // op(backend, pointers) once; with a parity backend, once there too and every buffer compared.
  template <class F>
  void run(F&& op, const std::set<std::string>* null_names = nullptr) {
    op(*b_, Pointers{this, null_names});
    b_->synchronize();
    if constexpr (has_parity) {
      parity_->run(op, null_names);
      for (auto& [name, buffer] : buffers_)
        require_same(op_ + ": " + name + " against " + parity_backend_->name(), get(name), parity_->get(name), ParityReference<B>::tolerance);
    }
  }

  Vec get(const std::string& name) {
    auto& buffer = find(name);
    std::vector<T> host(buffer.initial.size());
    b_->copy_to_host(host.data(), buffer.device, bytes(host.size()));
    return Vec(host.begin(), host.end());
  }
  const Vec& initial(const std::string& name) { return find(name).initial; }

  // Outputs against values worked out by hand (in double).
  void expect(const std::string& name, const Vec& expected, double tol = 1e-6) {
    require_close(op_ + ": " + name, get(name), expected, tol);
    if (primary_) record(&Coverage::reference);
  }

  // The gradients the backward has left in this case's buffers against central differences of `forward` (run in
  // double on the CPU reference from this case's initial values). `outputs` are the forward's outputs, `weights` the
  // dout buffers they are weighted with (the backward's input). Accumulated gradients are taken net of their initial
  // values.
  template <class F>
  void expect_gradients(const std::vector<std::string>& outputs, const std::vector<std::string>& weights, const std::vector<Grad>& grads,
                        F&& forward) {
    Reference reference;
    Case<Reference> rc(reference, op_ + " (finite differences)", false);
    for (auto& [name, buffer] : buffers_) rc.add(name, buffer.initial, buffer.role);
    for (auto& [name, values] : id_values_) rc.ids(name, values);
    std::map<std::string, Vec> values, analytic;
    for (const auto& g : grads) {
      values[g.input] = initial(g.input);
      Vec a = get(g.gradient);
      if (find(g.gradient).role == Role::accumulated)
        for (std::size_t i = 0; i < a.size(); ++i) a[i] -= find(g.gradient).initial[i];
      analytic[g.input] = std::move(a);
    }
    Vec R;
    for (const auto& w : weights) R.insert(R.end(), initial(w).begin(), initial(w).end());
    auto f = [&] {
      for (auto& [name, v] : values) rc.set(name, v);
      rc.reset();
      rc.run(forward);
      Vec y;
      for (const auto& o : outputs) {
        const Vec part = rc.get(o);
        y.insert(y.end(), part.begin(), part.end());
      }
      return y;
    };
    REQUIRE(f().size() == R.size());
    std::vector<testing::GradientInput> inputs;
    for (const auto& g : grads) {
      REQUIRE(analytic[g.input].size() == values[g.input].size());
      inputs.push_back({g.input, &values[g.input], &analytic[g.input]});
    }
    const bool exact = std::is_same_v<T, double>;
    const auto report = testing::check_gradients(f, R, inputs, exact ? 1e-6 : 1e-3, exact ? 1e-7 : 1e-4);
    INFO(op_ << " on " << b_->name() << (exact ? " (double)" : " (float)") << ": worst element " << report.worst << " (error/tolerance "
             << report.worst_error << ")");
    REQUIRE(report.ok);
    if (primary_) record(&Coverage::gradient);
  }

  // op with every non-empty subset of `nullable` passed as null (through Pointers::opt): each buffer that is passed
  // equals what the call with none null gave, each one that is not keeps its initial value.
  template <class F>
  void expect_null_skipping(const std::vector<std::string>& nullable, F&& op) {
    REQUIRE(!nullable.empty());
    REQUIRE(nullable.size() < 8);
    reset();
    run(op);
    std::map<std::string, Vec> full;
    for (const auto& name : nullable) full[name] = get(name);
    for (unsigned mask = 1; mask < (1u << nullable.size()); ++mask) {
      std::set<std::string> null_names;
      for (std::size_t i = 0; i < nullable.size(); ++i)
        if (mask & (1u << i)) null_names.insert(nullable[i]);
      reset();
      run(op, &null_names);
      for (const auto& name : nullable) {
        INFO(op_ << ": called with null " << join(null_names));
        if (null_names.count(name))
          require_same(op_ + ": " + name + " (passed as null) is untouched", get(name), initial(name), 0.0);
        else
          require_same(op_ + ": " + name + " as with no null pointer", get(name), full[name], std::is_same_v<T, double> ? 0.0 : 1e-6);
      }
    }
    reset();
    if (primary_) record(&Coverage::null_skip);
  }

  // op twice on the same buffers: `assigned` are as after one call, `accumulated` have grown by the same amount twice.
  template <class F>
  void expect_assign_or_accumulate(const std::vector<std::string>& assigned, const std::vector<std::string>& accumulated, F&& op) {
    reset();
    run(op);
    std::map<std::string, Vec> once;
    for (const auto& name : assigned) once[name] = get(name);
    for (const auto& name : accumulated) once[name] = get(name);
    run(op);
    const double tol = std::is_same_v<T, double> ? 1e-12 : 1e-6;
    for (const auto& name : assigned) {
      const Vec twice = get(name);
      for (const double v : twice) {
        INFO(op_ << ": " << name << " must be assigned (no NaN left from its initial value)");
        REQUIRE(!std::isnan(v));
      }
      require_same(op_ + ": " + name + " is assigned (a second call gives the same)", twice, once[name], tol);
    }
    for (const auto& name : accumulated) {
      const Vec& init = initial(name);
      const Vec twice = get(name);
      Vec expected(init.size());
      for (std::size_t i = 0; i < init.size(); ++i) expected[i] = init[i] + 2 * (once[name][i] - init[i]);
      require_same(op_ + ": " + name + " is accumulated into (a second call adds as much again)", twice, expected, tol);
    }
    reset();
    if (primary_) record(&Coverage::assign_accumulate);
  }

 private:
  template <class>
  friend class Case;
  struct Buffer {
    Vec initial;
    T* device = nullptr;
    Role role = Role::input;
  };

  static std::size_t bytes(std::size_t n) { return std::max<std::size_t>(n, 1) * sizeof(T); }
  static std::string join(const std::set<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
    return s;
  }

  Case& add(const std::string& name, Vec values, Role role) {
    if (auto it = buffers_.find(name); it != buffers_.end()) {
      b_->deallocate(it->second.device, bytes(it->second.initial.size()));
      buffers_.erase(it);
    }
    Buffer buffer{std::move(values), nullptr, role};
    buffer.device = static_cast<T*>(b_->allocate(bytes(buffer.initial.size())));
    upload(buffer);
    buffers_.emplace(name, std::move(buffer));
    if constexpr (has_parity) parity_->add(name, buffers_.at(name).initial, role);
    return *this;
  }
  void upload(Buffer& buffer) {
    const std::vector<T> host(buffer.initial.begin(), buffer.initial.end());
    b_->copy_to_device(buffer.device, host.data(), bytes(host.size()));
  }
  Buffer& find(const std::string& name) {
    const auto it = buffers_.find(name);
    if (it == buffers_.end()) FAIL("test error: " << op_ << " has no buffer named " << name);
    return it->second;
  }

  B* b_;
  std::string op_;
  bool primary_;
  std::map<std::string, Buffer> buffers_;
  std::map<std::string, std::pair<std::int32_t*, std::size_t>> ids_;
  std::map<std::string, std::vector<std::int32_t>> id_values_;
  std::unique_ptr<std::conditional_t<has_parity, Parity, int>> parity_backend_;
  std::unique_ptr<Case<std::conditional_t<has_parity, Parity, B>>> parity_;
};

inline double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
inline double gelu(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
inline std::size_t sz(std::int64_t n) { return static_cast<std::size_t>(n); }

// ---------------------------------------------------------------------------------------------------------------------
// The cases: one static member per listed op, named as the op.

template <class B>
struct OpCases {
  using C = Case<B>;
  using T = typename B::value_type;

  // --- tensor_ops: fills ---

  static void fill(B& b) {
    C c(b, "fill");
    c.out("y", 5).acc("part", {1, 2, 3, 4, 5});
    auto op = [&](auto& be, auto p) {
      be.fill(p("y"), 2.5, 5);
      be.fill(p("part") + 1, -0.75, 3);  // a sub-range: the ends are left alone
    };
    c.run(op);
    c.expect("y", Vec(5, 2.5));
    c.expect("part", {1, -0.75, -0.75, -0.75, 5});
    c.expect_assign_or_accumulate({"y", "part"}, {}, op);
  }

  // Element i of stream (seed, offset) is mean + stddev * rng::normal(seed, offset, i), wherever the fill starts.
  static void fill_normal(B& b) {
    const std::size_t n = 4099;
    C c(b, "fill_normal");
    c.out("x", n).acc("shifted", Vec(n, 9.0));
    auto op = [&](auto& be, auto p) {
      be.fill_normal(p("x"), n, 77, 3, -1.0, 0.5);
      be.fill_normal(p("shifted") + 1, n - 2, 77, 3, -1.0, 0.5);  // an odd count into an unaligned pointer
    };
    c.run(op);
    Vec expected(n), shifted(n, 9.0);
    for (std::size_t i = 0; i < n; ++i) expected[i] = -1.0 + 0.5 * double(rng::normal(77, 3, i));
    for (std::size_t i = 0; i + 2 < n; ++i) shifted[i + 1] = expected[i];
    c.expect("x", expected);
    c.expect("shifted", shifted);
    double mean = 0, var = 0;  // and the stream is a normal one: moments of 4099 draws
    for (const double v : c.get("x")) mean += v / n;
    for (const double v : c.get("x")) var += (v - mean) * (v - mean) / n;
    CHECK(std::abs(mean + 1.0) < 0.05);
    CHECK(std::abs(var - 0.25) < 0.03);
    c.expect_assign_or_accumulate({"x", "shifted"}, {}, op);
  }

  static void fill_uniform(B& b) {
    const std::size_t n = 4099;
    C c(b, "fill_uniform");
    c.out("x", n).acc("part", Vec(7, 9.0));
    auto op = [&](auto& be, auto p) {
      be.fill_uniform(p("x"), n, 12, 1, 2.0, 3.0);
      be.fill_uniform(p("part") + 1, 5, 12, 1, 2.0, 3.0);
    };
    c.run(op);
    Vec expected(n), part(7, 9.0);
    for (std::size_t i = 0; i < n; ++i) expected[i] = 2.0 + double(rng::uniform(12, 1, i));
    for (std::size_t i = 0; i < 5; ++i) part[i + 1] = expected[i];
    c.expect("x", expected);
    c.expect("part", part);
    double mean = 0;
    for (const double v : c.get("x")) {
      REQUIRE(v >= 2.0);
      REQUIRE(v <= 3.0);
      mean += v / n;
    }
    CHECK(std::abs(mean - 2.5) < 0.02);
    c.expect_assign_or_accumulate({"x", "part"}, {}, op);
  }

  // --- tensor_ops: elementwise; gemm ---

  static void add(B& b) {
    C c(b, "add");
    c.in("a", {1, -2, 3}).in("b", {4, 5, -6}).out("out", 3);
    auto op = [&](auto& be, auto p) { be.add(p("out"), p("a"), p("b"), 3); };
    c.run(op);
    c.expect("out", {5, 3, -3});
    c.expect_assign_or_accumulate({"out"}, {}, op);
    // in place (out == a), as the training step adds into its buffers
    c.acc("inplace", {1, -2, 3});
    c.run([&](auto& be, auto p) { be.add(p("inplace"), p("inplace"), p("b"), 3); });
    c.expect("inplace", {5, 3, -3});
    // backward: both gradients are dout
    C g(b, "add (gradient)");
    g.in("a", random_vector(8, 200)).in("b", random_vector(8, 201)).in("dout", random_vector(8, 202)).out("out", 8);
    g.expect_gradients({"out"}, {"dout"}, {{"a", "dout"}, {"b", "dout"}}, [](auto& be, auto p) { be.add(p("out"), p("a"), p("b"), 8); });
  }

  static void mul(B& b) {
    C c(b, "mul");
    c.in("a", {1, -2, 3}).in("b", {4, 5, -6}).out("out", 3);
    auto op = [&](auto& be, auto p) { be.mul(p("out"), p("a"), p("b"), 3); };
    c.run(op);
    c.expect("out", {4, -10, -18});
    c.expect_assign_or_accumulate({"out"}, {}, op);
    c.acc("inplace", {1, -2, 3});
    c.run([&](auto& be, auto p) { be.mul(p("inplace"), p("inplace"), p("b"), 3); });
    c.expect("inplace", {4, -10, -18});
  }

  static void scale(B& b) {
    C c(b, "scale");
    c.in("a", {1, -2, 3}).out("out", 3);
    auto op = [&](auto& be, auto p) { be.scale(p("out"), p("a"), T(0.5), 3); };
    c.run(op);
    c.expect("out", {0.5, -1, 1.5});
    c.expect_assign_or_accumulate({"out"}, {}, op);
    // backward: the gradient is dout scaled
    C g(b, "scale (gradient)");
    g.in("a", random_vector(8, 200)).in("dout", random_vector(8, 202)).out("out", 8).out("da", 8);
    g.run([&](auto& be, auto p) { be.scale(p("da"), p("dout"), T(-1.7), 8); });
    g.expect_gradients({"out"}, {"dout"}, {{"a", "da"}}, [](auto& be, auto p) { be.scale(p("out"), p("a"), -1.7, 8); });
  }

  static void accumulate(B& b) {
    C c(b, "accumulate");
    c.in("x", {1, -2, 3}).acc("y", {0.5, -1, 1.5});
    auto op = [&](auto& be, auto p) { be.accumulate(p("y"), p("x"), 3); };
    c.run(op);
    c.expect("y", {1.5, -3, 4.5});
    c.expect_assign_or_accumulate({}, {"y"}, op);
  }

  // out = a * b: da = dout * b, db = dout * a (assigned; either may be null).
  static void mul_backward(B& b) {
    C c(b, "mul_backward");
    c.in("a", random_vector(8, 200)).in("b", random_vector(8, 201)).in("dout", random_vector(8, 202)).out("out", 8).out("da", 8).out("db", 8);
    auto op = [&](auto& be, auto p) { be.mul_backward(p.opt("da"), p.opt("db"), p("dout"), p("a"), p("b"), 8); };
    c.run(op);
    c.expect_gradients({"out"}, {"dout"}, {{"a", "da"}, {"b", "db"}}, [](auto& be, auto p) { be.mul(p("out"), p("a"), p("b"), 8); });
    c.expect_null_skipping({"da", "db"}, op);
    c.expect_assign_or_accumulate({"da", "db"}, {}, op);
  }

  // Row-major C[m, n] = alpha op(A) op(B) + beta C, with padded leading dimensions (the gaps hold NaN in A and B, which
  // must not be read, and a sentinel in C, which must not be written); beta 0 does not read C (NaN there).
  static void gemm(B& b) {
    const std::int64_t m = 3, n = 4, k = 5, pad = 2;
    for (int variant = 0; variant < 8; ++variant) {
      const bool ta = variant & 1, tb = variant & 2, beta_zero = variant & 4;
      const double alpha = 0.7, beta = beta_zero ? 0.0 : -0.3;
      INFO("gemm trans_a " << ta << " trans_b " << tb << " beta " << beta);
      const std::int64_t rows_a = ta ? k : m, cols_a = ta ? m : k, rows_b = tb ? n : k, cols_b = tb ? k : n;
      const std::int64_t lda = cols_a + pad, ldb = cols_b + pad, ldc = n + pad;
      Vec A(sz(rows_a * lda), kNaN), Bm(sz(rows_b * ldb), kNaN), C0(sz(m * ldc), 42.0);
      const Vec va = random_vector(sz(rows_a * cols_a), 10 + variant), vb = random_vector(sz(rows_b * cols_b), 20 + variant),
                vc = random_vector(sz(m * n), 30 + variant);
      for (std::int64_t r = 0; r < rows_a; ++r)
        for (std::int64_t q = 0; q < cols_a; ++q) A[sz(r * lda + q)] = va[sz(r * cols_a + q)];
      for (std::int64_t r = 0; r < rows_b; ++r)
        for (std::int64_t q = 0; q < cols_b; ++q) Bm[sz(r * ldb + q)] = vb[sz(r * cols_b + q)];
      for (std::int64_t r = 0; r < m; ++r)
        for (std::int64_t q = 0; q < n; ++q) C0[sz(r * ldc + q)] = beta_zero ? kNaN : vc[sz(r * n + q)];
      // the reference, in double: C[r, q] = alpha sum_l A'[r, l] B'[l, q] + beta C[r, q]
      Vec expected = C0;
      for (std::int64_t r = 0; r < m; ++r)
        for (std::int64_t q = 0; q < n; ++q) {
          double sum = 0;
          for (std::int64_t l = 0; l < k; ++l) sum += A[sz(ta ? l * lda + r : r * lda + l)] * Bm[sz(tb ? q * ldb + l : l * ldb + q)];
          expected[sz(r * ldc + q)] = alpha * sum + (beta_zero ? 0.0 : beta * C0[sz(r * ldc + q)]);
        }
      C c(b, "gemm");
      c.in("a", A).in("b", Bm);
      if (beta_zero)
        c.out("c", C0.size()), c.set("c", C0);
      else
        c.acc("c", C0);
      auto op = [&](auto& be, auto p) { be.gemm(ta, tb, m, n, k, T(alpha), p("a"), lda, p("b"), ldb, T(beta), p("c"), ldc); };
      c.run(op);
      c.expect("c", expected, 1e-5);  // the gaps: still 42
      if (beta_zero) c.expect_assign_or_accumulate({"c"}, {}, op);
    }
  }

  // --- gemm: linear ---

  static void linear_forward(B& b) {
    C c(b, "linear_forward");
    c.in("in", {1, 2, -1, 0.5}).in("w", {1, 0, 0, 1, 1, 1}).in("bias", {0.5, 0, -1}).out("out", 6);  // in [2, 2], w [3, 2]: identity rows, the sum
    auto op = [&](auto& be, auto p) { be.linear_forward(p("out"), p("in"), p("w"), p("bias"), {2, 2, 3}); };
    c.run(op);
    c.expect("out", {1.5, 2, 2, -0.5, 0.5, -1.5});
    c.expect_assign_or_accumulate({"out"}, {}, op);
    c.reset();
    c.run([&](auto& be, auto p) { be.linear_forward(p("out"), p("in"), p("w"), nullptr, {2, 2, 3}); });  // bias may be null
    c.expect("out", {1, 2, 3, -1, 0.5, -0.5});
  }

  static void linear_backward(B& b) {
    {
      const nn::LinearDims d{6, 5, 4};  // rows = a [2, 3] batch flattened
      C c(b, "linear_backward");
      c.in("in", random_vector(30, 1)).in("w", random_vector(20, 2)).in("bias", random_vector(4, 3)).in("dout", random_vector(24, 4));
      c.out("out", 24).out("din", 30).acc("dw", random_vector(20, 5)).acc("dbias", random_vector(4, 6));
      auto op = [&](auto& be, auto p) { be.linear_backward(p.opt("din"), p.opt("dw"), p.opt("dbias"), p("dout"), p("in"), p("w"), d); };
      c.run(op);
      c.expect_gradients({"out"}, {"dout"}, {{"in", "din"}, {"w", "dw"}, {"bias", "dbias"}},
                         [&](auto& be, auto p) { be.linear_forward(p("out"), p("in"), p("w"), p("bias"), d); });
      c.expect_null_skipping({"din", "dw", "dbias"}, op);
      c.expect_assign_or_accumulate({"din"}, {"dw", "dbias"}, op);
    }
    {
      // input gradients assigned (no trace of the 100.0 they start with), parameter gradients accumulated
      const nn::LinearDims d{2, 3, 2};
      C c(b, "linear_backward (accumulation)");
      c.in("in", random_vector(6, 5)).in("w", random_vector(6, 6)).in("dout", random_vector(4, 7));
      c.acc("din", Vec(6, 100.0)).acc("dw", Vec(6, 0.0)).acc("dbias", Vec(2, 0.0));
      auto op = [&](auto& be, auto p) { be.linear_backward(p("din"), p("dw"), p("dbias"), p("dout"), p("in"), p("w"), d); };
      c.run(op);
      const Vec din_once = c.get("din"), dw_once = c.get("dw"), dbias_once = c.get("dbias");
      c.run(op);
      const Vec din = c.get("din"), dw = c.get("dw"), dbias = c.get("dbias");
      for (std::size_t i = 0; i < 6; ++i) {
        REQUIRE(din[i] == Approx(din_once[i]));
        REQUIRE(dw[i] == Approx(2 * dw_once[i]));
      }
      REQUIRE(dbias[1] == Approx(2 * dbias_once[1]));
    }
  }

  // --- conv2d ---

  static void conv2d_forward(B& b) {
    struct Sample {
      const char* what;
      nn::Conv2dDims d;
      Vec in, w, bias, expected;
    };
    Vec centre(9, 0.0);
    centre[4] = 1;
    const Sample samples[] = {
        {"3x3 padding 1 over a 3x3 image of ones: corners 4, edges 6, centre 9, plus bias",
         {1, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1},
         Vec(9, 1.0),
         Vec(9, 1.0),
         {0.25},
         {4.25, 6.25, 4.25, 6.25, 9.25, 6.25, 4.25, 6.25, 4.25}},
        {"3x3 stride 2 padding 1 over 4x4 ones: output 2x2 of 4, 6, 6, 9",
         {1, 1, 4, 4, 1, 3, 3, 2, 2, 1, 1},
         Vec(16, 1.0),
         Vec(9, 1.0),
         {},
         {4, 6, 6, 9}},
        {"1x1 mixes channels: out = 2 * c0 - c1", {1, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0}, {1, 2, 3, 4, 10, 20, 30, 40}, {2, -1}, {}, {-8, -16, -24, -32}},
        // a single 1 in the middle; out(y, x) = w(2 - y, 2 - x): a cross-correlation shows the kernel rotated by 180 degrees
        {"3x3 kernel is a cross-correlation (not flipped)",
         {1, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1},
         centre,
         {1, 2, 3, 4, 5, 6, 7, 8, 9},
         {},
         {9, 8, 7, 6, 5, 4, 3, 2, 1}},
    };
    for (const auto& s : samples) {
      INFO(s.what);
      C c(b, "conv2d_forward");
      c.in("in", s.in).in("w", s.w).in("bias", s.bias.empty() ? Vec{0} : s.bias).out("out", s.expected.size());
      const bool bias = !s.bias.empty();
      auto op = [&](auto& be, auto p) { be.conv2d_forward(p("out"), p("in"), p("w"), bias ? p("bias") : nullptr, s.d); };
      c.run(op);
      c.expect("out", s.expected);
      c.expect_assign_or_accumulate({"out"}, {}, op);
    }
  }

  static void check_conv(B& b, const nn::Conv2dDims& d, std::uint64_t seed, bool skipping) {
    const auto in_n = sz(d.batch * d.in_channels * d.height * d.width), w_n = sz(d.out_channels * d.in_channels * d.kernel_h * d.kernel_w);
    const auto out_n = sz(d.batch * d.out_channels * d.out_height() * d.out_width()), k = sz(d.out_channels);
    C c(b, "conv2d_backward");
    c.in("in", random_vector(in_n, seed)).in("w", random_vector(w_n, seed + 1)).in("bias", random_vector(k, seed + 2));
    c.in("dout", random_vector(out_n, seed + 3)).out("out", out_n).out("din", in_n);
    c.acc("dw", random_vector(w_n, seed + 4)).acc("dbias", random_vector(k, seed + 5));
    auto op = [&](auto& be, auto p) { be.conv2d_backward(p.opt("din"), p.opt("dw"), p.opt("dbias"), p("dout"), p("in"), p("w"), d); };
    c.run(op);
    c.expect_gradients({"out"}, {"dout"}, {{"in", "din"}, {"w", "dw"}, {"bias", "dbias"}},
                       [&](auto& be, auto p) { be.conv2d_forward(p("out"), p("in"), p("w"), p("bias"), d); });
    if (skipping) {
      c.expect_null_skipping({"din", "dw", "dbias"}, op);
      c.expect_assign_or_accumulate({"din"}, {"dw", "dbias"}, op);
    }
  }
  static void conv2d_backward(B& b) {
    struct Path {
      const char* what;
      nn::Conv2dDims d;
      std::uint64_t seed;
      bool skipping;  // null skipping and accumulation checked on this path too
    };
    for (const auto& [what, d, seed, skipping] :
         {Path{"3x3 stride 1 padding 1 (shifted-GEMM fast path)", {2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1}, 10, true},
          Path{"3x3 stride 1 padding 1, more channels than pixels (im2col path)", {1, 2, 2, 2, 5, 3, 3, 1, 1, 1, 1}, 15, true},
          Path{"1x1 (pointwise fast path)", {2, 3, 4, 5, 4, 1, 1, 1, 1, 0, 0}, 20, true},
          Path{"3x3 stride 2 padding 1 (im2col path, SD downsampler)", {2, 3, 7, 6, 2, 3, 3, 2, 2, 1, 1}, 30, true},
          Path{"2x3 kernel, strides (1, 2), padding (0, 1)", {1, 2, 5, 7, 3, 2, 3, 1, 2, 0, 1}, 40, false},
          Path{"3x3 without padding", {1, 2, 5, 5, 2, 3, 3, 1, 1, 0, 0}, 50, false},
          Path{"3x3 stride 2, padding only bottom and right (VAE downsampler)", {2, 2, 6, 5, 3, 3, 3, 2, 2, 0, 0, 1, 1}, 60, true}}) {
      INFO("conv2d path: " << what);
      check_conv(b, d, seed, skipping);
    }
  }

  // --- normalization ---

  // in [1, 2, 4], 2 groups of one channel: group 0 = [1, 2, 3, 4] (mean 2.5, variance 1.25), group 1 constant 5
  // (normalises to 0, so beta); gamma = {2, 1}, beta = {0, 3}.
  static Vec group_norm_expected(double eps) {
    const double r = 1 / std::sqrt(1.25 + eps);
    return {-1.5 * r * 2, -0.5 * r * 2, 0.5 * r * 2, 1.5 * r * 2, 3, 3, 3, 3};
  }
  static void group_norm_forward(B& b) {
    C c(b, "group_norm_forward");
    c.in("in", {1, 2, 3, 4, 5, 5, 5, 5}).in("gamma", {2, 1}).in("beta", {0, 3}).out("out", 8).out("mean", 2).out("rstd", 2);
    auto op = [&](auto& be, auto p) { be.group_norm_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), {1, 2, 4, 2, 1e-5}); };
    c.run(op);
    c.expect("out", group_norm_expected(1e-5), 1e-5);
    c.expect("mean", {2.5, 5.0});
    c.expect("rstd", {1 / std::sqrt(1.25 + 1e-5), 1 / std::sqrt(1e-5)}, 1e-5);
    c.expect_assign_or_accumulate({"out", "mean", "rstd"}, {}, op);
  }

  // A norm's backward: the forward's statistics computed by the backend, then the backward on them.
  template <class Forward, class Backward>
  static void check_norm_backward(B& b, const char* op_name, std::size_t n, std::size_t channels, std::size_t stats, std::uint64_t seed,
                                  double spread, Vec dgamma0, Vec dbeta0, Forward forward, Backward backward) {
    C c(b, op_name);
    c.in("in", random_vector(n, seed, spread)).in("gamma", random_vector(channels, seed + 1)).in("beta", random_vector(channels, seed + 2));
    c.in("dout", random_vector(n, seed + 3)).out("out", n).out("mean", stats).out("rstd", stats);
    c.out("din", n).acc("dgamma", std::move(dgamma0)).acc("dbeta", std::move(dbeta0));
    c.run(forward);
    const Vec mean = c.get("mean"), rstd = c.get("rstd");
    c.in("saved_mean", mean).in("saved_rstd", rstd);  // the statistics as the backend saved them
    c.run(backward);
    c.expect_gradients({"out"}, {"dout"}, {{"in", "din"}, {"gamma", "dgamma"}, {"beta", "dbeta"}}, forward);
    c.expect_null_skipping({"din", "dgamma", "dbeta"}, backward);
    c.expect_assign_or_accumulate({"din"}, {"dgamma", "dbeta"}, backward);
  }

  static void group_norm_backward(B& b) {
    const nn::GroupNormDims d{2, 6, 5, 3, 1e-5};
    check_norm_backward(
        b, "group_norm_backward", 60, 6, 6, 60, 2.0, Vec(6, 0.0), Vec(6, 0.0),
        [&](auto& be, auto p) { be.group_norm_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d); },
        [&](auto& be, auto p) {
          be.group_norm_backward(p.opt("din"), p.opt("dgamma"), p.opt("dbeta"), p("dout"), p("in"), p("saved_mean"), p("saved_rstd"), p("gamma"), d);
        });
  }

  static void group_norm_silu_forward(B& b) {
    C c(b, "group_norm_silu_forward");
    c.in("in", {1, 2, 3, 4, 5, 5, 5, 5}).in("gamma", {2, 1}).in("beta", {0, 3}).out("out", 8).out("mean", 2).out("rstd", 2);
    c.out("normed", 8).out("m", 2).out("r", 2).out("separate", 8);
    const nn::GroupNormDims d{1, 2, 4, 2, 1e-5};
    auto op = [&](auto& be, auto p) { be.group_norm_silu_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d); };
    c.run(op);
    Vec expected = group_norm_expected(1e-5);
    for (auto& v : expected) v = v * sigmoid(v);  // silu(y) = y sigmoid(y)
    c.expect("out", expected, 1e-5);
    c.expect("mean", {2.5, 5.0});
    c.expect("rstd", {1 / std::sqrt(1.25 + 1e-5), 1 / std::sqrt(1e-5)}, 1e-5);
    c.expect_assign_or_accumulate({"out", "mean", "rstd"}, {}, op);
    // The fused forward is silu of the group norm (what the models computed before the fusion): exactly on the CPU.
    C s(b, "group_norm_silu_forward (fused against separate)");
    s.in("in", random_vector(60, 64, 2.0)).in("gamma", random_vector(6, 65)).in("beta", random_vector(6, 66));
    s.out("out", 60).out("mean", 6).out("rstd", 6).out("normed", 60).out("m", 6).out("r", 6).out("separate", 60);
    const nn::GroupNormDims d2{2, 6, 5, 3, 1e-5};
    s.run([&](auto& be, auto p) {
      be.group_norm_forward(p("normed"), p("m"), p("r"), p("in"), p("gamma"), p("beta"), d2);
      be.silu_forward(p("separate"), p("normed"), 60);
      be.group_norm_silu_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d2);
    });
    const double tol = is_cpu_backend<B> ? 0.0 : 1e-6;
    require_same("fused against silu(group_norm)", s.get("out"), s.get("separate"), tol);
    require_same("fused mean", s.get("mean"), s.get("m"), tol);
    require_same("fused rstd", s.get("rstd"), s.get("r"), tol);
  }

  static void group_norm_silu_backward(B& b) {
    const nn::GroupNormDims d{2, 6, 5, 3, 1e-5};
    check_norm_backward(
        b, "group_norm_silu_backward", 60, 6, 6, 64, 2.0, Vec(6, 0.5), Vec(6, -0.25),
        [&](auto& be, auto p) { be.group_norm_silu_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d); },
        [&](auto& be, auto p) {
          be.group_norm_silu_backward(p.opt("din"), p.opt("dgamma"), p.opt("dbeta"), p("dout"), p("in"), p("saved_mean"), p("saved_rstd"), p("gamma"),
                                      p("beta"), d);
        });
  }

  static void layer_norm_forward(B& b) {
    C c(b, "layer_norm_forward");
    // each row: mean +-1 from its middle, variance 1, eps 0: [0, 2] -> [-1, 1], [3, 5] -> [-1, 1]; beta {0, 0.5}
    c.in("in", {0, 2, 3, 5}).in("gamma", {1, 1}).in("beta", {0, 0.5}).out("out", 4).out("mean", 2).out("rstd", 2);
    auto op = [&](auto& be, auto p) { be.layer_norm_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), {2, 2, 0.0}); };
    c.run(op);
    c.expect("out", {-1, 1.5, -1, 1.5});
    c.expect("mean", {1, 4});
    c.expect("rstd", {1, 1});
    c.expect_assign_or_accumulate({"out", "mean", "rstd"}, {}, op);
  }

  static void layer_norm_backward(B& b) {
    const nn::LayerNormDims d{4, 7, 1e-5};
    check_norm_backward(
        b, "layer_norm_backward", 28, 7, 4, 70, 3.0, Vec(7, 0.0), Vec(7, 0.0),
        [&](auto& be, auto p) { be.layer_norm_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d); },
        [&](auto& be, auto p) {
          be.layer_norm_backward(p.opt("din"), p.opt("dgamma"), p.opt("dbeta"), p("dout"), p("in"), p("saved_mean"), p("saved_rstd"), p("gamma"), d);
        });
  }

  // --- activations ---

  template <class F>
  static void check_activation_forward(B& b, const char* name, F op, const Vec& expected, double tol) {
    C c(b, name);
    c.in("x", {0, 1, -1}).out("y", 3);
    c.run(op);
    c.expect("y", expected, tol);
    c.expect_assign_or_accumulate({"y"}, {}, op);
  }
  static void silu_forward(B& b) {  // x / (1 + e^-x): 0, 0.7310585786, -0.2689414214
    check_activation_forward(
        b, "silu_forward", [](auto& be, auto p) { be.silu_forward(p("y"), p("x"), 3); }, {0, 0.7310585786, -0.2689414214}, 1e-6);
  }
  static void gelu_forward(B& b) {  // x * Phi(x): Phi(1) = 0.8413447461
    check_activation_forward(
        b, "gelu_forward", [](auto& be, auto p) { be.gelu_forward(p("y"), p("x"), 3); }, {0, 0.8413447461, -0.1586552539}, 1e-6);
  }
  static void quick_gelu_forward(B& b) {  // x * sigmoid(1.702 x): sigmoid(1.702) = 0.8457957
    check_activation_forward(
        b, "quick_gelu_forward", [](auto& be, auto p) { be.quick_gelu_forward(p("y"), p("x"), 3); }, {0, 0.8457957, -0.1542043}, 2e-6);
  }

  template <class Forward, class Backward>
  static void check_activation_backward(B& b, const char* name, Forward forward, Backward backward) {
    C c(b, name);
    c.in("in", random_vector(40, 80, 2.5)).in("dout", random_vector(40, 81)).out("out", 40).out("din", 40);
    c.run(backward);
    c.expect_gradients({"out"}, {"dout"}, {{"in", "din"}}, forward);
    c.expect_assign_or_accumulate({"din"}, {}, backward);
  }
  static void silu_backward(B& b) {
    check_activation_backward(
        b, "silu_backward", [](auto& be, auto p) { be.silu_forward(p("out"), p("in"), 40); },
        [](auto& be, auto p) { be.silu_backward(p("din"), p("dout"), p("in"), 40); });
  }
  static void gelu_backward(B& b) {
    check_activation_backward(
        b, "gelu_backward", [](auto& be, auto p) { be.gelu_forward(p("out"), p("in"), 40); },
        [](auto& be, auto p) { be.gelu_backward(p("din"), p("dout"), p("in"), 40); });
  }
  static void quick_gelu_backward(B& b) {
    check_activation_backward(
        b, "quick_gelu_backward", [](auto& be, auto p) { be.quick_gelu_forward(p("out"), p("in"), 40); },
        [](auto& be, auto p) { be.quick_gelu_backward(p("din"), p("dout"), p("in"), 40); });
  }

  static void geglu_forward(B& b) {
    // one row: a = [2, -3], gate = [1, 0] -> [2 gelu(1), -3 gelu(0)] = [1.6826894922, 0]
    C c(b, "geglu_forward");
    c.in("x", {2, -3, 1, 0}).out("y", 2);
    auto op = [](auto& be, auto p) { be.geglu_forward(p("y"), p("x"), 1, 2); };
    c.run(op);
    c.expect("y", {1.6826894922, 0});
    c.expect("y", {2 * gelu(1), 0});
    c.expect_assign_or_accumulate({"y"}, {}, op);
  }
  static void geglu_backward(B& b) {
    C c(b, "geglu_backward");
    c.in("in", random_vector(24, 90, 1.5)).in("dout", random_vector(12, 91)).out("out", 12).out("din", 24);  // [3, 2 * 4]
    auto op = [](auto& be, auto p) { be.geglu_backward(p("din"), p("dout"), p("in"), 3, 4); };
    c.run(op);
    c.expect_gradients({"out"}, {"dout"}, {{"in", "din"}}, [](auto& be, auto p) { be.geglu_forward(p("out"), p("in"), 3, 4); });
    c.expect_assign_or_accumulate({"din"}, {}, op);
  }

  static void softmax_forward(B& b) {
    // [0, ln 2, ln 3] -> [1, 2, 3] / 6; the second row's large equal logits stay finite
    C c(b, "softmax_forward");
    c.in("x", {0, std::log(2.0), std::log(3.0), 1000, 1000, 1000}).out("y", 6);
    auto op = [](auto& be, auto p) { be.softmax_forward(p("y"), p("x"), 2, 3); };
    c.run(op);
    c.expect("y", {1 / 6.0, 2 / 6.0, 3 / 6.0, 1 / 3.0, 1 / 3.0, 1 / 3.0});
    c.expect_assign_or_accumulate({"y"}, {}, op);
  }
  static void softmax_backward(B& b) {
    C c(b, "softmax_backward");
    c.in("in", random_vector(15, 100, 2.0)).in("dout", random_vector(15, 101)).out("out", 15).out("din", 15);
    auto forward = [](auto& be, auto p) { be.softmax_forward(p("out"), p("in"), 3, 5); };
    c.run(forward);
    c.in("saved_out", c.get("out"));
    auto op = [](auto& be, auto p) { be.softmax_backward(p("din"), p("dout"), p("saved_out"), 3, 5); };
    c.run(op);
    c.expect_gradients({"out"}, {"dout"}, {{"in", "din"}}, forward);
    c.expect_assign_or_accumulate({"din"}, {}, op);
  }

  // --- attention ---

  static void attention_forward(B& b) {
    // k [1, 3, 2], zero queries: every score 0, uniform weights over the values
    C c(b, "attention_forward");
    c.in("q", Vec(6, 0.0)).in("k", {1, 2, 3, 4, 5, 6}).in("v", {1, 10, 2, 20, 6, 60}).out("out", 6).out("lse", 3);
    auto op = [](auto& be, auto p) { be.attention_forward(p("out"), p("lse"), p("q"), p("k"), p("v"), {1, 1, 3, 3, 2, false, 0.0}); };
    c.run(op);
    c.expect("out", {3, 30, 3, 30, 3, 30});
    c.expect("lse", Vec(3, std::log(3.0)));
    c.expect_assign_or_accumulate({"out", "lse"}, {}, op);
    c.reset();
    c.run([](auto& be, auto p) { be.attention_forward(p("out"), p("lse"), p("q"), p("k"), p("v"), {1, 1, 3, 3, 2, true, 0.0}); });
    c.expect("out", {1, 10, 1.5, 15, 3, 30});  // causal: query i sees keys 0..i
    c.expect("lse", {0, std::log(2.0), std::log(3.0)});
    // two heads are independent (interleaved [.., h0 dims, h1 dims]; head_dim 1, scale 1): head 0 uniform over v = 1, 3
    // -> 2; head 1 has scores 0 and 2 ln 2 -> weights 1:4 over v = 1, 5 -> 0.2 + 4 = 4.2
    C h(b, "attention_forward (two heads)");
    h.in("q", {0, 1}).in("k", {0, 0, 0, 2 * std::log(2.0)}).in("v", {1, 1, 3, 5}).out("out", 2).out("lse", 2);
    h.run([](auto& be, auto p) { be.attention_forward(p("out"), p("lse"), p("q"), p("k"), p("v"), {1, 2, 1, 2, 1, false, 1.0}); });
    h.expect("out", {2, 4.2}, 1e-5);
    h.expect("lse", {std::log(2.0), std::log(5.0)}, 1e-5);
  }

  static void check_attention(B& b, const nn::AttentionDims& d, std::uint64_t seed, bool skipping) {
    const auto width = sz(d.heads * d.head_dim);
    const auto q_n = sz(d.batch * d.q_len) * width, kv_n = sz(d.batch * d.kv_len) * width, l_n = sz(d.batch * d.heads * d.q_len);
    C c(b, "attention_backward");
    c.in("q", random_vector(q_n, seed)).in("k", random_vector(kv_n, seed + 1)).in("v", random_vector(kv_n, seed + 2));
    c.in("dout", random_vector(q_n, seed + 3)).out("out", q_n).out("lse", l_n).out("dq", q_n).out("dk", kv_n).out("dv", kv_n);
    auto forward = [&](auto& be, auto p) { be.attention_forward(p("out"), p("lse"), p("q"), p("k"), p("v"), d); };
    c.run(forward);
    c.in("saved_out", c.get("out")).in("saved_lse", c.get("lse"));
    auto op = [&](auto& be, auto p) {
      be.attention_backward(p.opt("dq"), p.opt("dk"), p.opt("dv"), p("dout"), p("q"), p("k"), p("v"), p("saved_out"), p("saved_lse"), d);
    };
    c.run(op);
    c.expect_gradients({"out"}, {"dout"}, {{"q", "dq"}, {"k", "dk"}, {"v", "dv"}}, forward);
    if (skipping) {
      c.expect_null_skipping({"dq", "dk", "dv"}, op);
      c.expect_assign_or_accumulate({"dq", "dk", "dv"}, {}, op);
    }
  }
  static void attention_backward(B& b) {
    struct Sample {
      const char* what;
      nn::AttentionDims d;
      std::uint64_t seed;
      bool skipping;
    };
    for (const auto& [what, d, seed, skipping] :
         {Sample{"self-attention, 2 heads", {2, 2, 5, 5, 3, false, 0.0}, 110, false},
          Sample{"cross-attention, Tq != Tk", {2, 2, 5, 3, 4, false, 0.0}, 120, false},
          Sample{"causal self-attention", {1, 2, 4, 4, 3, true, 0.0}, 130, false}, Sample{"explicit scale", {1, 1, 3, 4, 2, false, 0.3}, 140, false},
          Sample{"more query rows than one block (130 > 128)", {1, 1, 130, 3, 2, false, 0.0}, 150, false},
          Sample{"more keys than one backward key block (300 > 256), gradients assigned", {1, 1, 130, 300, 2, false, 0.0}, 155, true},
          Sample{"causal over several query and key blocks (blocks after every query skipped)", {1, 1, 300, 300, 2, true, 0.0}, 160, false},
          Sample{"null gradients skipped, the others unchanged", {2, 2, 6, 5, 3, false, 0.0}, 170, true}}) {
      INFO("attention: " << what);
      check_attention(b, d, seed, skipping);
    }
  }

  // --- tensor_ops: data movement, embeddings, loss, timesteps, the VAE's Gaussian ---

  static void transpose(B& b) {
    C c(b, "transpose");
    c.in("x", {1, 2, 3, 4, 5, 6}).out("y", 6);  // [1, 2, 3] -> [1, 3, 2]
    auto op = [](auto& be, auto p) { be.transpose(p("y"), p("x"), 1, 2, 3); };
    c.run(op);
    c.expect("y", {1, 4, 2, 5, 3, 6});
    c.expect_assign_or_accumulate({"y"}, {}, op);
    // it is its own backward: [2, 3, 5] -> [2, 5, 3], the gradient transposed back
    C g(b, "transpose (gradient)");
    g.in("in", random_vector(30, 220)).in("dout", random_vector(30, 221)).out("out", 30).out("din", 30);
    g.run([](auto& be, auto p) { be.transpose(p("din"), p("dout"), 2, 5, 3); });
    g.expect_gradients({"out"}, {"dout"}, {{"in", "din"}}, [](auto& be, auto p) { be.transpose(p("out"), p("in"), 2, 3, 5); });
  }

  static void add_channel_bias(B& b) {
    C c(b, "add_channel_bias");
    c.in("x", {1, 2, 3, 4, 5, 6}).in("bias", {10, 20}).out("y", 6);  // [1, 2, 3]: channel 0 gets 10, channel 1 gets 20
    auto op = [](auto& be, auto p) { be.add_channel_bias(p("y"), p("x"), p("bias"), 1, 2, 3); };
    c.run(op);
    c.expect("y", {11, 12, 13, 24, 25, 26});
    c.expect_assign_or_accumulate({"y"}, {}, op);
    c.acc("inplace", {1, 2, 3, 4, 5, 6});
    c.run([](auto& be, auto p) { be.add_channel_bias(p("inplace"), p("inplace"), p("bias"), 1, 2, 3); });
    c.expect("inplace", {11, 12, 13, 24, 25, 26});
    check_channel_bias_gradient(b);
  }
  // The bias gradient of add_channel_bias is channel_sum of dout, the input's is dout.
  static void check_channel_bias_gradient(B& b) {
    C g(b, "channel_sum as add_channel_bias's backward");
    g.in("in", random_vector(24, 230)).in("bias", random_vector(6, 231)).in("dout", random_vector(24, 232)).out("out", 24).out("dbias", 6);
    g.run([](auto& be, auto p) { be.channel_sum(p("dbias"), p("dout"), 2, 3, 4); });
    g.expect_gradients({"out"}, {"dout"}, {{"in", "dout"}, {"bias", "dbias"}},
                       [](auto& be, auto p) { be.add_channel_bias(p("out"), p("in"), p("bias"), 2, 3, 4); });
  }
  static void channel_sum(B& b) {
    C c(b, "channel_sum");
    c.in("x", {1, 2, 3, 4, 5, 6}).out("sums", 2);
    auto op = [](auto& be, auto p) { be.channel_sum(p("sums"), p("x"), 1, 2, 3); };
    c.run(op);
    c.expect("sums", {6, 15});
    c.expect_assign_or_accumulate({"sums"}, {}, op);
    check_channel_bias_gradient(b);
  }

  static void upsample_nearest2x_forward(B& b) {
    C c(b, "upsample_nearest2x_forward");
    c.in("x", {1, 2, 3, 4}).out("y", 16);
    auto op = [](auto& be, auto p) { be.upsample_nearest2x_forward(p("y"), p("x"), 1, 2, 2); };
    c.run(op);
    c.expect("y", {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4});
    c.expect_assign_or_accumulate({"y"}, {}, op);
  }
  static void upsample_nearest2x_backward(B& b) {
    C c(b, "upsample_nearest2x_backward");
    c.in("in", random_vector(12, 160)).in("dout", random_vector(48, 161)).out("out", 48).out("din", 12);  // [2 planes, 2, 3]
    auto op = [](auto& be, auto p) { be.upsample_nearest2x_backward(p("din"), p("dout"), 2, 2, 3); };
    c.run(op);
    c.expect_gradients({"out"}, {"dout"}, {{"in", "din"}}, [](auto& be, auto p) { be.upsample_nearest2x_forward(p("out"), p("in"), 2, 2, 3); });
    c.expect_assign_or_accumulate({"din"}, {}, op);
  }

  // concat: a[2, 3, 4] + b[2, 2, 4] -> [2, 5, 4]; its backward is split, and split's backward is concat.
  static void concat_channels(B& b) {
    C c(b, "concat_channels");
    c.in("a", {1, 2, 3, 4}).in("c", {9, 8}).out("out", 6);  // a[2, 2, 1] + c[2, 1, 1] -> [2, 3, 1]
    auto op = [](auto& be, auto p) { be.concat_channels(p("out"), p("a"), p("c"), 2, 2, 1, 1); };
    c.run(op);
    c.expect("out", {1, 2, 9, 3, 4, 8});
    c.expect_assign_or_accumulate({"out"}, {}, op);
    C g(b, "concat_channels (gradient through split)");
    g.in("a", random_vector(24, 170)).in("b", random_vector(16, 171)).in("dout", random_vector(40, 172)).out("out", 40).out("da", 24).out("db", 16);
    g.run([](auto& be, auto p) { be.split_channels(p("da"), p("db"), p("dout"), 2, 3, 2, 4); });
    g.expect_gradients({"out"}, {"dout"}, {{"a", "da"}, {"b", "db"}},
                       [](auto& be, auto p) { be.concat_channels(p("out"), p("a"), p("b"), 2, 3, 2, 4); });
  }
  static void split_channels(B& b) {
    C c(b, "split_channels");
    c.in("in", {1, 2, 9, 3, 4, 8}).out("a", 4).out("c", 2);
    auto op = [](auto& be, auto p) { be.split_channels(p.opt("a"), p.opt("c"), p("in"), 2, 2, 1, 1); };
    c.run(op);
    c.expect("a", {1, 2, 3, 4});
    c.expect("c", {9, 8});
    c.expect_null_skipping({"a", "c"}, op);
    c.expect_assign_or_accumulate({"a", "c"}, {}, op);
    // split as a forward op, concat its backward
    C g(b, "split_channels (gradient through concat)");
    g.in("in", random_vector(40, 173)).in("da", random_vector(24, 174)).in("db", random_vector(16, 175));
    g.out("a", 24).out("b", 16).out("din", 40);
    g.run([](auto& be, auto p) { be.concat_channels(p("din"), p("da"), p("db"), 2, 3, 2, 4); });
    g.expect_gradients({"a", "b"}, {"da", "db"}, {{"in", "din"}}, [](auto& be, auto p) { be.split_channels(p("a"), p("b"), p("in"), 2, 3, 2, 4); });
  }

  static void embedding_forward(B& b) {
    C c(b, "embedding_forward");
    c.in("tokens", {0, 0, 1, 1, 2, 2}).in("positions", {0, 10, 0, 20}).ids("ids", {2, 0}).out("out", 4);  // vocab 3 x 2: token i = [i, i]
    auto op = [](auto& be, auto p) { be.embedding_forward(p("out"), p.ids("ids"), p("tokens"), p("positions"), 1, 2, 3, 2); };
    c.run(op);
    c.expect("out", {2, 12, 0, 20});
    c.expect_assign_or_accumulate({"out"}, {}, op);
    c.reset();
    c.run([](auto& be, auto p) { be.embedding_forward(p("out"), p.ids("ids"), p("tokens"), nullptr, 1, 2, 3, 2); });  // no position table
    c.expect("out", {2, 2, 0, 0});
    if constexpr (is_cpu_backend<B>) {  // the CUDA backend reports it at the next synchronize instead (tests/gpu/test_cuda_ops.cpp)
      c.ids("bad", {3, 0});             // outside the vocabulary of 3: the call throws naming the id
      REQUIRE_THROWS_WITH(c.run([](auto& be, auto p) { be.embedding_forward(p("out"), p.ids("bad"), p("tokens"), p("positions"), 1, 2, 3, 2); }),
                          Catch::Contains("token id 3"));
    }
  }
  static void embedding_backward(B& b) {
    C c(b, "embedding_backward");
    // ids [2, 3], token 3 repeated: gradients must add up; vocab 5 x 3, max positions 4 x 3
    c.ids("ids", {3, 0, 3, 1, 4, 3}).in("tokens", random_vector(15, 180)).in("positions", random_vector(12, 181)).in("dout", random_vector(18, 182));
    c.out("out", 18).acc("dtokens", random_vector(15, 183)).acc("dpositions", random_vector(12, 184));
    auto op = [](auto& be, auto p) { be.embedding_backward(p.opt("dtokens"), p.opt("dpositions"), p("dout"), p.ids("ids"), 2, 3, 5, 3); };
    c.run(op);
    c.expect_gradients({"out"}, {"dout"}, {{"tokens", "dtokens"}, {"positions", "dpositions"}},
                       [](auto& be, auto p) { be.embedding_forward(p("out"), p.ids("ids"), p("tokens"), p("positions"), 2, 3, 5, 3); });
    c.expect_null_skipping({"dtokens", "dpositions"}, op);
    c.expect_assign_or_accumulate({}, {"dtokens", "dpositions"}, op);
  }

  static void mse_forward(B& b) {
    C c(b, "mse_forward");
    c.in("a", {1, 2}).in("t", {0, 0}).out("loss", 1);  // (1 + 4) / 2
    auto op = [](auto& be, auto p) { be.mse_forward(p("loss"), p("a"), p("t"), 2); };
    c.run(op);
    c.expect("loss", {2.5}, 0.0);
    c.expect_assign_or_accumulate({"loss"}, {}, op);
  }
  static void mse_backward(B& b) {
    C c(b, "mse_backward");
    c.in("a", random_vector(10, 190)).in("t", random_vector(10, 191)).in("dloss", {0.7}).out("loss", 1).out("da", 10).out("dt", 10);
    auto op = [](auto& be, auto p) { be.mse_backward(p.opt("da"), p.opt("dt"), p("dloss"), p("a"), p("t"), 10); };
    c.run(op);
    c.expect_gradients({"loss"}, {"dloss"}, {{"a", "da"}, {"t", "dt"}}, [](auto& be, auto p) { be.mse_forward(p("loss"), p("a"), p("t"), 10); });
    c.expect_null_skipping({"da", "dt"}, op);
    c.expect_assign_or_accumulate({"da", "dt"}, {}, op);
  }

  static void timestep_embedding_forward(B& b) {
    C c(b, "timestep_embedding_forward");
    c.in("t", {0, 1}).in("one", {1}).out("out", 8).out("odd", 3);
    // dim 4: half 2, frequencies exp(-ln(10000) * i / 2) = 1 and 0.01; [cos, sin]
    auto op = [](auto& be, auto p) { be.timestep_embedding_forward(p("out"), p("t"), {2, 4, true, 0.0, 1.0, 10000.0}); };
    c.run(op);
    c.expect("out", {1, 1, 0, 0, std::cos(1.0), std::cos(0.01), std::sin(1.0), std::sin(0.01)});
    c.expect_assign_or_accumulate({"out"}, {}, op);
    c.reset();  // [sin, cos], shift 1: frequencies exp(-ln(10000) * i / 1) = 1, 1e-4
    c.run([](auto& be, auto p) { be.timestep_embedding_forward(p("out"), p("t"), {2, 4, false, 1.0, 1.0, 10000.0}); });
    c.expect("out", {0, 0, 1, 1, std::sin(1.0), std::sin(1e-4), std::cos(1.0), std::cos(1e-4)});
    c.run([](auto& be, auto p) { be.timestep_embedding_forward(p("odd"), p("one"), {1, 3, true, 0.0, 1.0, 10000.0}); });  // half 1, zero pad
    c.expect("odd", {std::cos(1.0), std::sin(1.0), 0});
  }

  // out = in limited to [low, high] (the VAE's logvar clamp: in place on a sub-range).
  static void clamp(B& b) {
    C c(b, "clamp");
    c.in("x", {-3, -2, -0.5, 0, 1.5, 2, 7}).out("y", 7).acc("logvar", {40, -31, 5, -29.5, 21, 0.25});
    auto op = [](auto& be, auto p) {
      be.clamp(p("y"), p("x"), -2.0, 2.0, 7);
      be.clamp(p("logvar") + 1, p("logvar") + 1, -30.0, 20.0, 4);  // in place; the ends are left alone
    };
    c.run(op);
    c.expect("y", {-2, -2, -0.5, 0, 1.5, 2, 2}, 0.0);
    c.expect("logvar", {40, -30, 5, -29.5, 20, 0.25}, 0.0);
    c.expect_assign_or_accumulate({"y", "logvar"}, {}, op);
  }

  // out[i] = 0 where rng::uniform(seed, offset, i) < p, else in[i] / (1 - p), worked in double from the same draws;
  // in place too, and p = 0 leaves the input as it is. The case checks that both outcomes occur.
  static void dropout(B& b) {
    const std::size_t n = 64;
    const double p = 0.25;
    const Vec x = random_vector(n, 210);
    Vec expected(n);
    std::size_t dropped = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const bool drop = rng::uniform(7, 3, i) < static_cast<float>(p);
      dropped += drop;
      expected[i] = drop ? 0.0 : x[i] / (1.0 - p);
    }
    REQUIRE(dropped > 4);
    REQUIRE(dropped < n - 4);
    C c(b, "dropout");
    c.in("x", x).out("y", n).out("same", n).acc("inplace", x);
    auto op = [=](auto& be, auto ptr) { be.dropout(ptr("y"), ptr("x"), n, 7, 3, p); };
    c.run(op);
    c.expect("y", expected);
    c.run([=](auto& be, auto ptr) { be.dropout(ptr("inplace"), ptr("inplace"), n, 7, 3, p); });
    c.expect("inplace", expected);
    c.run([=](auto& be, auto ptr) { be.dropout(ptr("same"), ptr("x"), n, 7, 3, 0.0); });
    c.expect("same", x);
    c.expect_assign_or_accumulate({"y"}, {}, op);
  }

  // latents[n, c, s] = mean + exp(clamp(logvar, -30, 20) / 2) * eps from moments[N, 2C, S] = [mean | logvar], worked in
  // double; logvars outside [-30, 20] included. Latents may be eps itself (the VAE samples in place).
  static void diagonal_gaussian_sample(B& b) {
    const std::int64_t N = 2, Ch = 2, S = 3;
    Vec moments = random_vector(sz(N * 2 * Ch * S), 200);
    const Vec logvars = {0.0, -1.5, 2.0, 25.0, -40.0, 20.0, -30.0, 0.7, -3.0, 19.5, -31.0, 1.0};  // [N, C, S]
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < Ch * S; ++i) moments[sz((n * 2 * Ch + Ch) * S + i)] = logvars[sz(n * Ch * S + i)];
    const Vec eps = random_vector(sz(N * Ch * S), 201);
    Vec expected(sz(N * Ch * S));
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < Ch * S; ++i) {
        const double mean = moments[sz(n * 2 * Ch * S + i)], logvar = std::min(20.0, std::max(-30.0, logvars[sz(n * Ch * S + i)]));
        expected[sz(n * Ch * S + i)] = mean + std::exp(0.5 * logvar) * eps[sz(n * Ch * S + i)];
      }
    C c(b, "diagonal_gaussian_sample");
    c.in("moments", moments).in("eps", eps).out("z", expected.size()).acc("inplace", eps);
    auto op = [=](auto& be, auto p) { be.diagonal_gaussian_sample(p("z"), p("moments"), p("eps"), N, Ch, S); };
    c.run(op);
    c.expect("z", expected);
    c.run([=](auto& be, auto p) { be.diagonal_gaussian_sample(p("inplace"), p("moments"), p("inplace"), N, Ch, S); });
    c.expect("inplace", expected);
    c.expect_assign_or_accumulate({"z"}, {}, op);
  }

  // --- optimizer ---

  // Two AdamW steps, against torch.optim.AdamW's formula worked in double: p *= 1 - lr wd; m = b1 m + (1 - b1) g;
  // v = b2 v + (1 - b2) g^2; p -= lr (m / bc1) / (sqrt(v / bc2) + eps).
  static void adamw_step(B& b) {
    const Vec p0 = {1.0, -2.0, 0.5, 0.0}, g1 = {0.5, -0.1, 0.0, 2.0}, g2 = {-0.25, 0.3, 1.0, 2.0};
    const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    C c(b, "adamw_step");
    c.acc("param", p0).acc("m", Vec(4, 0.0)).acc("v", Vec(4, 0.0)).in("grad", g1);
    Vec p = p0, m(4, 0.0), v(4, 0.0);
    for (int step = 1; step <= 2; ++step) {
      const Vec& g = step == 1 ? g1 : g2;
      c.set("grad", g);
      const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
      c.run([&](auto& be, auto ptr) {
        be.adamw_step(ptr("param"), ptr("grad"), ptr("m"), ptr("v"), 4, T(lr), T(b1), T(b2), T(eps), T(wd), T(bc1), T(bc2));
      });
      for (std::size_t i = 0; i < 4; ++i) {
        p[i] *= 1 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
      }
      INFO("step " << step);
      const double tol = std::is_same_v<T, double> ? 1e-12 : 1e-5;  // float: a few roundings of terms near lr
      c.expect("param", p, tol);
      c.expect("m", m, tol);
      c.expect("v", v, tol);
    }
  }

  // Three EMA updates at decays 0, 2/11 and 0.9 (diffusers' EMAModel.step: shadow -= (1 - decay) (shadow - param)),
  // worked in double: decay 0 copies the weights.
  static void ema_update(B& b) {
    const Vec s0 = {1.0, -2.0, 0.5, 0.0}, p1 = {0.5, -0.1, 0.0, 2.0}, p2 = {-0.25, 0.3, 1.0, 2.0};
    C c(b, "ema_update");
    c.acc("shadow", s0).in("param", p1);
    Vec s = s0;
    const double decays[] = {0.0, 2.0 / 11.0, 0.9};
    for (int k = 0; k < 3; ++k) {
      const Vec& p = k == 1 ? p2 : p1;
      c.set("param", p);
      const double one_minus_decay = 1.0 - decays[k];
      c.run([&](auto& be, auto ptr) { be.ema_update(ptr("shadow"), ptr("param"), 4, T(one_minus_decay)); });
      for (std::size_t i = 0; i < 4; ++i) s[i] -= one_minus_decay * (s[i] - p[i]);
      INFO("update " << k);
      c.expect("shadow", s, std::is_same_v<T, double> ? 1e-14 : 1e-6);
    }
  }

  static void squared_norm(B& b) {
    C c(b, "squared_norm");
    c.in("x", {3, 4, -12});
    // long enough for every thread and lane, not a multiple of any lane count; small integers: every sum exact in double
    constexpr std::size_t long_n = 300007;
    Vec long_x(long_n);
    double long_want = 0;
    for (std::size_t i = 0; i < long_n; ++i) long_x[i] = static_cast<double>(i % 7) - 3, long_want += long_x[i] * long_x[i];
    c.in("long", long_x);
    double got = 0, empty = 1, long_got = 0;
    c.run([&](auto& be, auto p) {
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(be)>, B>)
        got = be.squared_norm(p("x"), 3), empty = be.squared_norm(p("x"), 0), long_got = be.squared_norm(p("long"), long_n);
    });
    CHECK(got == 169.0);  // 9 + 16 + 144, exact in any precision
    CHECK(empty == 0.0);
    CHECK(long_got == long_want);
    record(&Coverage::reference);
  }
};

// ---------------------------------------------------------------------------------------------------------------------
// Running a listed op

// Runs the case of op `name` on backend B; false when the driver has none.
template <class B>
bool run_case(std::string_view name, B& backend) {
#define DREAMBOOTH_DETAIL_RUN_CASE(op, family, kind, args)  \
  if (name == #op) {                                        \
    if constexpr (requires(B & b) { OpCases<B>::op(b); }) { \
      OpCases<B>::op(backend);                              \
      return true;                                          \
    } else {                                                \
      return false;                                         \
    }                                                       \
  }
  DREAMBOOTH_BACKEND_OPS(DREAMBOOTH_DETAIL_RUN_CASE)
#undef DREAMBOOTH_DETAIL_RUN_CASE
  return false;
}

// Whether OpCases has a case for op `name` (at compile time, for every listed op).
template <class B>
bool has_case(std::string_view name) {
#define DREAMBOOTH_DETAIL_HAS_CASE(op, family, kind, args) \
  if (name == #op) return requires(B & b) {                \
      OpCases<B>::op(b);                                   \
    };
  DREAMBOOTH_BACKEND_OPS(DREAMBOOTH_DETAIL_HAS_CASE)
#undef DREAMBOOTH_DETAIL_HAS_CASE
  return false;
}

// Ops whose contract has no output buffer to pre-fill, or that update their buffers in place (neither assign nor
// accumulate): these are exempt from the corresponding required check.
inline bool returns_its_result(std::string_view op) { return op == "squared_norm"; }
inline bool updates_in_place(std::string_view op) { return op == "squared_norm" || op == "adamw_step" || op == "ema_update"; }

// One listed op on backend B: its case, then the checks its kind requires.
template <class B>
void run_op(std::string_view name, B& backend) {
  const OpInfo* info = find_backend_op(name);
  REQUIRE(info != nullptr);
  Coverage coverage;
  current_coverage() = &coverage;
  struct Reset {
    ~Reset() { current_coverage() = nullptr; }
  } reset;
  INFO(backend.name() << " backend (" << (std::is_same_v<typename B::value_type, double> ? "double" : "float") << "), op " << name << " ("
                      << info->family << ", " << to_string(info->kind) << ")");
  if (!run_case<B>(name, backend))
    FAIL("op " << name << " is listed in include/dreambooth/backend_ops.hpp but has no case in tests/unit/backend_ops_cases.hpp");
  // Which checks each kind requires (the case ran them through Case<B>):
  if (info->kind == OpKind::backward) {
    INFO("a backward op needs a finite-difference gradient check (Case::expect_gradients)");
    CHECK(coverage.gradient);
  } else {
    INFO("a forward or other op needs a hand-worked reference (Case::expect)");
    CHECK(coverage.reference);
  }
  if (!returns_its_result(name)) {
    INFO("its outputs must start as NaN (Case::out) or as a sentinel it accumulates onto (Case::acc)");
    CHECK(coverage.prefilled);
  }
  if (!updates_in_place(name)) {
    INFO("assign-or-accumulate must be checked (Case::expect_assign_or_accumulate)");
    CHECK(coverage.assign_accumulate);
  }
}

}  // namespace dreambooth::op_testing
