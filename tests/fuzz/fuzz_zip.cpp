// Fuzz target: a zip archive's directory, then every record read (stored or deflated, CRC checked).
#include <cstdint>

#include "dreambooth/io/zip.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dreambooth::io;
  try {
    const ZipArchive zip({reinterpret_cast<const std::byte*>(data), size}, "fuzz.zip");
    for (const auto& e : zip.entries()) {
      if (e.size > (1u << 24)) continue;
      try {
        (void)zip.read(e);
      } catch (const dreambooth::Error&) {
      }
    }
  } catch (const dreambooth::Error&) {
  }
  return 0;
}
