// Image files for training: JPEG (libjpeg-turbo, EXIF orientation honoured) and PNG (libpng) decoded to 8-bit RGB,
// then DreamBooth's preprocessing: resize so the shorter side is `resolution` (bilinear, antialiased when shrinking, as
// PIL's BILINEAR filter), center or random crop to resolution x resolution, scale to [-1, 1], channels first.
#pragma once

#include <cstddef>
#include <cstdio>
// jpeglib.h needs size_t and FILE declared first
#include <jpeglib.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/png.hpp"

namespace dreambooth::data {

struct Image {
  std::int64_t width = 0, height = 0;
  std::vector<std::uint8_t> rgb;  // [height, width, 3]
};

namespace image_detail {

struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

inline void jpeg_error_exit(j_common_ptr info) {
  auto* err = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings (a truncated file, corrupt data that libjpeg would paper over) are errors, as PIL treats them.
inline void jpeg_emit_message(j_common_ptr info, int level) {
  if (level < 0) jpeg_error_exit(info);
}

// EXIF orientation (1-8) from a JPEG's APP1 segment; 1 when absent or unreadable.
inline int exif_orientation(const std::vector<std::uint8_t>& file) {
  std::size_t i = 2;
  while (i + 4 <= file.size() && file[i] == 0xFF) {
    const int marker = file[i + 1];
    const std::size_t length = static_cast<std::size_t>(file[i + 2]) << 8 | file[i + 3];
    if (marker == 0xDA || length < 2) break;  // start of scan: no more metadata
    if (marker == 0xE1 && length >= 16 && i + 2 + length <= file.size() &&
        std::equal(file.begin() + static_cast<std::ptrdiff_t>(i + 4), file.begin() + static_cast<std::ptrdiff_t>(i + 10), "Exif\0\0")) {
      const std::size_t tiff = i + 10, end = i + 2 + length;
      const bool little = file[tiff] == 'I';
      const auto u16 = [&](std::size_t at) -> unsigned {
        if (at + 2 > end) return 0;
        return little ? file[at] | file[at + 1] << 8 : file[at] << 8 | file[at + 1];
      };
      const auto u32 = [&](std::size_t at) -> std::size_t {
        if (at + 4 > end) return 0;
        return little ? (std::size_t{file[at]} | std::size_t{file[at + 1]} << 8 | std::size_t{file[at + 2]} << 16 | std::size_t{file[at + 3]} << 24)
                      : (std::size_t{file[at]} << 24 | std::size_t{file[at + 1]} << 16 | std::size_t{file[at + 2]} << 8 | std::size_t{file[at + 3]});
      };
      const std::size_t ifd = tiff + u32(tiff + 4);
      const unsigned entries = u16(ifd);
      for (unsigned e = 0; e < entries; ++e) {
        const std::size_t entry = ifd + 2 + 12 * e;
        if (entry + 12 > end) break;
        if (u16(entry) == 0x0112) {
          const unsigned value = u16(entry + 8);
          return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
        }
      }
      return 1;
    }
    i += 2 + length;
  }
  return 1;
}

// Applies an EXIF orientation so the image is upright (as PIL's ImageOps.exif_transpose).
inline Image orient(Image in, int orientation) {
  if (orientation <= 1) return in;
  const bool swap = orientation >= 5;
  Image out;
  out.width = swap ? in.height : in.width;
  out.height = swap ? in.width : in.height;
  out.rgb.resize(in.rgb.size());
  for (std::int64_t y = 0; y < out.height; ++y)
    for (std::int64_t x = 0; x < out.width; ++x) {
      std::int64_t sx = 0, sy = 0;  // source pixel
      switch (orientation) {
        case 2: sx = in.width - 1 - x, sy = y; break;                  // mirrored
        case 3: sx = in.width - 1 - x, sy = in.height - 1 - y; break;  // rotated 180
        case 4: sx = x, sy = in.height - 1 - y; break;                 // flipped vertically
        case 5: sx = y, sy = x; break;                                 // transposed
        case 6: sx = y, sy = in.height - 1 - x; break;                 // rotated 90 clockwise to view
        case 7: sx = in.width - 1 - y, sy = in.height - 1 - x; break;  // transversed
        case 8: sx = in.width - 1 - y, sy = x; break;                  // rotated 90 counter-clockwise to view
        default: break;
      }
      std::copy_n(in.rgb.data() + (sy * in.width + sx) * 3, 3, out.rgb.data() + (y * out.width + x) * 3);
    }
  return out;
}

inline Image decode_jpeg(const std::vector<std::uint8_t>& file, const std::string& path) {
  jpeg_decompress_struct info{};
  JpegError err{};
  info.err = jpeg_std_error(&err.manager);
  err.manager.error_exit = jpeg_error_exit;
  err.manager.emit_message = jpeg_emit_message;
  Image image;
  std::vector<std::uint8_t> row;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&info);
    fail("image ", path, ": corrupt JPEG: ", err.message);
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, file.data(), static_cast<unsigned long>(file.size()));
  jpeg_read_header(&info, TRUE);
  const bool cmyk = info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK;
  info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&info);
  image.width = info.output_width;
  image.height = info.output_height;
  image.rgb.resize(static_cast<std::size_t>(image.width * image.height * 3));
  row.resize(static_cast<std::size_t>(image.width * info.output_components));
  while (info.output_scanline < info.output_height) {
    const auto y = static_cast<std::int64_t>(info.output_scanline);
    JSAMPROW rows[1] = {row.data()};
    jpeg_read_scanlines(&info, rows, 1);
    for (std::int64_t x = 0; x < image.width; ++x) {
      std::uint8_t* px = image.rgb.data() + (y * image.width + x) * 3;
      if (cmyk) {  // Adobe's inverted CMYK, as PIL converts it
        const int k = row[static_cast<std::size_t>(x * 4 + 3)];
        for (int c = 0; c < 3; ++c) px[c] = static_cast<std::uint8_t>(row[static_cast<std::size_t>(x * 4 + c)] * k / 255);
      } else {
        std::copy_n(row.data() + x * 3, 3, px);
      }
    }
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return orient(std::move(image), exif_orientation(file));
}

// Separable resampling with a triangle (bilinear) filter whose support widens when shrinking (antialiasing), pixel
// centres aligned as PIL does; float in, float out. in[h, w, 3] -> out[h, new_w, 3].
inline std::vector<float> resize_rows(const std::vector<float>& in, std::int64_t h, std::int64_t w, std::int64_t new_w) {
  std::vector<float> out(static_cast<std::size_t>(h * new_w * 3));
  const double scale = static_cast<double>(w) / new_w, support = std::max(1.0, scale);
  for (std::int64_t x = 0; x < new_w; ++x) {
    const double center = (x + 0.5) * scale;
    const auto first = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(center - support)));
    const auto last = std::min<std::int64_t>(w, static_cast<std::int64_t>(std::ceil(center + support)));
    std::vector<double> weights;
    double total = 0;
    for (std::int64_t k = first; k < last; ++k) {
      const double wgt = std::max(0.0, 1.0 - std::abs((k + 0.5 - center) / support));
      weights.push_back(wgt);
      total += wgt;
    }
    for (std::int64_t y = 0; y < h; ++y)
      for (int c = 0; c < 3; ++c) {
        double acc = 0;
        for (std::int64_t k = first; k < last; ++k)
          acc += weights[static_cast<std::size_t>(k - first)] * in[static_cast<std::size_t>((y * w + k) * 3 + c)];
        out[static_cast<std::size_t>((y * new_w + x) * 3 + c)] = static_cast<float>(acc / total);
      }
  }
  return out;
}

