// Fuzz target: a PNG decoded as load_image decodes it (data::decode_image: the signature check, libpng through
// io::read_png with Pillow's RGB conversion, its text chunks), with a 4-megapixel limit so that the fuzzer does not
// spend itself on huge allocations. Refusals are dreambooth::Error; a crash, leak or sanitizer report is a finding.
#include <cstdint>
#include <span>

#include "dreambooth/data/image.hpp"
#include "fuzz_inputs.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::int64_t kMaxPixels = 4'000'000;
  try {
    dreambooth::fuzz::require_consistent(dreambooth::data::decode_image(std::span<const std::uint8_t>(data, size), "fuzz.png", kMaxPixels),
                                         kMaxPixels);
  } catch (const dreambooth::Error&) {
  }
  return 0;
}
