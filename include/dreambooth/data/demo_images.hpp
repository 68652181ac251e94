// The demo's instance images: one made-up subject (an orange ball with a white band and a dark eye, a look the demo model
// never saw in training) at a few positions, sizes and floors, drawn from counter-based random numbers, so every machine
// draws the same pictures (tools/run.sh trains on them; tests use them as instance photos).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <limits>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/rng.hpp"
#include "dreambooth/io/png.hpp"

namespace dreambooth::data {

constexpr int kMaxDemoImageSize = 8192;

// The subject's colours, and the floors it is photographed on (colours of tools/reference/shapes_dataset.py's floors).
inline constexpr float kSubjectOrange[3] = {235, 120, 30}, kSubjectBand[3] = {245, 245, 245}, kSubjectEye[3] = {20, 20, 20};
inline constexpr float kDemoFloors[][3] = {{128, 128, 128}, {215, 200, 160}, {90, 120, 190}, {90, 150, 90}, {220, 170, 190}, {140, 100, 70}};

// Image k of the set: rgb[size, size, 3]. Drawn as the demo model's training pictures are (a floor darker toward the
// bottom under a lighter wall, a soft shadow under the object, a ball lit from the top left), each pixel the mean of
// 2x2 samples.
inline std::vector<std::uint8_t> demo_subject_image(int k, int size) {
  if (size < 8 || size > kMaxDemoImageSize) fail("demo images: size ", size, " is not between 8 and ", kMaxDemoImageSize);
  const auto key = static_cast<std::uint64_t>(k);
  const auto draw = [key](std::uint64_t i) { return rng::uniform(5, 0, 8 * key + i); };
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(size) * static_cast<std::size_t>(size) * 3);
  const float radius = 0.2f + 0.1f * draw(0);  // in units of the image side
  const float horizon = 0.25f + 0.25f * draw(1);
  const float cx = radius + (1 - 2 * radius) * draw(2);
  const float cy_low = std::max(radius, horizon);
  const float cy = cy_low + (1 - radius - cy_low) * draw(3);
  const float* floor = kDemoFloors[static_cast<std::size_t>(k) % std::size(kDemoFloors)];
  const float tilt = 0.5f * (draw(4) - 0.5f);                // the band's slope
  const auto sample = [&](float x, float y, float out[3]) {  // x, y in [0, 1)
    const float shade = 0.85f + 0.3f * (1 - y);
    const float shadow = std::exp(-(std::pow((x - cx) / (1.1f * radius), 2.0f) + std::pow((y - cy - 0.9f * radius) / (0.25f * radius), 2.0f)));
    for (int c = 0; c < 3; ++c) {
      float v = floor[c] * shade;
      if (y < horizon) v = 0.6f * v + 0.4f * 235;
      out[c] = v * (1 - 0.35f * shadow);
    }
    const float u = (x - cx) / radius, w = (y - cy) / radius;
    if (std::hypot(u, w) > 1) return;
    const float* colour = kSubjectOrange;
    if (std::abs(w - tilt * u) < 0.18f) colour = kSubjectBand;           // the band
    if (std::hypot(u - 0.35f, w + 0.45f) < 0.16f) colour = kSubjectEye;  // the eye
    const float light = std::clamp(1.15f - 0.35f * std::hypot(u + 0.4f, w + 0.4f), 0.6f, 1.2f);
    for (int c = 0; c < 3; ++c) out[c] = colour[c] * light;
  };
  const float s = static_cast<float>(size);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      float sum[3] = {0, 0, 0};
      for (int sy = 0; sy < 2; ++sy)
        for (int sx = 0; sx < 2; ++sx) {
          float value[3];
          sample((static_cast<float>(x) + 0.25f + 0.5f * static_cast<float>(sx)) / s,
                 (static_cast<float>(y) + 0.25f + 0.5f * static_cast<float>(sy)) / s, value);
          for (int c = 0; c < 3; ++c) sum[c] += value[c];
        }
      for (int c = 0; c < 3; ++c)
        rgb[(static_cast<std::size_t>(y) * static_cast<std::size_t>(size) + static_cast<std::size_t>(x)) * 3 + static_cast<std::size_t>(c)] =
            static_cast<std::uint8_t>(std::clamp(std::round(sum[c] / 4), 0.0f, 255.0f));
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
