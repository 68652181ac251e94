// Aspect-ratio buckets as kohya's sd-scripts makes and assigns them (library/model_util.py make_bucket_resolutions,
// library/train_util.py BucketManager.select_bucket), so that photos train at their own shape instead of a square crop:
//   bucket resolutions: the square side floor(sqrt(R * R) / steps) * steps, and for every width w = min_size,
//     min_size + steps, ..., <= max_size the height min(max_size, floor(R * R / w / steps) * steps) when it is at least
//     min_size, in both orientations; sorted;
//   assignment (upscaling allowed, kohya's default): an image whose size is a bucket takes it; otherwise the bucket whose
//     aspect ratio (w / h) is nearest (the first of equals). The image is scaled so that it covers the bucket (by the
//     height when it is wider than the bucket, else by the width; each side rounded half up), then cropped to it;
//   bucket_no_upscale: an image larger than R * R pixels is scaled down to about that area keeping its aspect ratio (the
//     rounded width or height, whichever keeps the ratio better, both in steps); its bucket is the scaled size with each
//     side rounded down to a multiple of steps (no bucket list; min_size and max_size unused, as in kohya).
// tests/unit/test_buckets.cpp checks every bucket, resized size and aspect-ratio error against kohya's own code on 480
// assignments (tools/reference/make_bucket_fixtures.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/data/image.hpp"

namespace dreambooth::data {

// A picture size in pixels (width, height), ordered as kohya's (w, h) tuples.
struct Size2 {
  std::int64_t width = 0, height = 0;
  auto operator<=>(const Size2&) const = default;
  std::string str() const { return std::to_string(width) + "x" + std::to_string(height); }
};

struct BucketConfig {
  bool enabled = false;          // kohya's --enable_bucket
  std::int64_t min_size = 256;   // --min_bucket_reso
  std::int64_t max_size = 1024;  // --max_bucket_reso
  std::int64_t steps = 64;       // --bucket_reso_steps
  bool no_upscale = false;       // --bucket_no_upscale
};

// Python's float floor division x // d for positive operands (fmod first, as CPython computes it).
inline double python_floor_div(double x, double d) {
  const double mod = std::fmod(x, d);
  double div = (x - mod) / d;
  double floored = std::floor(div);
  if (div - floored > 0.5) floored += 1.0;
  return floored;
}

// kohya's make_bucket_resolutions(max_reso, min_size, max_size, divisible), sorted.
inline std::vector<Size2> make_bucket_resolutions(Size2 max_reso, std::int64_t min_size, std::int64_t max_size, std::int64_t divisible) {
  DB_CHECK(divisible > 0 && min_size > 0 && max_size >= min_size, "buckets: steps ", divisible, ", min ", min_size, ", max ", max_size);
  const std::int64_t max_area = max_reso.width * max_reso.height;
  std::set<Size2> resos;
  const auto square =
      static_cast<std::int64_t>(python_floor_div(std::sqrt(static_cast<double>(max_area)), static_cast<double>(divisible))) * divisible;
  resos.insert({square, square});
  for (std::int64_t width = min_size; width <= max_size; width += divisible) {
    const std::int64_t height = std::min(max_size, (max_area / width) / divisible * divisible);
    if (height >= min_size) {
      resos.insert({width, height});
      resos.insert({height, width});
    }
  }
  return {resos.begin(), resos.end()};
}

// Where an image goes: its bucket, the size it is resized to before the crop, and the bucket's aspect-ratio error.
struct BucketChoice {
  Size2 bucket, resized;
  double ar_error = 0;  // bucket w / h - image w / h
};

// kohya's BucketManager.select_bucket for one resolution R (max_reso R x R).
class BucketAssigner {
 public:
  BucketAssigner(const BucketConfig& config, std::int64_t resolution) : config_(config), max_area_(resolution * resolution) {
    DB_CHECK(config.steps > 0, "buckets: bucket_reso_steps must be positive");
    if (!config.no_upscale) {
      DB_CHECK(config.max_size >= resolution, "buckets: max_bucket_reso ", config.max_size, " must be at least the resolution ", resolution);
      resolutions_ = make_bucket_resolutions({resolution, resolution}, config.min_size, config.max_size, config.steps);
      for (const auto& r : resolutions_) ratios_.push_back(static_cast<double>(r.width) / static_cast<double>(r.height));
    }
  }

  // The predefined buckets (none with no_upscale: each image's own size decides).
  const std::vector<Size2>& resolutions() const { return resolutions_; }

