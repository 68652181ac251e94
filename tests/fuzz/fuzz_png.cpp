// Fuzz target: a PNG decoded as load_image decodes it (data::decode_image: the signature check, libpng through
// io::read_png with Pillow's RGB conversion, its text chunks), with a 4-megapixel limit so that the fuzzer does not
// spend itself on huge allocations. Refusals are dreambooth::Error; a crash, leak or sanitizer report is a finding.
#include <cstdint>

#include "fuzz_inputs.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dreambooth::fuzz::decode_image_checked(data, size, "fuzz.png", 4'000'000);
  return 0;
}
