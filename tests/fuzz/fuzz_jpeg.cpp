// Fuzz target: a JPEG decoded as load_image decodes it (data::decode_image: the signature check, libjpeg-turbo through
// image_detail::decode_jpeg: CMYK, warnings, EXIF orientation), with a 1-megapixel limit so that the fuzzer does not
// spend itself on huge images (libjpeg decodes the whole size a header claims from a few bytes, filling in what is
// missing). Refusals are dreambooth::Error; a crash, leak or sanitizer report is a finding.
#include <cstdint>

#include "fuzz_inputs.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dreambooth::fuzz::decode_image_checked(data, size, "fuzz.jpg", 1'000'000);
  return 0;
}
