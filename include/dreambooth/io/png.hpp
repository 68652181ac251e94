// PNG writing (libpng): 8-bit RGB with text chunks (the generation parameters), written to a temporary file and
// renamed, so that an interrupted run never leaves a partial image.
#pragma once

#include <png.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"

namespace dreambooth::io {

namespace png_detail {
// libpng reports through callbacks: keep the message for our exception instead of printing it.
inline void on_error(png_structp png, png_const_charp message) {
  auto* buffer = static_cast<std::string*>(png_get_error_ptr(png));
  if (buffer) *buffer = message;
  png_longjmp(png, 1);
}
inline void on_warning(png_structp, png_const_charp) {}
}  // namespace png_detail

// pixels[height, width, 3]
inline void write_png(const std::filesystem::path& path, const std::uint8_t* pixels, std::int64_t width, std::int64_t height,
                      const std::map<std::string, std::string>& text = {}) {
  const auto tmp = std::filesystem::path(path.string() + ".tmp-" + std::to_string(::getpid()));
  std::FILE* file = std::fopen(tmp.c_str(), "wb");
  if (!file) fail("PNG ", path.string(), ": cannot create ", tmp.string());
  std::string message;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &message, png_detail::on_error, png_detail::on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  const auto cleanup = [&] {
    png_destroy_write_struct(&png, &info);
    std::fclose(file);
  };
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    cleanup();
    std::filesystem::remove(tmp);
    fail("PNG ", path.string(), ": libpng could not write the image: ", message);
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
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
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  for (std::int64_t y = 0; y < height; ++y) png_write_row(png, const_cast<png_bytep>(pixels + y * width * 3));
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  const bool flushed = std::fflush(file) == 0 && ::fsync(fileno(file)) == 0;
  const bool closed = std::fclose(file) == 0;
  std::error_code ec;
  if (!flushed || !closed) {
    std::filesystem::remove(tmp, ec);
    fail("PNG ", path.string(), ": could not flush ", tmp.string());
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail("PNG ", path.string(), ": could not rename ", tmp.string(), ": ", ec.message());
  }
}

// Reads an 8-bit RGB(A) PNG into pixels[height, width, 3] and its text chunks (tests, image inspection).
struct PngImage {
  std::int64_t width = 0, height = 0;
  std::vector<std::uint8_t> pixels;
  std::map<std::string, std::string> text;
};

inline PngImage read_png(const std::filesystem::path& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) fail("PNG ", path.string(), ": cannot open");
  std::string message;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &message, png_detail::on_error, png_detail::on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    std::fclose(file);
    fail("PNG ", path.string(), ": not a readable PNG file", message.empty() ? "" : ": ", message);
  }
  png_init_io(png, file);
  png_read_info(png, info);
  // As Pillow's convert("RGB") sees the file: 16-bit samples keep their high byte, except 16-bit grey (Pillow's "I;16"),
  // whose values are clipped to 255; alpha and transparency dropped; grey and palettes expanded to RGB.
  const bool grey16 = png_get_bit_depth(png, info) == 16 && png_get_color_type(png, info) == PNG_COLOR_TYPE_GRAY;
  if (!grey16) {
    png_set_expand(png);
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  PngImage image;
  image.width = png_get_image_width(png, info);
  image.height = png_get_image_height(png, info);
  const std::size_t row_bytes = png_get_rowbytes(png, info);
  std::vector<std::uint8_t> rows(row_bytes * static_cast<std::size_t>(image.height));
  std::vector<png_bytep> row_pointers(static_cast<std::size_t>(image.height));
  for (std::size_t y = 0; y < row_pointers.size(); ++y) row_pointers[y] = rows.data() + y * row_bytes;
  png_read_image(png, row_pointers.data());
  png_read_end(png, info);
  if (grey16) {
    image.pixels.resize(static_cast<std::size_t>(image.width * image.height * 3));
    for (std::size_t i = 0; i < static_cast<std::size_t>(image.width * image.height); ++i) {
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
  png_destroy_read_struct(&png, &info, nullptr);
  std::fclose(file);
  return image;
}

}  // namespace dreambooth::io
