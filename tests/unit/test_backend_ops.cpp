// The op test driver on the CPU backend: every op listed in include/dreambooth/backend_ops.hpp, in fp32 (what programs
// run) and in double (where the finite-difference gradient checks are tight), one test case per op and precision.
// The cases are in backend_ops_cases.hpp; tests/gpu/test_cuda_backend_ops.cpp runs the same cases on CUDA.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "backend_ops_cases.hpp"

using namespace dreambooth;
using namespace dreambooth::op_testing;

namespace {
template <class B>
void run_listed_op(std::string_view name) {
  B backend;
  run_op<B>(name, backend);
}
}  // namespace

#define DREAMBOOTH_CPU_OP_TEST_CASES(op, family, kind, args)                                                \
  TEST_CASE("cpu float: " #op, "[ops][" #family "][" #kind "]") { run_listed_op<CpuBackendT<float>>(#op); } \
  TEST_CASE("cpu double: " #op, "[ops][" #family "][" #kind "]") { run_listed_op<CpuBackendT<double>>(#op); }
DREAMBOOTH_BACKEND_OPS(DREAMBOOTH_CPU_OP_TEST_CASES)
#undef DREAMBOOTH_CPU_OP_TEST_CASES

TEST_CASE("every op listed in backend_ops.hpp has a case in the driver", "[ops][coverage]") {
  std::vector<std::string> missing;
  for (const auto& op : kBackendOps)
    if (!has_case<CpuBackendT<float>>(op.name)) missing.emplace_back(op.name);
  INFO("listed in include/dreambooth/backend_ops.hpp without a case in tests/unit/backend_ops_cases.hpp: " << Catch::Detail::stringify(missing));
  CHECK(missing.empty());
  CHECK(kBackendOps.size() >= 40);  // the list is the whole op set, not a part of it
  CHECK(find_backend_op("linear_backward") != nullptr);
  CHECK(find_backend_op("linear_backward")->kind == OpKind::backward);
  CHECK(find_backend_op("no_such_op") == nullptr);
}

TEST_CASE("the op checks catch a broken op", "[ops][selftest]") {
  // A check that cannot fail proves nothing. The gradient checker must report a 1% error and a sign flip, and a NaN
  // gradient (an op that accumulated into a NaN-filled output).
  using testing::check_gradients;
  using Vec = std::vector<double>;
  Reference b;
  const nn::LinearDims d{3, 4, 2};
  Vec in = random_vector(12, 210), w = random_vector(8, 211);
  const Vec R = random_vector(6, 212);
  Vec din(12), dw(8, 0.0);
  b.linear_backward(din.data(), dw.data(), nullptr, R.data(), in.data(), w.data(), d);
  auto forward = [&] {
    Vec out(6);
    b.linear_forward(out.data(), in.data(), w.data(), nullptr, d);
    return out;
  };
  REQUIRE(check_gradients(forward, R, {{"input", &in, &din}, {"weight", &w, &dw}}).ok);
  Vec off_by_one_percent = dw;
  off_by_one_percent[5] *= 1.01;
  REQUIRE_FALSE(check_gradients(forward, R, {{"weight", &w, &off_by_one_percent}}).ok);
  Vec wrong_sign = din;
  wrong_sign[0] = -wrong_sign[0];
  REQUIRE_FALSE(check_gradients(forward, R, {{"input", &in, &wrong_sign}}).ok);
  Vec nan = din;
  nan[3] = kNaN;
  const auto report = check_gradients(forward, R, {{"input", &in, &nan}});
  REQUIRE_FALSE(report.ok);
  REQUIRE_THAT(report.worst, Catch::Contains("input[3]"));
  // The float tolerance (1e-3) still sees a 1% error.
  REQUIRE_FALSE(check_gradients(forward, R, {{"weight", &w, &off_by_one_percent}}, 1e-3, 1e-4).ok);
  // The comparison used for parity and null skipping: NaN against a number is an infinite error, NaN against NaN none.
  REQUIRE(relative_l2({1, kNaN}, {1, kNaN}) == 0.0);
  REQUIRE(std::isinf(relative_l2({1, kNaN}, {1, 2})));
  REQUIRE(std::isinf(relative_l2({1, 2}, {1, 2, 3})));
  REQUIRE(relative_l2({1, 2.01}, {1, 2}) > 1e-3);
}
