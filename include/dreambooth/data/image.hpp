// Image files for training, read and preprocessed as diffusers' DreamBooth script does it with Pillow and torchvision:
// JPEG (libjpeg-turbo) and PNG (libpng) decoded to 8-bit RGB as Pillow's convert("RGB") gives it (EXIF orientation as
// ImageOps.exif_transpose, CMYK and 16-bit samples as Pillow converts them); the shorter side resized to `resolution`
// with Pillow's BILINEAR resampling (its fixed-point coefficients, the horizontal pass stored as uint8 before the
// vertical one); a centre crop at torchvision's offsets (Python's round, half to even) or a random crop at a uniformly
// drawn offset (RandomCrop); ToTensor and Normalize(0.5, 0.5) in float32, channels first.
// An image over a pixel limit (max_pixels, model.data.max_image_pixels) is refused from its header; a failed allocation
// of its pixels is an error naming the file and the size. libjpeg's error longjmp lands in a frame of its own
// (image_detail::jpeg_guarded, as png.hpp does it for libpng), never skipping a C++ destructor.
#pragma once

#include <cstddef>
#include <cstdio>
// jpeglib.h needs size_t and FILE declared first
#include <jerror.h>  // JWRN_JPEG_EOF
#include <jpeglib.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/png.hpp"

