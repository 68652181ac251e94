// What several fuzz targets do with their bytes: hand them to a parser as an in-memory file, or decode them as an image.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/data/image.hpp"
#include "dreambooth/io/mapped_file.hpp"

namespace dreambooth::fuzz {

// The fuzzer's bytes as a file named `name` (what error messages will call it).
inline std::shared_ptr<io::MappedFile> as_file(const std::uint8_t* data, std::size_t size, const std::string& name) {
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  return std::make_shared<io::MappedFile>(std::vector<std::byte>(bytes, bytes + size), name);
}

// The bytes decoded as load_image decodes a file named `name` (data::decode_image), under a pixel limit small enough
// that the fuzzer does not spend itself on huge allocations. A refusal is a dreambooth::Error; a decoded image must be
// as big as it says and within the limit, or the target aborts.
inline void decode_image_checked(const std::uint8_t* data, std::size_t size, const std::string& name, std::int64_t max_pixels) {
  try {
    const auto image = data::decode_image(std::span<const std::uint8_t>(data, size), name, max_pixels);
    if (image.width <= 0 || image.height <= 0 || image.width * image.height > max_pixels ||
        image.rgb.size() != static_cast<std::size_t>(image.width * image.height * 3))
      std::abort();
  } catch (const Error&) {
  }
}

}  // namespace dreambooth::fuzz
