// CUDA backend against the CPU backend on the same inputs (label gpu: runs only where a GPU is present).
#include <catch2/catch.hpp>
#include <cmath>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/backends/cuda.hpp"
#include "dreambooth/core/tensor.hpp"

using namespace dreambooth;

namespace {
double relative_l2(const std::vector<float>& got, const std::vector<float>& expected) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num += (double(got[i]) - expected[i]) * (double(got[i]) - expected[i]);
    den += double(expected[i]) * expected[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}
std::vector<float> random_host(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  CpuBackend().fill_normal(v.data(), n, seed, 0, 0.0f, 1.0f);
  return v;
}
}  // namespace

TEST_CASE("CUDA fills give the CPU's random numbers", "[gpu]") {
  CudaBackend gpu;
  const std::size_t n = 100003;
  auto t = Tensor<CudaBackend>::empty(gpu, {static_cast<std::int64_t>(n)});
  gpu.fill_normal(t.data<float>(), n, 1234, 5, 0.5f, 2.0f);
  std::vector<float> cpu(n);
  CpuBackend().fill_normal(cpu.data(), n, 1234, 5, 0.5f, 2.0f);
  const auto got = t.to_host();
  std::size_t differing = 0;
  for (std::size_t i = 0; i < n; ++i) differing += got[i] != cpu[i];
  INFO(differing << " of " << n << " normals differ");
  REQUIRE(relative_l2(got, cpu) <= 1e-7);
  gpu.fill_uniform(t.data<float>(), n, 99, 0, -1.0f, 1.0f);
  CpuBackend().fill_uniform(cpu.data(), n, 99, 0, -1.0f, 1.0f);
  REQUIRE(t.to_host() == cpu);
}

TEST_CASE("CUDA elementwise ops equal the CPU's", "[gpu]") {
  CudaBackend gpu;
  CpuBackend cpu;
  const std::size_t n = 4099;
  const auto a = random_host(n, 1), b = random_host(n, 2), g = random_host(n, 3);
  auto ta = Tensor<CudaBackend>::from_host(gpu, {4099}, a), tb = Tensor<CudaBackend>::from_host(gpu, {4099}, b);
  auto tg = Tensor<CudaBackend>::from_host(gpu, {4099}, g), out = Tensor<CudaBackend>::empty(gpu, {4099}),
       out2 = Tensor<CudaBackend>::empty(gpu, {4099});
  std::vector<float> ref(n), ref2(n);
  gpu.add(out.data<float>(), ta.data<float>(), tb.data<float>(), n);
  cpu.add(ref.data(), a.data(), b.data(), n);
  REQUIRE(out.to_host() == ref);
  gpu.mul(out.data<float>(), ta.data<float>(), tb.data<float>(), n);
  cpu.mul(ref.data(), a.data(), b.data(), n);
  REQUIRE(out.to_host() == ref);
  gpu.scale(out.data<float>(), ta.data<float>(), -0.3f, n);
  cpu.scale(ref.data(), a.data(), -0.3f, n);
  REQUIRE(out.to_host() == ref);
  gpu.accumulate(out.data<float>(), tb.data<float>(), n);
  cpu.accumulate(ref.data(), b.data(), n);
  REQUIRE(out.to_host() == ref);
  gpu.mul_backward(out.data<float>(), out2.data<float>(), tg.data<float>(), ta.data<float>(), tb.data<float>(), n);
  cpu.mul_backward(ref.data(), ref2.data(), g.data(), a.data(), b.data(), n);
  REQUIRE(out.to_host() == ref);
  REQUIRE(out2.to_host() == ref2);
}

TEST_CASE("cuBLAS GEMM equals the CPU GEMM in every transpose combination", "[gpu]") {
  CudaBackend gpu;
  CpuBackend cpu;
  const std::int64_t m = 67, n = 45, k = 129;
  for (int variant = 0; variant < 4; ++variant) {
    const bool ta = variant & 1, tb = variant & 2;
    INFO("trans_a " << ta << " trans_b " << tb);
    const auto A = random_host(static_cast<std::size_t>(m * k), 10 + variant), B = random_host(static_cast<std::size_t>(k * n), 20 + variant);
    const auto C0 = random_host(static_cast<std::size_t>(m * n), 30 + variant);
    const std::int64_t lda = ta ? m : k, ldb = tb ? k : n;
    std::vector<float> ref = C0;
    cpu.gemm(ta, tb, m, n, k, 0.7f, A.data(), lda, B.data(), ldb, 0.5f, ref.data(), n);
    auto dA = Tensor<CudaBackend>::from_host(gpu, {m * k}, A), dB = Tensor<CudaBackend>::from_host(gpu, {k * n}, B);
    auto dC = Tensor<CudaBackend>::from_host(gpu, {m * n}, C0);
    gpu.gemm(ta, tb, m, n, k, 0.7f, dA.data<float>(), lda, dB.data<float>(), ldb, 0.5f, dC.data<float>(), n);
    REQUIRE(relative_l2(dC.to_host(), ref) <= 1e-6);
  }
}
