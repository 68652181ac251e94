// What several fuzz targets do with their bytes: hand them to a parser as an in-memory file, or decode them as an image
// and check the result is as big as it says.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/io/mapped_file.hpp"

namespace dreambooth::fuzz {

// The fuzzer's bytes as a file named `name` (what error messages will call it).
inline std::shared_ptr<io::MappedFile> as_file(const std::uint8_t* data, std::size_t size, const std::string& name) {
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  return std::make_shared<io::MappedFile>(std::vector<std::byte>(bytes, bytes + size), name);
}

// A decoded image [height, width, 3] must be as big as it says and within the limit it was decoded under.
template <class Image>
void require_consistent(const Image& image, std::int64_t max_pixels) {
  if (image.width <= 0 || image.height <= 0 || image.width * image.height > max_pixels ||
      image.rgb.size() != static_cast<std::size_t>(image.width * image.height * 3))
    std::abort();
}

}  // namespace dreambooth::fuzz
