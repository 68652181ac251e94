// Canvas: an RGB picture to draw reports into (the demo's grid and loss curve): rectangles, lines, pictures pasted at an
// integer scale, and text in a 5x7 bitmap font (upper case, digits and a little punctuation; lower case is drawn as
// upper case), written as PNG.
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/png.hpp"

namespace dreambooth::data {

struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
};

namespace canvas_detail {

struct Glyph {
  char c;
  std::array<const char*, 7> rows;  // '#' ink, '.' paper
};

// clang-format off
inline constexpr Glyph kFont[] = {
    {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
    {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
    {'3', {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."}},
    {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
    {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
    {'6', {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."}},
    {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
    {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
    {'9', {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."}},
    {'A', {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'B', {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."}},
    {'C', {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."}},
    {'D', {"####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."}},
    {'E', {"#####", "#....", "#....", "####.", "#....", "#....", "#####"}},
    {'F', {"#####", "#....", "#....", "####.", "#....", "#....", "#...."}},
    {'G', {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"}},
    {'H', {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'I', {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'J', {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."}},
    {'K', {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"}},
    {'L', {"#....", "#....", "#....", "#....", "#....", "#....", "#####"}},
    {'M', {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"}},
    {'N', {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"}},
    {'O', {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'P', {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."}},
    {'Q', {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"}},
    {'R', {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"}},
    {'S', {".####", "#....", "#....", ".###.", "....#", "....#", "####."}},
    {'T', {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
    {'U', {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'V', {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'W', {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."}},
    {'X', {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"}},
    {'Y', {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."}},
    {'Z', {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"}},
    {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
    {',', {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."}},
    {'-', {".....", ".....", ".....", "#####", ".....", ".....", "....."}},
    {'=', {".....", ".....", "#####", ".....", "#####", ".....", "....."}},
    {':', {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."}},
    {'"', {".#.#.", ".#.#.", ".....", ".....", ".....", ".....", "....."}},
    {'(', {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."}},
    {')', {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."}},
    {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
    {'%', {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"}},
};
// clang-format on

inline const Glyph* find_glyph(char c) {
  const char upper = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& g : kFont)
    if (g.c == upper) return &g;
  return nullptr;  // a space, or a character the font lacks: drawn as a space
}

}  // namespace canvas_detail

class Canvas {
 public:
  static constexpr int kGlyphWidth = 5, kGlyphHeight = 7, kGlyphAdvance = 6;  // at scale 1

  Canvas(int width, int height, Rgb paper) : width_(width), height_(height) {
    if (width < 1 || height < 1 || width > 16384 || height > 16384) fail("canvas: ", width, "x", height, " is not between 1x1 and 16384x16384");
    pixels_.resize(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3);
    fill_rect(0, 0, width, height, paper);
  }

  int width() const { return width_; }
  int height() const { return height_; }
  const std::uint8_t* data() const { return pixels_.data(); }
  Rgb at(int x, int y) const {
    const auto* p = pixels_.data() + index(x, y);
    return {p[0], p[1], p[2]};
  }

  void set(int x, int y, Rgb c) {  // outside the canvas: nothing
    if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
    auto* p = pixels_.data() + index(x, y);
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }

  void fill_rect(int x, int y, int w, int h, Rgb c) {
    for (int j = std::max(0, y); j < std::min(height_, y + h); ++j)
      for (int i = std::max(0, x); i < std::min(width_, x + w); ++i) set(i, j, c);
  }

  // A straight line of `thickness` pixels from (x0, y0) to (x1, y1).
  void line(double x0, double y0, double x1, double y1, Rgb c, int thickness = 1) {
    const double length = std::hypot(x1 - x0, y1 - y0);
    const int steps = std::max(1, static_cast<int>(std::ceil(length * 2)));
    const int half = (thickness - 1) / 2;
    for (int s = 0; s <= steps; ++s) {
      const double t = static_cast<double>(s) / steps;
      const int x = static_cast<int>(std::lround(x0 + t * (x1 - x0))), y = static_cast<int>(std::lround(y0 + t * (y1 - y0)));
      fill_rect(x - half, y - half, thickness, thickness, c);
    }
  }

  // Pastes rgb[h, w, 3] with its top-left corner at (x, y), each pixel as a scale x scale block.
  void paste(const std::uint8_t* rgb, int w, int h, int x, int y, int scale = 1) {
    for (int j = 0; j < h * scale; ++j)
      for (int i = 0; i < w * scale; ++i) {
        const auto* p = rgb + (static_cast<std::size_t>(j / scale) * static_cast<std::size_t>(w) + static_cast<std::size_t>(i / scale)) * 3;
        set(x + i, y + j, {p[0], p[1], p[2]});
      }
  }

  // Text with its top-left corner at (x, y); each font pixel a scale x scale block.
  void text(int x, int y, std::string_view s, Rgb c, int scale = 1) {
    for (const char ch : s) {
      if (const auto* g = canvas_detail::find_glyph(ch))
        for (int j = 0; j < kGlyphHeight; ++j)
          for (int i = 0; i < kGlyphWidth; ++i)
            if (g->rows[static_cast<std::size_t>(j)][i] == '#') fill_rect(x + i * scale, y + j * scale, scale, scale, c);
      x += kGlyphAdvance * scale;
    }
  }

  static int text_width(std::string_view s, int scale = 1) { return static_cast<int>(s.size()) * kGlyphAdvance * scale - scale; }

  void write_png(const std::filesystem::path& path, const std::map<std::string, std::string>& text_chunks = {}) const {
    io::write_png(path, pixels_.data(), width_, height_, text_chunks);
  }

 private:
  std::size_t index(int x, int y) const { return (static_cast<std::size_t>(y) * static_cast<std::size_t>(width_) + static_cast<std::size_t>(x)) * 3; }

  int width_, height_;
  std::vector<std::uint8_t> pixels_;  // [height, width, 3]
};

}  // namespace dreambooth::data
