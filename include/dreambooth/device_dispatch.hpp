// Running a template body on the backend a program's --device names: the CPU backend (fp32, or bf16 GEMMs through oneDNN) or, in a program
// built with the CUDA backend (DREAMBOOTH_WITH_CUDA defined and dreambooth::cuda linked), a GPU (the first, unless the choice
// names another: each process of a data-parallel run takes its own) at a compute precision.
// The CLI and the model benchmarks (benchmarks/bench_device.hpp) share it. Nothing is run before the backend exists, so a missing GPU stops
// a command before it writes anything.
#pragma once

#include <cstdio>
#include <optional>
#include <string>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/core/precision.hpp"
#ifdef DREAMBOOTH_WITH_CUDA
#include "dreambooth/backends/cuda.hpp"
#endif

namespace dreambooth {

struct DeviceChoice {
  std::string device = "cpu";       // cpu | cuda
  std::string precision = "fp32";   // any spelling canonical_precision() accepts
  std::string origin = "--device";  // where the device was chosen, for messages ("--device", "trainer.device")
  int cuda_device = 0;              // which GPU, with device cuda
};

// True when this program can run --device cuda at all (built with the CUDA backend and a GPU visible).
inline bool cuda_available() {
#ifdef DREAMBOOTH_WITH_CUDA
  return CudaBackend::device_count() > 0;
#else
  return false;
#endif
}

// A backend type as it is (run_on_device's default wrapper).
template <class B>
using PlainBackend = B;

// body(backend) on the chosen backend; `command` prefixes the device and peak-memory lines printed for the GPU.
// Wrap<Backend> is the type constructed (a backend deriving from it, such as the benchmarks' ProfiledBackend).
template <template <class> class Wrap = PlainBackend, class Body>
int run_on_device(const DeviceChoice& choice, const std::string& command, Body&& body) {
  const std::string cuda = choice.origin == "--device" ? "--device cuda" : choice.origin + "=cuda";
  const auto precision = parse_compute_precision(choice.precision, "--precision");
  if (choice.device == "cpu") {
    if (precision != "fp32" && precision != "bf16")
      fail("--precision ", precision, ": the CPU backend computes in fp32 or bf16 (--precision fp32 or bf16, or --device cuda)");
    Wrap<CpuBackend> backend;
    if (precision == "bf16") {
      const auto isa = cpu::bf16_gemm_isa();
      if (isa.empty())
        fail("--precision bf16 on the CPU: ",
#if DREAMBOOTH_WITH_ONEDNN
             "this CPU has neither AVX512-BF16 nor AMX, which oneDNN's bf16 kernels need",
#else
             "this build has no oneDNN (Debian: apt-get install libdnnl-dev, then reconfigure)",
#endif
             "; compute in fp32 (--precision fp32)");
      backend.set_compute(cpu::GemmCompute::bf16);
      std::fprintf(stderr, "%s: CPU GEMMs and convolutions in bf16 with fp32 accumulation (oneDNN %s), storage fp32\n", command.c_str(), isa.c_str());
    }
    return body(backend);
  }
  if (choice.device != "cuda") fail(choice.origin, " \"", choice.device, "\" is not cpu or cuda");
#ifdef DREAMBOOTH_WITH_CUDA
  const auto compute = parse_cuda_precision(precision);
  if (CudaBackend::device_count() == 0) fail(cuda, ": no CUDA device is available (no NVIDIA GPU is visible, or its driver is not loaded)");
  std::optional<Wrap<CudaBackend>> backend;
  try {
    backend.emplace(CudaOptions{.device = choice.cuda_device, .precision = compute});
  } catch (const std::exception& e) {
    fail(cuda, ": the CUDA backend could not start: ", e.what());
  }
  std::fprintf(stderr, "%s: CUDA device %s, %s compute\n", command.c_str(), std::string(backend->device_description()).c_str(), to_string(compute));
  const int status = body(*backend);
  backend->synchronize();
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::fprintf(stderr, "%s: peak device memory %.2f GiB in use, %.2f GiB reserved\n", command.c_str(),
               static_cast<double>(backend->peak_bytes()) / gib, static_cast<double>(backend->peak_bytes_reserved()) / gib);
  return status;
#else
  (void)command, (void)body;
  fail(cuda, ": this build has no CUDA backend (configure with a CUDA toolkit, -DDREAMBOOTH_CUDA=ON)");
#endif
}

}  // namespace dreambooth
