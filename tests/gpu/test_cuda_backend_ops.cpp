// The op test driver on the CUDA backend (label gpu: runs only where a GPU is present): the very cases of
// tests/unit/backend_ops_cases.hpp that test_backend_ops runs on the CPU, one test case per listed op. Each case checks
// the CUDA op against its hand-worked reference and, for backward ops, against finite differences of the double CPU
// forward (float tolerance 1e-3); and every op call is also made on the CPU backend from the same inputs, every buffer
// compared (relative L2 1e-5, NaN where both have NaN). The large-shape parity tests stay in test_cuda_ops.cpp.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "../unit/backend_ops_cases.hpp"
#include "dreambooth/backends/cuda.hpp"

namespace dreambooth::op_testing {
template <>
struct ParityReference<CudaBackend> {
  using type = CpuBackend;
  static constexpr double tolerance = 1e-5;  // fp32 on both: summation order and the last bit of exp / erf / sin
};
}  // namespace dreambooth::op_testing

using namespace dreambooth;
using namespace dreambooth::op_testing;

namespace {
void run_on_cuda(std::string_view name) {
  CudaBackend backend;
  REQUIRE(backend.precision() == CudaPrecision::fp32);
  run_op<CudaBackend>(name, backend);
}
}  // namespace

#define DREAMBOOTH_CUDA_OP_TEST_CASE(op, family, kind, args) \
  TEST_CASE("cuda: " #op, "[gpu][ops][" #family "][" #kind "]") { run_on_cuda(#op); }
DREAMBOOTH_BACKEND_OPS(DREAMBOOTH_CUDA_OP_TEST_CASE)
#undef DREAMBOOTH_CUDA_OP_TEST_CASE

TEST_CASE("every listed op has a case the CUDA backend runs", "[gpu][ops][coverage]") {
  std::vector<std::string> missing;
  for (const auto& op : kBackendOps)
    if (!has_case<CudaBackend>(op.name)) missing.emplace_back(op.name);
  INFO("no case: " << Catch::Detail::stringify(missing));
  CHECK(missing.empty());
}
