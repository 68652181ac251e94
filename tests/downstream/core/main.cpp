// A consumer of dreambooth::core alone: a tensor and an op on the CPU backend, a UNet block's forward pass with
// seeded parameters, and a noise schedule. It includes no io/, data/, tokenizer/, pipeline/ or train/ header.
#include <cmath>
#include <cstdio>
#include <dreambooth/backends/cpu.hpp>
#include <dreambooth/core/tensor.hpp>
#include <dreambooth/models/unet.hpp>
#include <dreambooth/nn/init.hpp>
#include <dreambooth/nn/parameters.hpp>
#include <dreambooth/schedulers/schedulers.hpp>
#include <string>
#include <vector>

namespace {
// A ResnetBlock2D visited from the root, as the models are.
struct OneBlock {
  dreambooth::models::ResnetBlock2D<dreambooth::CpuBackend> block{4, 8, 0, 2, 1e-5};
  void visit(const dreambooth::nn::ParamVisitor<dreambooth::CpuBackend>& f) { block.visit("", f); }
};
}  // namespace

int main() {
  using namespace dreambooth;
  CpuBackend backend;
  auto x = Tensor<CpuBackend>::from_host(backend, {2, 2}, std::vector<float>{1, -2, 3, -4});
  auto y = Tensor<CpuBackend>::empty(backend, {2, 2});
  backend.silu_forward(y.data<float>(), x.data<float>(), 4);
  const auto silu = y.to_host();
  if (std::abs(silu[0] - 0.731059f) > 1e-5f) {
    std::fprintf(stderr, "downstream_core: silu(1) = %f\n", silu[0]);
    return 1;
  }

  OneBlock model;
  nn::ParameterStorage<CpuBackend> storage;
  storage.allocate(backend, model, "block", /*with_gradients=*/false);
  nn::init_random(backend, model, 7);
  std::vector<float> input(1 * 4 * 8 * 8);
  for (std::size_t i = 0; i < input.size(); ++i) input[i] = std::sin(0.1f * static_cast<float>(i));
  const auto in = Tensor<CpuBackend>::from_host(backend, {1, 4, 8, 8}, input);
  models::ResnetBlock2D<CpuBackend>::Cache cache;
  const auto out = model.block.forward(backend, in, Tensor<CpuBackend>{}, cache).to_host();
  bool finite = out.size() == 1 * 8 * 8 * 8;
  for (float v : out) finite = finite && std::isfinite(v);
  if (!finite) {
    std::fprintf(stderr, "downstream_core: the ResnetBlock2D output is wrong (%zu values)\n", out.size());
    return 1;
  }

  const schedulers::NoiseSchedule schedule{schedulers::SchedulerConfig{}};
  std::printf("downstream_core ok: silu(1) = %.6f, block out[0] = %.6f, signal(999) = %.6f\n", silu[0], out[0],
              schedule.signal(999));
  return 0;
}