namespace dreambooth::data {

// The most pixels (width x height) an image file may have by default; model.data.max_image_pixels overrides it.
inline constexpr std::int64_t kDefaultMaxImagePixels = 64'000'000;
static_assert(kDefaultMaxImagePixels == io::kDefaultMaxImagePixels);

struct Image {
  std::int64_t width = 0, height = 0;
  std::vector<std::uint8_t> rgb;  // [height, width, 3]
};

namespace image_detail {

// libjpeg's error manager with the jump target and the message carried out of the longjmp (trivially destructible).
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

// libjpeg's warnings as Pillow treats them: a file that ends early is an error (Pillow: "image file is truncated");
// every other warning (corrupt data libjpeg recovers from, junk bytes before a marker) is tolerated, and the first is
// kept to be reported once with the file's name.
struct JpegWarnings {
  JpegError error;
  int count = 0;
  char first[JMSG_LENGTH_MAX];  // a plain array: filled inside libjpeg's callback, where nothing may throw
};
inline void jpeg_emit_message(j_common_ptr info, int level) {
  if (level >= 0) return;  // trace messages
  auto* w = reinterpret_cast<JpegWarnings*>(info->err);
  if (info->err->msg_code == JWRN_JPEG_EOF) {
    (*info->err->format_message)(info, w->error.message);
    std::longjmp(w->error.jump, 2);
  }
  if (w->count++ == 0) (*info->err->format_message)(info, w->first);
}

// Runs body() (libjpeg calls and plain arithmetic; nothing in it with a destructor) with libjpeg's error longjmp
// landing here: 0, or the jump's code (1 an error, 2 a truncated file) with the message in err.message. The caller
// throws after this frame has returned.
template <class Body>
int jpeg_guarded(JpegError& err, const Body& body) {
  if (const int why = setjmp(err.jump)) return why;
  body();
  return 0;
}

// Owner of libjpeg's decoder state, destroyed on every way out of decode_jpeg.
struct JpegDecompressor {
  jpeg_decompress_struct info{};
  JpegWarnings err{};
  JpegDecompressor() {
    info.err = jpeg_std_error(&err.error.manager);
    err.error.manager.error_exit = jpeg_error_exit;
    err.error.manager.emit_message = jpeg_emit_message;
  }
  JpegDecompressor(const JpegDecompressor&) = delete;
  JpegDecompressor& operator=(const JpegDecompressor&) = delete;
  ~JpegDecompressor() { jpeg_destroy_decompress(&info); }  // safe before jpeg_create_decompress too (no memory manager yet)
};

// EXIF orientation (1-8) from a JPEG's APP1 segment; 1 when absent or unreadable.
inline int exif_orientation(std::span<const std::uint8_t> file) {
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

// Applies an EXIF orientation so the image is upright (as PIL's ImageOps.exif_transpose); `file` names it in errors.
inline Image orient(Image in, int orientation, const std::string& file = "the image") {
  if (orientation <= 1) return in;
  const bool swap = orientation >= 5;
  Image out;
  out.width = swap ? in.height : in.width;
  out.height = swap ? in.width : in.height;
  io::allocate_pixels(out.rgb, in.rgb.size(), "turned pixels (EXIF orientation)", file);
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

// Decodes a JPEG held in memory (`path` names it in errors). An image over max_pixels is refused from its header.
inline Image decode_jpeg(std::span<const std::uint8_t> file, const std::string& path, std::int64_t max_pixels = kDefaultMaxImagePixels) {
  JpegDecompressor decoder;
  jpeg_decompress_struct& info = decoder.info;
  JpegWarnings& err = decoder.err;
  const auto check = [&](int why) {
    if (why == 2) fail("image ", path, ": truncated JPEG (", err.error.message, ")");
    if (why != 0) fail("image ", path, ": corrupt JPEG: ", err.error.message);
  };
  check(jpeg_guarded(err.error, [&] {
    jpeg_create_decompress(&info);
    jpeg_mem_src(&info, file.data(), static_cast<unsigned long>(file.size()));
    jpeg_read_header(&info, TRUE);
  }));
  io::check_pixel_limit(path, info.image_width, info.image_height, max_pixels);
  const bool cmyk = info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK;
  check(jpeg_guarded(err.error, [&] {
    info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&info);
  }));
  Image image;
  image.width = info.output_width;
  image.height = info.output_height;
  std::vector<std::uint8_t> row;
  io::allocate_pixels(image.rgb, static_cast<std::size_t>(image.width * image.height * 3), "decoded pixels", path);
  io::allocate_pixels(row, static_cast<std::size_t>(image.width * info.output_components), "decoder's row buffer", path);
  std::uint8_t* const pixels = image.rgb.data();
  std::uint8_t* const line = row.data();
  const std::int64_t width = image.width;
  check(jpeg_guarded(err.error, [&] {
    while (info.output_scanline < info.output_height) {
      const auto y = static_cast<std::int64_t>(info.output_scanline);
      JSAMPROW rows[1] = {line};
      if (jpeg_read_scanlines(&info, rows, 1) != 1) break;  // jpeg_finish_decompress reports the missing lines
      for (std::int64_t x = 0; x < width; ++x) {
        std::uint8_t* px = pixels + (y * width + x) * 3;
        if (cmyk) {  // Pillow's cmyk2rgb: channel = (255 - k) - (c * (255 - k)) / 255, its rounded integer division
          // Pillow reads every CMYK JPEG as Adobe's inverted CMYK ("CMYK;I"), with or without its marker
          const int not_k = line[x * 4 + 3];  // 255 - (255 - stored k)
          for (int c = 0; c < 3; ++c) {
            const int t = (255 - line[x * 4 + c]) * not_k + 128;
            px[c] = static_cast<std::uint8_t>(std::clamp(not_k - (((t >> 8) + t) >> 8), 0, 255));
          }
        } else {
          std::copy_n(line + x * 3, 3, px);
        }
      }
    }
    jpeg_finish_decompress(&info);
  }));
  if (err.count > 0) {  // reported once per file and process (the dataset's workers load each image every epoch)
    static std::mutex mutex;
    static std::set<std::string> reported;
    const std::lock_guard<std::mutex> lock(mutex);
    if (reported.insert(path).second)
      std::fprintf(stderr, "image %s: %d JPEG warning%s, decoded as Pillow decodes it: %s\n", path.c_str(), err.count, err.count > 1 ? "s" : "",
                   err.first);
  }
  return orient(std::move(image), exif_orientation(file), path);
}

// Pillow's BILINEAR resampling along one axis (Resample.c): a triangle filter whose support widens by the scale when
// shrinking, coefficients normalised per output pixel and stored as fixed point with 22 fractional bits, each output
// rounded and clipped to uint8. in[lines, in_size, 3] -> out[lines, out_size, 3], then transposed ([out_size, lines, 3])
// so that the second pass runs along the other axis the same way.
inline std::vector<std::uint8_t> pillow_bilinear_pass(const std::vector<std::uint8_t>& in, std::int64_t lines, std::int64_t in_size,
                                                      std::int64_t out_size) {
  constexpr int kPrecisionBits = 32 - 8 - 2;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size), filter_scale = std::max(1.0, scale);
  const double support = filter_scale;  // the triangle's support (1) times filter_scale
  std::vector<std::int64_t> first(static_cast<std::size_t>(out_size)), count(static_cast<std::size_t>(out_size));
  std::vector<std::vector<std::int32_t>> weights(static_cast<std::size_t>(out_size));
  for (std::int64_t o = 0; o < out_size; ++o) {
    const double center = (static_cast<double>(o) + 0.5) * scale;
    // C's (int) conversion truncates toward zero
    const auto lo = std::max<std::int64_t>(0, static_cast<std::int64_t>(center - support + 0.5));
    const auto hi = std::min<std::int64_t>(in_size, static_cast<std::int64_t>(center + support + 0.5));
    std::vector<double> w;
    double total = 0;
    for (std::int64_t k = lo; k < hi; ++k) {
      const double t = std::abs((static_cast<double>(k) - center + 0.5) / filter_scale);
      w.push_back(t < 1.0 ? 1.0 - t : 0.0);
      total += w.back();
    }
    auto& fixed = weights[static_cast<std::size_t>(o)];
    for (double v : w) {
      if (total != 0.0) v /= total;
      fixed.push_back(static_cast<std::int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits)));
    }
    first[static_cast<std::size_t>(o)] = lo;
    count[static_cast<std::size_t>(o)] = hi - lo;
  }
  std::vector<std::uint8_t> out(static_cast<std::size_t>(out_size * lines * 3));
  for (std::int64_t line = 0; line < lines; ++line)
    for (std::int64_t o = 0; o < out_size; ++o) {
      const auto& w = weights[static_cast<std::size_t>(o)];
      const auto lo = first[static_cast<std::size_t>(o)];
      for (int c = 0; c < 3; ++c) {
        std::int32_t acc = 1 << (kPrecisionBits - 1);
        for (std::int64_t k = 0; k < count[static_cast<std::size_t>(o)]; ++k)
          acc += in[static_cast<std::size_t>((line * in_size + lo + k) * 3 + c)] * w[static_cast<std::size_t>(k)];
        out[static_cast<std::size_t>((o * lines + line) * 3 + c)] = static_cast<std::uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255));
      }
    }
  return out;
}

