// Fuzz target: a torch.save file (zip or legacy) read whole: parse, then every tensor converted to float.
#include <cstdint>

#include "dreambooth/io/torch_checkpoint.hpp"
#include "fuzz_inputs.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dreambooth::io;
  try {
    const auto file = dreambooth::fuzz::as_file(data, size, "fuzz.ckpt");
    const TorchCheckpoint ckpt(file, 0, size, "fuzz.ckpt");
    for (const auto& [name, info] : ckpt.tensors())
      if (info.bytes() < (1u << 24)) {
        try {
          (void)ckpt.read_f32(name);
        } catch (const dreambooth::Error&) {  // a dtype that does not convert to float
        }
      }
  } catch (const dreambooth::Error&) {
  }
  return 0;
}
