// PNG files (libpng): writing 8-bit RGB with text chunks (the generation parameters) through AtomicFileWriter, so that
// an interrupted or failed write never leaves a partial image under the target name; reading any PNG to 8-bit RGB as
// Pillow's convert("RGB") gives it, refusing an image over a pixel limit from its header.
//
// libpng reports errors by longjmp. A longjmp that skips the destructor of a C++ object is undefined behaviour (it leaked
// the pixel buffer of a corrupt file), and an exception must not unwind through libpng's C frames. So every libpng call
// that can fail runs inside png_detail::guarded(): the setjmp sits in a frame of its own whose body (a lambda) creates
// no object with a destructor; libpng's message is carried out in a plain char array, and the exception is thrown only
// after guarded() has returned, from a frame where every C++ object (buffers, the file writer, the libpng structs'
// owner) is destroyed normally. Callbacks that call C++ code which may throw (the file writer) catch everything and
// turn it into png_error() outside their catch block.
#pragma once

#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/atomic_file.hpp"

namespace dreambooth::io {

// The most pixels an image file may have unless the caller allows more (model.data.max_image_pixels): 64 megapixels,
// 192 MB of 8-bit RGB; the readers refuse more from the file's header, before allocating anything for the pixels.
inline constexpr std::int64_t kDefaultMaxImagePixels = 64'000'000;

// Throws, naming the file, when width x height exceeds max_pixels.
inline void check_pixel_limit(const std::string& file, std::int64_t width, std::int64_t height, std::int64_t max_pixels) {
  const bool over = width > 0 && height > 0 && (height > max_pixels / width || width * height > max_pixels);
  if (over)
    fail("image ", file, ": ", width, "x", height, " pixels (", static_cast<double>(width) * static_cast<double>(height) / 1e6,
         " megapixels) is more than the limit of ", max_pixels, " pixels; refused before decoding. To load it, raise model.data.max_image_pixels",
         " in the config");
}

// a * b, or SIZE_MAX when that overflows (then no allocation can succeed).
inline std::size_t saturating_product(std::size_t a, std::size_t b) {
  return b != 0 && a > std::numeric_limits<std::size_t>::max() / b ? std::numeric_limits<std::size_t>::max() : a * b;
}

// buffer.resize(count), an allocation failure thrown as an error that says what was being allocated, how big, for which
// file (instead of a bare std::bad_alloc).
template <class T>
void allocate_pixels(std::vector<T>& buffer, std::size_t count, std::string_view what, const std::string& file) {
  try {
    buffer.resize(count);
  } catch (const std::bad_alloc&) {
    fail("image ", file, ": cannot allocate ", saturating_product(count, sizeof(T)), " bytes for the ", what, " of ", file, " (out of memory)");
  } catch (const std::length_error&) {
    fail("image ", file, ": cannot allocate ", saturating_product(count, sizeof(T)), " bytes for the ", what, " of ", file, " (too large)");
  }
}

namespace png_detail {
// libpng's error message, carried out of its longjmp (trivially destructible).
struct Failure {
  char message[512];
};

inline void on_error(png_structp png, png_const_charp message) {
  if (auto* failure = static_cast<Failure*>(png_get_error_ptr(png)))
    std::snprintf(failure->message, sizeof failure->message, "%s", message ? message : "libpng error");
  png_longjmp(png, 1);
}
inline void on_warning(png_structp, png_const_charp) {}

// Runs body() (libpng calls only; nothing in it with a destructor) with libpng's error longjmp landing here: false when
// libpng failed, its message then in the Failure given to png_create_*_struct.
template <class Body>
bool guarded(png_structp png, const Body& body) {
  if (setjmp(png_jmpbuf(png))) return false;
  body();
  return true;
}

// Reading from memory: libpng's read callback over a byte span.
struct Source {
  const std::uint8_t* data;
  std::size_t size, at;
};
inline void read_source(png_structp png, png_bytep out, png_size_t n) {
  auto* source = static_cast<Source*>(png_get_io_ptr(png));
  if (n > source->size - source->at) png_error(png, "the file ends early (truncated PNG)");
  std::copy_n(source->data + source->at, n, out);
  source->at += n;
}

// libpng allocates a chunk's declared length before reading its data (tEXt, zTXt, iCCP, unknown chunks): a corrupt
// length made a 300-byte file allocate 2 GB (found by fuzzing). No chunk can be longer than what is left of the file,
// and libpng would fail at the file's end anyway: such a file is refused here, before libpng sees it.
inline void check_chunk_lengths(std::span<const std::uint8_t> bytes, const std::string& name) {
  if (bytes.size() < 8 || png_sig_cmp(bytes.data(), 0, 8) != 0) return;  // libpng reports a wrong signature
  for (std::size_t at = 8; at + 8 <= bytes.size();) {
    const std::size_t length = std::size_t{bytes[at]} << 24 | std::size_t{bytes[at + 1]} << 16 | std::size_t{bytes[at + 2]} << 8 | bytes[at + 3];
    const std::size_t left = bytes.size() - at - 8;
    if (length > left)
      fail("PNG ", name, ": not a readable PNG file: the chunk at byte ", at, " claims ", length, " bytes of data, the file has ", left,
           " left (truncated or corrupt)");
    if (std::equal(bytes.begin() + static_cast<std::ptrdiff_t>(at + 4), bytes.begin() + static_cast<std::ptrdiff_t>(at + 8), "IEND")) return;
    at += 12 + length;  // length, type, data, CRC
  }
}

// Writing through an AtomicFileWriter: its exception (a failed write) becomes a png_error once out of the catch block.
inline void write_sink(png_structp png, png_bytep data, png_size_t n) {
  char message[512];
  try {
    static_cast<AtomicFileWriter*>(png_get_io_ptr(png))->write(data, n);
    return;
  } catch (const std::exception& e) {
    std::snprintf(message, sizeof message, "%s", e.what());
  } catch (...) {
    std::snprintf(message, sizeof message, "unknown error while writing");
  }
  png_error(png, message);
}
inline void flush_sink(png_structp) {}  // AtomicFileWriter::commit syncs

// Owners of libpng's structs: destroyed on every way out of the functions below.
template <bool Reading>
struct Structs {
  png_structp png = nullptr;
  png_infop info = nullptr;
  Structs() = default;
  Structs(const Structs&) = delete;
  Structs& operator=(const Structs&) = delete;
  ~Structs() {
    if constexpr (Reading)
      png_destroy_read_struct(&png, &info, nullptr);
    else
      png_destroy_write_struct(&png, &info);
  }
};
using ReadStructs = Structs<true>;
using WriteStructs = Structs<false>;
}  // namespace png_detail

// Writes pixels[height, width, 3] (8-bit RGB) as a PNG with the given text chunks, atomically (AtomicFileWriter:
// temporary file, every write checked, fsync, rename); a failure throws naming the file and leaves the target as it was.
inline void write_png(const std::filesystem::path& path, const std::uint8_t* pixels, std::int64_t width, std::int64_t height,
                      const std::map<std::string, std::string>& text = {}) {
  if (width <= 0 || height <= 0 || width > PNG_UINT_31_MAX || height > PNG_UINT_31_MAX)
    fail("PNG ", path.string(), ": cannot write a ", width, "x", height, " image");
  std::vector<png_text> chunks;
  for (const auto& [key, value] : text) {
    // tEXt holds Latin-1: ASCII text goes there, anything else (UTF-8) in an iTXt chunk, as Pillow writes a str that
    // Latin-1 cannot encode (A1111's prompts in other scripts)
    const bool ascii = std::all_of(value.begin(), value.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    png_text t{};
    t.key = const_cast<char*>(key.c_str());
    t.text = const_cast<char*>(value.c_str());
    if (ascii) {
      t.compression = PNG_TEXT_COMPRESSION_NONE;
      t.text_length = value.size();
    } else {
      t.compression = PNG_ITXT_COMPRESSION_NONE;
      t.itxt_length = value.size();
      t.lang = const_cast<char*>("");
      t.lang_key = const_cast<char*>("");
    }
    chunks.push_back(t);
  }
  AtomicFileWriter out(path, "PNG writer");
  png_detail::Failure failure{};
  {
    png_detail::WriteStructs s;
    s.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &failure, png_detail::on_error, png_detail::on_warning);
    if (s.png) s.info = png_create_info_struct(s.png);
    if (!s.png || !s.info) fail("PNG ", path.string(), ": libpng could not start (out of memory)");
    png_structp png = s.png;
    png_infop info = s.info;
    const bool written = png_detail::guarded(png, [&] {
      png_set_write_fn(png, &out, png_detail::write_sink, png_detail::flush_sink);
      png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                   PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
      if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
      png_write_info(png, info);
      for (std::int64_t y = 0; y < height; ++y) png_write_row(png, const_cast<png_bytep>(pixels + y * width * 3));
      png_write_end(png, info);
    });
    if (!written) fail("PNG ", path.string(), ": could not write the image: ", failure.message);  // `out` removes the temporary
  }
  out.commit();
}

// A PNG read to 8-bit RGB: pixels[height, width, 3] and its text chunks.
struct PngImage {
  std::int64_t width = 0, height = 0;
  std::vector<std::uint8_t> pixels;
  std::map<std::string, std::string> text;
};

// Decodes a PNG held in memory (`name` for errors). An image over max_pixels is refused from its header.
inline PngImage read_png(std::span<const std::uint8_t> bytes, const std::string& name, std::int64_t max_pixels = kDefaultMaxImagePixels) {
  png_detail::Failure failure{};
  png_detail::check_chunk_lengths(bytes, name);
  png_detail::Source source{bytes.data(), bytes.size(), 0};
  png_detail::ReadStructs s;
  s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &failure, png_detail::on_error, png_detail::on_warning);
  if (s.png) s.info = png_create_info_struct(s.png);
  if (!s.png || !s.info) fail("PNG ", name, ": libpng could not start (out of memory)");
  png_structp png = s.png;
  png_infop info = s.info;
  const auto refuse = [&] { fail("PNG ", name, ": not a readable PNG file: ", failure.message); };
  // the header, up to the first IDAT chunk; the pixel limit (max_pixels), not libpng's default of 10^6 per side, decides
  if (!png_detail::guarded(png, [&] {
        png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
        png_set_read_fn(png, &source, png_detail::read_source);
        png_read_info(png, info);
      }))
    refuse();
  PngImage image;
  image.width = png_get_image_width(png, info);
  image.height = png_get_image_height(png, info);
  check_pixel_limit(name, image.width, image.height, max_pixels);
  // As Pillow's convert("RGB") sees the file: 16-bit samples keep their high byte, except 16-bit grey (Pillow's "I;16"),
  // whose values are clipped to 255; alpha and transparency dropped; grey and palettes expanded to RGB.
  const bool grey16 = png_get_bit_depth(png, info) == 16 && png_get_color_type(png, info) == PNG_COLOR_TYPE_GRAY;
  std::size_t row_bytes = 0;
  if (!png_detail::guarded(png, [&] {
        if (!grey16) {
          png_set_expand(png);
          png_set_strip_16(png);
          png_set_strip_alpha(png);
          png_set_gray_to_rgb(png);
        }
        png_set_interlace_handling(png);
        png_read_update_info(png, info);
        row_bytes = png_get_rowbytes(png, info);
      }))
    refuse();
  const auto height = static_cast<std::size_t>(image.height), pixel_count = static_cast<std::size_t>(image.width) * height;
  std::vector<std::uint8_t> rows;
  std::vector<png_bytep> row_pointers;
  allocate_pixels(rows, saturating_product(row_bytes, height), grey16 ? "decoded 16-bit samples" : "decoded pixels", name);
  allocate_pixels(row_pointers, height, "row table", name);
  for (std::size_t y = 0; y < height; ++y) row_pointers[y] = rows.data() + y * row_bytes;
  if (!png_detail::guarded(png, [&] {
        png_read_image(png, row_pointers.data());
        png_read_end(png, info);
      }))
    refuse();
  if (grey16) {
    allocate_pixels(image.pixels, saturating_product(pixel_count, 3), "decoded pixels", name);
    for (std::size_t i = 0; i < pixel_count; ++i) {
      const unsigned v = static_cast<unsigned>(rows[2 * i]) << 8 | rows[2 * i + 1];  // big-endian samples
      std::fill_n(image.pixels.data() + 3 * i, 3, static_cast<std::uint8_t>(std::min(v, 255u)));
    }
  } else {
    image.pixels = std::move(rows);
  }
  png_textp chunks = nullptr;
  const int count = png_get_text(png, info, &chunks, nullptr);
  for (int i = 0; i < count; ++i)
    image.text[chunks[i].key] = std::string(chunks[i].text, chunks[i].compression > 0 ? chunks[i].itxt_length : chunks[i].text_length);
  return image;
}

// Reads a PNG file (tests, image inspection; load_image reads it through the in-memory reader above).
inline PngImage read_png(const std::filesystem::path& path, std::int64_t max_pixels = kDefaultMaxImagePixels) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("PNG ", path.string(), ": cannot open");
  const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("PNG ", path.string(), ": read error");
  return read_png(std::span<const std::uint8_t>(bytes), path.string(), max_pixels);
}

}  // namespace dreambooth::io
