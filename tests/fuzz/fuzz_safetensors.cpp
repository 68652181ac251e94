// Fuzz target: a safetensors file's header and every tensor read as floats.
#include <cstdint>

#include "dreambooth/io/safetensors.hpp"
#include "fuzz_inputs.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dreambooth::io;
  try {
    const auto file = dreambooth::fuzz::as_file(data, size, "fuzz.safetensors");
    const SafetensorsFile st(file, 0, size, "fuzz.safetensors");
    for (const auto& [name, info] : st.tensors()) {
      try {
        (void)st.read_f32(name);
      } catch (const dreambooth::Error&) {
      }
    }
  } catch (const dreambooth::Error&) {
  }
  return 0;
}