  BucketChoice select(std::int64_t image_width, std::int64_t image_height) const {
    DB_CHECK(image_width > 0 && image_height > 0, "buckets: image size ", image_width, "x", image_height);
    const double w = static_cast<double>(image_width), h = static_cast<double>(image_height);
    const double aspect = w / h;
    BucketChoice c;
    if (!config_.no_upscale) {
      c.bucket = {image_width, image_height};
      if (!std::binary_search(resolutions_.begin(), resolutions_.end(), c.bucket)) {
        std::size_t best = 0;  // numpy's argmin: the first of equal errors
        for (std::size_t i = 1; i < ratios_.size(); ++i)
          if (std::abs(ratios_[i] - aspect) < std::abs(ratios_[best] - aspect)) best = i;
        c.bucket = resolutions_[best];
      }
      const double bucket_aspect = static_cast<double>(c.bucket.width) / static_cast<double>(c.bucket.height);
      const double scale = aspect > bucket_aspect ? static_cast<double>(c.bucket.height) / h : static_cast<double>(c.bucket.width) / w;
      c.resized = {static_cast<std::int64_t>(w * scale + 0.5), static_cast<std::int64_t>(h * scale + 0.5)};
    } else {
      if (image_width * image_height > max_area_) {
        const double area = static_cast<double>(max_area_);
        const double resized_width = std::sqrt(area * aspect), resized_height = area / resized_width;
        const auto width_rounded = round_to_steps(resized_width);
        const auto height_in_width_rounded = round_to_steps(static_cast<double>(width_rounded) / aspect);
        const auto height_rounded = round_to_steps(resized_height);
        const auto width_in_height_rounded = round_to_steps(static_cast<double>(height_rounded) * aspect);
        if (height_in_width_rounded == 0 || height_rounded == 0)
          fail("buckets: an image of ", image_width, "x", image_height, " is too narrow for bucket_reso_steps ", config_.steps);
        const double ar_width_rounded = static_cast<double>(width_rounded) / static_cast<double>(height_in_width_rounded);
        const double ar_height_rounded = static_cast<double>(width_in_height_rounded) / static_cast<double>(height_rounded);
        if (std::abs(ar_width_rounded - aspect) < std::abs(ar_height_rounded - aspect))
          c.resized = {width_rounded, static_cast<std::int64_t>(static_cast<double>(width_rounded) / aspect + 0.5)};
        else
          c.resized = {static_cast<std::int64_t>(static_cast<double>(height_rounded) * aspect + 0.5), height_rounded};
      } else {
        c.resized = {image_width, image_height};
      }
      c.bucket = {c.resized.width - c.resized.width % config_.steps, c.resized.height - c.resized.height % config_.steps};
      if (c.bucket.width == 0 || c.bucket.height == 0)
        fail("buckets: an image of ", image_width, "x", image_height, " is smaller than bucket_reso_steps ", config_.steps, " on a side");
    }
    c.ar_error = static_cast<double>(c.bucket.width) / static_cast<double>(c.bucket.height) - aspect;
    return c;
  }

 private:
  std::int64_t round_to_steps(double x) const {
    const auto rounded = static_cast<std::int64_t>(x + 0.5);
    return rounded - rounded % config_.steps;
  }

  BucketConfig config_;
  std::int64_t max_area_;
  std::vector<Size2> resolutions_;
  std::vector<double> ratios_;
};

// An image in its bucket, as kohya's trim_and_resize_if_required: resized to choice.resized (Pillow's BILINEAR here; kohya
// resizes with OpenCV's INTER_AREA), then cropped to the bucket (centred at slack // 2, or at a uniform integer in
// [0, slack] from the draw u for random crops), ToTensor and Normalize(0.5, 0.5): [3, bucket h, bucket w] in [-1, 1].
inline std::vector<float> preprocess_to_bucket(const Image& image, const BucketChoice& choice, bool center_crop, double crop_draw) {
  DB_CHECK(choice.resized.width >= choice.bucket.width && choice.resized.height >= choice.bucket.height, "buckets: ", choice.resized.str(),
           " does not cover the bucket ", choice.bucket.str());
  const auto resized = resize_bilinear(image, choice.resized.width, choice.resized.height);
  const auto offset = [&](std::int64_t slack) {
    return center_crop ? slack / 2
                       : std::min(slack, static_cast<std::int64_t>(std::floor(std::clamp(crop_draw, 0.0, 1.0) * static_cast<double>(slack + 1))));
  };
  const auto W = choice.bucket.width, H = choice.bucket.height, left = offset(resized.width - W), top = offset(resized.height - H);
  std::vector<float> out(static_cast<std::size_t>(3 * H * W));
  for (std::int64_t c = 0; c < 3; ++c)
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x) {
        const float unit = static_cast<float>(resized.rgb[static_cast<std::size_t>(((top + y) * resized.width + left + x) * 3 + c)]) / 255.0f;
        out[static_cast<std::size_t>((c * H + y) * W + x)] = (unit - 0.5f) / 0.5f;
      }
  return out;
}

}  // namespace dreambooth::data
