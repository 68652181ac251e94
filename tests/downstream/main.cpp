// Uses the installed headers: a tensor on the CPU backend, an op, and a safetensors round trip.
#include <cstdio>
#include <dreambooth/backends/cpu.hpp>
#include <dreambooth/core/tensor.hpp>
#include <dreambooth/io/safetensors.hpp>
#include <filesystem>

int main(int argc, char** argv) {
  using namespace dreambooth;
  CpuBackend backend;
  auto x = Tensor<CpuBackend>::from_host(backend, {2, 2}, std::vector<float>{1, -2, 3, -4});
  auto y = Tensor<CpuBackend>::empty(backend, {2, 2});
  backend.silu_forward(y.data<float>(), x.data<float>(), 4);
  const std::filesystem::path path = argc > 1 ? argv[1] : "downstream.safetensors";
  io::SafetensorsWriter writer;
  writer.add("y", y);
  writer.write(path);
  const auto back = io::SafetensorsFile(path).read_f32("y");
  if (back != y.to_host()) {
    std::fprintf(stderr, "downstream: round trip mismatch\n");
    return 1;
  }
  std::printf("downstream ok: silu(1) = %.6f\n", back[0]);
  return 0;
}
