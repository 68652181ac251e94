// The colour statistics the demo measures DreamBooth with (docs/demo.md): which pixels of a picture of one object on a
// floor are the object's, the histogram of their colours, and distances between such histograms.
//
// The demo's pictures (its instance images, and what the demo model draws) show one object in front of a background
// that changes only from top to bottom (a wall over a floor, darker toward the bottom), so the two ends of each row show
// that row's background; a pixel far from its row's background colour is the object's.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "dreambooth/core/error.hpp"

namespace dreambooth::eval {

inline constexpr int kColourLevels = 4;  // per channel: 0-63, 64-127, 128-191, 192-255
inline constexpr int kColourBins = kColourLevels * kColourLevels * kColourLevels;
using ColourHistogram = std::array<double, kColourBins>;  // sums to 1

struct ObjectMaskOptions {
  double threshold = 60;  // Euclidean distance in 0-255 RGB from the row's background beyond which a pixel is the object's
  int border = 3;         // pixels at each end of a row that show its background
};

// mask[height, width]: 1 where the pixel is the object's. rgb[height, width, 3].
inline std::vector<std::uint8_t> object_mask(const std::uint8_t* rgb, int width, int height, const ObjectMaskOptions& o = {}) {
  if (width < 2 * o.border + 1 || height < 1) fail("object_mask: a ", width, "x", height, " picture is too small for ", o.border, "-pixel borders");
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(width) * static_cast<std::size_t>(height), 0);
  std::vector<int> ends(static_cast<std::size_t>(2 * o.border));
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* row = rgb + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * 3;
    double background[3];
    for (int c = 0; c < 3; ++c) {  // the median of the row's end pixels, per channel
      for (int i = 0; i < o.border; ++i) {
        ends[static_cast<std::size_t>(i)] = row[i * 3 + c];
        ends[static_cast<std::size_t>(o.border + i)] = row[(width - 1 - i) * 3 + c];
      }
      std::sort(ends.begin(), ends.end());
      background[c] = 0.5 * (ends[static_cast<std::size_t>(o.border - 1)] + ends[static_cast<std::size_t>(o.border)]);
    }
    for (int x = 0; x < width; ++x) {
      const double dr = row[x * 3] - background[0], dg = row[x * 3 + 1] - background[1], db = row[x * 3 + 2] - background[2];
      mask[static_cast<std::size_t>(y) * static_cast<std::size_t>(width) + static_cast<std::size_t>(x)] =
          std::sqrt(dr * dr + dg * dg + db * db) > o.threshold;
    }
  }
  return mask;
}

inline int colour_bin(const std::uint8_t* pixel) {
  static_assert(kColourLevels == 4, "the shift below keeps the top 2 bits of each channel");
  constexpr int shift = 6;
  return ((pixel[0] >> shift) * kColourLevels + (pixel[1] >> shift)) * kColourLevels + (pixel[2] >> shift);
}

// The histogram of the object's colours; of the whole picture's when no pixel is the object's.
inline ColourHistogram object_colours(const std::uint8_t* rgb, int width, int height, const ObjectMaskOptions& o = {}) {
  const auto mask = object_mask(rgb, width, height, o);
  const bool any = std::find(mask.begin(), mask.end(), 1) != mask.end();
  ColourHistogram h{};
  double count = 0;
  for (std::size_t i = 0; i < mask.size(); ++i)
    if (mask[i] || !any) {
      h[static_cast<std::size_t>(colour_bin(rgb + i * 3))] += 1;
      count += 1;
    }
  for (auto& v : h) v /= count;
  return h;
}

// The total variation distance, half the L1 distance: 0 for equal histograms, 1 for histograms without a common bin.
inline double total_variation(const ColourHistogram& a, const ColourHistogram& b) {
  double sum = 0;
  for (std::size_t i = 0; i < a.size(); ++i) sum += std::abs(a[i] - b[i]);
  return 0.5 * sum;
}

inline ColourHistogram mean_histogram(const std::vector<ColourHistogram>& set) {
  if (set.empty()) fail("mean_histogram: no histograms");
  ColourHistogram m{};
  for (const auto& h : set)
    for (std::size_t i = 0; i < m.size(); ++i) m[i] += h[i] / static_cast<double>(set.size());
  return m;
}

// The mean over `set` of each histogram's distance to `reference`.
inline double mean_distance_to(const std::vector<ColourHistogram>& set, const ColourHistogram& reference) {
  if (set.empty()) fail("mean_distance_to: no histograms");
  double sum = 0;
  for (const auto& h : set) sum += total_variation(h, reference);
  return sum / static_cast<double>(set.size());
}

// The mean distance between two different members of `set`: how varied its pictures' colours are.
inline double mean_pairwise_distance(const std::vector<ColourHistogram>& set) {
  if (set.size() < 2) fail("mean_pairwise_distance: needs two histograms or more, not ", set.size());
  double sum = 0;
  for (std::size_t i = 0; i < set.size(); ++i)
    for (std::size_t j = i + 1; j < set.size(); ++j) sum += total_variation(set[i], set[j]);
  return sum / (static_cast<double>(set.size()) * static_cast<double>(set.size() - 1) / 2);
}

}  // namespace dreambooth::eval
