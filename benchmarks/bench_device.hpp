// --device cpu|cuda and --precision fp32|tf32|bf16|fp16 for the model benchmarks: runs a benchmark body, a template on
// the backend, on the CPU backend or (in a build with the CUDA backend, DREAMBOOTH_WITH_CUDA) on GPU 0 at the given
// compute precision (dreambooth::run_on_device); the CPU computes in fp32 or, with oneDNN, bf16 GEMMs.
#pragma once

#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <utility>

#include "dreambooth/device_dispatch.hpp"

namespace bench {

struct Device {
  std::string device = "cpu";
  std::string precision = "fp32";

  // Consumes --device X / --precision X at argv[i]; returns false for any other argument.
  bool parse(int argc, char** argv, int& i) {
    const std::string a = argv[i];
    if ((a == "--device" || a == "--precision") && i + 1 < argc) {
      (a == "--device" ? device : precision) = argv[++i];
      return true;
    }
    return false;
  }
};

// Runs body(backend) on the chosen device (dreambooth::run_on_device, as the CLI does) and returns its status; a device
// that cannot run is reported on stderr with status 1.
// Wrap<Backend> is the type constructed (dreambooth::run_on_device).
template <template <class> class Wrap = dreambooth::PlainBackend, class Body>
int on_device(const Device& d, Body&& body) {
  try {
    return dreambooth::run_on_device<Wrap>(dreambooth::DeviceChoice{d.device, d.precision, "--device"}, "benchmark", std::forward<Body>(body));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// JSON lines (each "  \"key\": value,\n") naming the device, the compute precision and the peak device memory (in use,
// and held by the pool) so far; for the GPU only, so that the CPU output is unchanged.
template <class B>
std::string device_json(B& b, const Device& d) {
  if constexpr (requires { b.peak_bytes_reserved(); }) {
    std::string description(b.device_description());
    for (auto& c : description)
      if (c == '"' || c == '\\') c = '\'';
    char line[512];
    std::snprintf(line, sizeof line,
                  "  \"device\": \"cuda\",\n  \"device_description\": \"%s\",\n  \"precision\": \"%s\",\n"
                  "  \"device_peak_gib\": %.3f,\n  \"device_peak_reserved_gib\": %.3f,\n",
                  description.c_str(), d.precision.c_str(), static_cast<double>(b.peak_bytes()) / (1 << 30),
                  static_cast<double>(b.peak_bytes_reserved()) / (1 << 30));
    return line;
  } else {  // the CPU: the precision when it is not fp32 (bf16 GEMMs), so that the fp32 output is unchanged
    (void)b;
    return d.precision == "fp32" ? "" : "  \"precision\": \"" + d.precision + "\",\n";
  }
}

// Decimals of the seconds printed: 2 on the CPU (as before), 4 on the GPU, whose steps take milliseconds.
template <class B>
int seconds_digits(const B& b) {
  return std::string(b.name()) == "cpu" ? 2 : 4;
}

}  // namespace bench