inline std::vector<float> transpose_hw(const std::vector<float>& in, std::int64_t h, std::int64_t w) {  // [h, w, 3] -> [w, h, 3]
  std::vector<float> out(in.size());
  for (std::int64_t y = 0; y < h; ++y)
    for (std::int64_t x = 0; x < w; ++x) std::copy_n(in.data() + (y * w + x) * 3, 3, out.data() + (x * h + y) * 3);
  return out;
}

}  // namespace image_detail

// Decodes a JPEG or PNG file (by content, not extension) to 8-bit RGB, upright.
inline Image load_image(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("image ", path.string(), ": cannot open");
  std::vector<std::uint8_t> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (file.size() >= 3 && file[0] == 0xFF && file[1] == 0xD8 && file[2] == 0xFF) return image_detail::decode_jpeg(file, path.string());
  if (file.size() >= 8 && file[0] == 0x89 && file[1] == 'P' && file[2] == 'N' && file[3] == 'G') {
    auto png = io::read_png(path);
    return Image{png.width, png.height, std::move(png.pixels)};
  }
  fail("image ", path.string(), ": not a JPEG or PNG file");
}

// The shorter side resized to `resolution`, then a resolution x resolution crop (centred, or at the given offset into
// the longer side for random crops), as floats in [-1, 1], channels first: [3, resolution, resolution].
inline std::vector<float> preprocess(const Image& image, std::int64_t resolution, bool center_crop = true, double crop_fraction = 0.5) {
  DB_CHECK(image.width > 0 && image.height > 0, "preprocess: empty image");
  const bool wide = image.width >= image.height;
  const auto short_side = wide ? image.height : image.width, long_side = wide ? image.width : image.height;
  const auto new_long = std::max<std::int64_t>(resolution, static_cast<std::int64_t>(static_cast<double>(long_side) * resolution / short_side));
  const auto new_w = wide ? new_long : resolution, new_h = wide ? resolution : new_long;
  std::vector<float> pixels(image.rgb.begin(), image.rgb.end());
  auto rows = image_detail::resize_rows(pixels, image.height, image.width, new_w);                                           // [h, new_w, 3]
  auto cols = image_detail::resize_rows(image_detail::transpose_hw(rows, image.height, new_w), new_w, image.height, new_h);  // [new_w, new_h, 3]
  const auto resized = image_detail::transpose_hw(cols, new_w, new_h);                                                       // [new_h, new_w, 3]
  const double fraction = center_crop ? 0.5 : std::clamp(crop_fraction, 0.0, 1.0);
  const auto top = static_cast<std::int64_t>(std::round((new_h - resolution) * fraction));
  const auto left = static_cast<std::int64_t>(std::round((new_w - resolution) * fraction));
  std::vector<float> out(static_cast<std::size_t>(3 * resolution * resolution));
  for (std::int64_t c = 0; c < 3; ++c)
    for (std::int64_t y = 0; y < resolution; ++y)
      for (std::int64_t x = 0; x < resolution; ++x) {
        const float v = std::clamp(std::round(resized[static_cast<std::size_t>(((top + y) * new_w + left + x) * 3 + c)]), 0.0f, 255.0f);
        out[static_cast<std::size_t>((c * resolution + y) * resolution + x)] = v / 127.5f - 1.0f;
      }
  return out;
}

}  // namespace dreambooth::data