inline std::vector<std::uint8_t> transpose_hw(const std::vector<std::uint8_t>& in, std::int64_t h, std::int64_t w) {  // [h, w, 3] -> [w, h, 3]
  std::vector<std::uint8_t> out(in.size());
  for (std::int64_t y = 0; y < h; ++y)
    for (std::int64_t x = 0; x < w; ++x) std::copy_n(in.data() + (y * w + x) * 3, 3, out.data() + (x * h + y) * 3);
  return out;
}

}  // namespace image_detail

// Decodes a JPEG or PNG file held in memory (by content, not extension; `name` for errors) to 8-bit RGB, upright. An
// image of more than max_pixels pixels is refused from its header, before any pixel is allocated or decoded.
inline Image decode_image(std::span<const std::uint8_t> file, const std::string& name, std::int64_t max_pixels = kDefaultMaxImagePixels) {
  if (file.size() >= 3 && file[0] == 0xFF && file[1] == 0xD8 && file[2] == 0xFF) return image_detail::decode_jpeg(file, name, max_pixels);
  if (file.size() >= 8 && file[0] == 0x89 && file[1] == 'P' && file[2] == 'N' && file[3] == 'G') {
    auto png = io::read_png(file, name, max_pixels);
    return Image{png.width, png.height, std::move(png.pixels)};
  }
  fail("image ", name, ": not a JPEG or PNG file");
}

// Reads and decodes a JPEG or PNG file (decode_image).
inline Image load_image(const std::filesystem::path& path, std::int64_t max_pixels = kDefaultMaxImagePixels) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("image ", path.string(), ": cannot open");
  std::vector<std::uint8_t> file;
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec && std::filesystem::is_regular_file(path, ec)) {
    io::allocate_pixels(file, static_cast<std::size_t>(size), "contents", path.string());
    in.read(reinterpret_cast<char*>(file.data()), static_cast<std::streamsize>(file.size()));
    if (in.gcount() != static_cast<std::streamsize>(file.size())) fail("image ", path.string(), ": read error");
  } else {  // not a regular file (a pipe): read to its end
    file.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (in.bad()) fail("image ", path.string(), ": read error");
  return decode_image(file, path.string(), max_pixels);
}

