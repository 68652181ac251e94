// The demo's instance images: one made-up subject (an orange disc with a white band and a dark eye) at a few
// positions, sizes and backgrounds, drawn with anti-aliased edges from counter-based random numbers, so every machine
// draws the same pictures (tools/run.sh trains on them; tests use them as instance photos).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/rng.hpp"
#include "dreambooth/io/png.hpp"

namespace dreambooth::data {

constexpr int kMaxDemoImageSize = 8192;

// Image k of the set: rgb[size, size, 3].
inline std::vector<std::uint8_t> demo_subject_image(int k, int size) {
  if (size < 8 || size > kMaxDemoImageSize) fail("demo images: size ", size, " is not between 8 and ", kMaxDemoImageSize);
  const auto key = static_cast<std::uint64_t>(k);
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(size) * static_cast<std::size_t>(size) * 3);
  const float s = static_cast<float>(size);
  const float cx = s * (0.35f + 0.3f * rng::uniform(5, 0, 4 * key)), cy = s * (0.35f + 0.3f * rng::uniform(5, 0, 4 * key + 1));
  const float r = s * (0.18f + 0.1f * rng::uniform(5, 0, 4 * key + 2));
  const float hue = rng::uniform(5, 0, 4 * key + 3);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      const float fx = static_cast<float>(x), fy = static_cast<float>(y);
      // background: a soft two-colour gradient that changes per image
      const float background[3] = {40 + 120 * hue + 60.0f * fy / s, 90 + 80 * (1 - hue), 150 - 60.0f * fx / s};
      const float d = std::hypot(fx + 0.5f - cx, fy + 0.5f - cy);
      const float cover = std::clamp(r - d + 0.5f, 0.0f, 1.0f);
      float subject[3] = {235, 120, 30};
      if (std::abs(fy + 0.5f - cy) < r * 0.15f) subject[0] = subject[1] = subject[2] = 245;                                              // the band
      if (std::hypot(fx + 0.5f - (cx + r * 0.35f), fy + 0.5f - (cy - r * 0.4f)) < r * 0.12f) subject[0] = subject[1] = subject[2] = 20;  // the eye
      for (int c = 0; c < 3; ++c)
        rgb[(static_cast<std::size_t>(y) * static_cast<std::size_t>(size) + static_cast<std::size_t>(x)) * 3 + static_cast<std::size_t>(c)] =
            static_cast<std::uint8_t>(std::clamp(background[c] * (1 - cover) + subject[c] * cover, 0.0f, 255.0f));
    }
  return rgb;
}

// Writes subject-00.png ... into `dir` (created).
inline void write_demo_images(const std::filesystem::path& dir, int count, int size) {
  if (count < 1 || count > 10000) fail("demo images: count ", count, " is not between 1 and 10000");
  std::filesystem::create_directories(dir);
  for (int k = 0; k < count; ++k) {
    char name[32];
    std::snprintf(name, sizeof name, "subject-%02d.png", k);
    io::write_png(dir / name, demo_subject_image(k, size).data(), size, size, {{"Software", "dreambooth.cpp demo"}});
  }
}

}  // namespace dreambooth::data
