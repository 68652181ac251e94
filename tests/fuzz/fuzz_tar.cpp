// Fuzz target: a tar archive's members (ustar, GNU long names, pax headers, base-256 sizes), each member's span touched.
#include <cstdint>

#include "dreambooth/io/tar.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dreambooth::io;
  try {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    std::uint64_t sum = 0;
    for (const auto& m : read_tar(bytes, "fuzz.tar"))
      for (const auto b : bytes.subspan(static_cast<std::size_t>(m.offset), static_cast<std::size_t>(m.size))) sum += static_cast<std::uint8_t>(b);
    (void)sum;
  } catch (const dreambooth::Error&) {
  }
  return 0;
}