// Pillow's resize of rgb[h, w, 3] to [new_h, new_w, 3] with BILINEAR, each pass's result stored as uint8; a pass is
// skipped when its side stays. The horizontal pass runs first unless the height shrinks by more than twice as many pixels
// as the width (Pillow 13.0's order, Resample.c; Pillow releases before that order always ran the horizontal pass first).
inline Image resize_bilinear(const Image& image, std::int64_t new_w, std::int64_t new_h) {
  Image out{image.width, image.height, image.rgb};
  const auto horizontal = [&] {
    if (new_w == out.width) return;
    out.rgb = image_detail::transpose_hw(image_detail::pillow_bilinear_pass(out.rgb, out.height, out.width, new_w), new_w, out.height);
    out.width = new_w;
  };
  const auto vertical = [&] {
    if (new_h == out.height) return;
    const auto columns = image_detail::transpose_hw(out.rgb, out.height, out.width);      // [w, h, 3]
    out.rgb = image_detail::pillow_bilinear_pass(columns, out.width, out.height, new_h);  // [new_h, w, 3]
    out.height = new_h;
  };
  const auto shrink_h = image.height - new_h, shrink_w = image.width - new_w;
  if (shrink_h > 0 && shrink_h > 2 * shrink_w) {
    vertical();
    horizontal();
  } else {
    horizontal();
    vertical();
  }
  return out;
}

// The offset of a crop into `slack` spare pixels: torchvision's CenterCrop, int(round(slack / 2.0)) with Python's
// round (half to even), or RandomCrop's uniform integer in [0, slack] from a uniform draw u in [0, 1).
inline std::int64_t crop_offset(std::int64_t slack, bool center_crop, double u) {
  if (center_crop) {
    const auto half = slack / 2;
    return slack % 2 == 1 && half % 2 == 1 ? half + 1 : half;
  }
  return std::min(slack, static_cast<std::int64_t>(std::floor(std::clamp(u, 0.0, 1.0) * static_cast<double>(slack + 1))));
}

// The shorter side resized to `resolution` (the longer to int(resolution * long / short), torchvision's Resize), then a
// resolution x resolution crop (centred, or at crop_offset(slack, false, crop_draw) for random crops), ToTensor and
// Normalize(0.5, 0.5) in float32: [3, resolution, resolution] in [-1, 1].
struct CropAt {
  std::int64_t top = 0, left = 0;
};
inline std::vector<float> preprocess(const Image& image, std::int64_t resolution, bool center_crop = true, double crop_draw = 0.5,
                                     std::optional<CropAt> crop_at = std::nullopt) {
  DB_CHECK(image.width > 0 && image.height > 0, "preprocess: empty image");
  const bool portrait = image.width <= image.height;  // torchvision: the short side is the width when w <= h
  const auto short_side = portrait ? image.width : image.height, long_side = portrait ? image.height : image.width;
  const auto new_long = static_cast<std::int64_t>(static_cast<double>(resolution * long_side) / static_cast<double>(short_side));
  const auto new_w = portrait ? resolution : new_long, new_h = portrait ? new_long : resolution;
  const auto resized = resize_bilinear(image, new_w, new_h);
  auto top = crop_offset(new_h - resolution, center_crop, crop_draw), left = crop_offset(new_w - resolution, center_crop, crop_draw);
  if (crop_at) {  // an explicit offset (tests: torchvision's own random offsets)
    DB_CHECK(crop_at->top >= 0 && crop_at->left >= 0 && crop_at->top <= new_h - resolution && crop_at->left <= new_w - resolution,
             "preprocess: crop at (", crop_at->top, ", ", crop_at->left, ") outside the ", new_w, "x", new_h, " image");
    top = crop_at->top, left = crop_at->left;
  }
  std::vector<float> out(static_cast<std::size_t>(3 * resolution * resolution));
  for (std::int64_t c = 0; c < 3; ++c)
    for (std::int64_t y = 0; y < resolution; ++y)
      for (std::int64_t x = 0; x < resolution; ++x) {
        const float unit = static_cast<float>(resized.rgb[static_cast<std::size_t>(((top + y) * new_w + left + x) * 3 + c)]) / 255.0f;
        out[static_cast<std::size_t>((c * resolution + y) * resolution + x)] = (unit - 0.5f) / 0.5f;  // ToTensor, Normalize
      }
  return out;
}

}  // namespace dreambooth::data
