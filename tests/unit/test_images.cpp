// Image decoding (PNG, JPEG with EXIF orientation) and DreamBooth's preprocessing.
#include <cstddef>
#include <cstdio>
// jpeglib.h needs size_t and FILE declared first
#include <jpeglib.h>

#include <unistd.h>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "dreambooth/core/rng.hpp"
#include "dreambooth/data/image.hpp"
#include "dreambooth/io/json.hpp"
#include "dreambooth/io/safetensors.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;

namespace {
fs::path scratch() {
  const auto dir = fs::temp_directory_path() / ("dreambooth-images-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

// A w x h test pattern: red = x ramp, green = y ramp, blue = constant.
data::Image pattern(std::int64_t w, std::int64_t h) {
  data::Image im{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w * h * 3))};
  for (std::int64_t y = 0; y < h; ++y)
    for (std::int64_t x = 0; x < w; ++x) {
      auto* p = im.rgb.data() + (y * w + x) * 3;
      p[0] = static_cast<std::uint8_t>(x * 255 / std::max<std::int64_t>(1, w - 1));
      p[1] = static_cast<std::uint8_t>(y * 255 / std::max<std::int64_t>(1, h - 1));
      p[2] = 100;
    }
  return im;
}

std::vector<std::uint8_t> encode_jpeg(const data::Image& im) {
  jpeg_compress_struct info{};
  jpeg_error_mgr err{};
  info.err = jpeg_std_error(&err);
  jpeg_create_compress(&info);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &buffer, &size);
  info.image_width = static_cast<JDIMENSION>(im.width);
  info.image_height = static_cast<JDIMENSION>(im.height);
  info.input_components = 3;
  info.in_color_space = JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, 100, TRUE);
  jpeg_start_compress(&info, TRUE);
  while (info.next_scanline < info.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(im.rgb.data() + info.next_scanline * im.width * 3);
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  std::vector<std::uint8_t> out(buffer, buffer + size);
  jpeg_destroy_compress(&info);
  std::free(buffer);
  return out;
}

// Inserts an APP1 EXIF segment with the given orientation right after the SOI marker.
std::vector<std::uint8_t> with_orientation(std::vector<std::uint8_t> jpeg, int orientation) {
  const std::uint8_t app1[] = {0xFF,
                               0xE1,
                               0x00,
                               0x22,
                               'E',
                               'x',
                               'i',
                               'f',
                               0,
                               0,  // length 34
                               'I',
                               'I',
                               0x2A,
                               0x00,
                               0x08,
                               0x00,
                               0x00,
                               0x00,  // TIFF header, IFD at 8
                               0x01,
                               0x00,  // one entry
                               0x12,
                               0x01,
                               0x03,
                               0x00,
                               0x01,
                               0x00,
                               0x00,
                               0x00,  // tag 0x0112, SHORT, count 1
                               static_cast<std::uint8_t>(orientation),
                               0x00,
                               0x00,
                               0x00,
                               0x00,
                               0x00,
                               0x00,
                               0x00};
  jpeg.insert(jpeg.begin() + 2, std::begin(app1), std::end(app1));
  return jpeg;
}

fs::path write_file(const std::string& name, const std::vector<std::uint8_t>& bytes) {
  const auto path = scratch() / name;
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

int max_difference(const data::Image& a, const data::Image& b) {
  int worst = 0;
  for (std::size_t i = 0; i < a.rgb.size(); ++i) worst = std::max(worst, std::abs(int(a.rgb[i]) - int(b.rgb[i])));
  return worst;
}
}  // namespace

TEST_CASE("PNG and JPEG files decode to RGB", "[images]") {
  const auto im = pattern(37, 21);
  const auto png = scratch() / "p.png";
  io::write_png(png, im.rgb.data(), im.width, im.height);
  const auto back = data::load_image(png);
  REQUIRE(back.width == 37);
  REQUIRE(back.height == 21);
  REQUIRE(back.rgb == im.rgb);
  const auto jpeg = data::load_image(write_file("j.jpg", encode_jpeg(im)));
  REQUIRE(jpeg.width == 37);
  REQUIRE(jpeg.height == 21);
  REQUIRE(max_difference(jpeg, im) <= 8);  // quality 100 with 4:2:0 chroma subsampling
}

TEST_CASE("EXIF orientation is honoured", "[images][exif]") {
  const auto im = pattern(30, 20);
  const auto upright = data::load_image(write_file("o1.jpg", encode_jpeg(im)));
  for (int orientation = 1; orientation <= 8; ++orientation) {
    INFO("orientation " << orientation);
    const auto turned = data::load_image(write_file("o.jpg", with_orientation(encode_jpeg(im), orientation)));
    const bool swapped = orientation >= 5;
    REQUIRE(turned.width == (swapped ? 20 : 30));
    REQUIRE(turned.height == (swapped ? 30 : 20));
    REQUIRE(turned.rgb == data::image_detail::orient(upright, orientation).rgb);
  }
  // orientation 6 (the camera turned clockwise): the stored top-left pixel ends at the top right
  const auto six = data::image_detail::orient(im, 6);
  REQUIRE(std::equal(im.rgb.begin(), im.rgb.begin() + 3, six.rgb.begin() + (six.width - 1) * 3));
}

TEST_CASE("corrupt, truncated and non-image files are refused with the file's name", "[images][errors]") {
  auto bytes = encode_jpeg(pattern(40, 40));
  bytes.resize(bytes.size() / 2);
  REQUIRE_THROWS_WITH(data::load_image(write_file("truncated.jpg", bytes)), Catch::Contains("truncated.jpg") && Catch::Contains("truncated JPEG"));
  REQUIRE_THROWS_WITH(data::load_image(write_file("text.png", {'h', 'e', 'l', 'l', 'o'})), Catch::Contains("text.png: not a JPEG or PNG"));
  REQUIRE_THROWS_WITH(data::load_image(scratch() / "none.jpg"), Catch::Contains("none.jpg: cannot open"));
}

TEST_CASE("preprocessing: shorter side to the resolution, crop, [-1, 1], channels first", "[images][preprocess]") {
  data::Image flat{64, 32, std::vector<std::uint8_t>(64 * 32 * 3, 255)};
  const auto white = data::preprocess(flat, 16);
  REQUIRE(white.size() == 3 * 16 * 16);
  for (float v : white) REQUIRE(v == 1.0f);
  // left half black, right half white, 2:1: the centre crop of the 32x16 resize holds columns 8..23, black then white
  data::Image halves{64, 32, std::vector<std::uint8_t>(64 * 32 * 3, 0)};
  for (std::int64_t y = 0; y < 32; ++y)
    for (std::int64_t x = 32; x < 64; ++x) std::fill_n(halves.rgb.data() + (y * 64 + x) * 3, 3, std::uint8_t{255});
  const auto centred = data::preprocess(halves, 16);
  REQUIRE(centred[0] == -1.0f);                                // channel 0, row 0, column 0: black
  REQUIRE(centred[15] == 1.0f);                                // column 15: white
  const auto left = data::preprocess(halves, 16, false, 0.0);  // a random crop at the far left: black up to the edge's blur
  for (std::int64_t c = 0; c < 3; ++c)
    for (std::int64_t y = 0; y < 16; ++y)
      for (std::int64_t x = 0; x < 14; ++x) REQUIRE(left[static_cast<std::size_t>((c * 16 + y) * 16 + x)] == -1.0f);
  REQUIRE(left[15] > -1.0f);  // column 15 samples the white half through the antialiasing filter
  // a smooth ramp stays monotonic through the antialiased resize
  const auto ramp = data::preprocess(pattern(300, 100), 32);
  for (int x = 1; x < 32; ++x) REQUIRE(ramp[static_cast<std::size_t>(x)] >= ramp[static_cast<std::size_t>(x - 1)]);
}

namespace {
std::size_t differing(const std::vector<float>& ours, const std::vector<float>& theirs) {
  REQUIRE(ours.size() == theirs.size());
  std::size_t n = 0;
  for (std::size_t i = 0; i < ours.size(); ++i) n += ours[i] != theirs[i];
  return n;
}
}  // namespace

TEST_CASE("preprocessing equals diffusers' (Pillow + torchvision) on every fixture photo, value for value", "[images][preprocess][reference]") {
  // tests/data/images by tools/reference/make_image_fixtures.py: odd sizes, both orientations, centre-crop slacks of
  // 1 mod 4, upscaling, EXIF orientations 1-8, grey, grey + alpha, palette, RGBA, 16-bit, CMYK, junk before a marker
  const fs::path dir = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "images";
  const auto manifest = io::read_json(dir / "manifest.json", "test");
  const io::SafetensorsFile expected(dir / "expected.safetensors");
  std::size_t compared = 0, refused = 0, random_crops = 0;
  for (const auto& [name, entry] : manifest.at("files").items()) {
    INFO(name);
    const auto R = entry.at("resolution").get<std::int64_t>();
    if (entry.contains("error")) {  // what Pillow refuses stays an error here
      REQUIRE_THROWS_WITH(data::load_image(dir / name), Catch::Contains(name));
      ++refused;
      continue;
    }
    const auto image = data::load_image(dir / name);
    CHECK(differing(data::preprocess(image, R), expected.read_f32(entry.at("center").get<std::string>())) == 0);
    ++compared;
    if (entry.contains("random"))
      for (const auto& crop : entry.at("random")) {
        const data::CropAt at{crop.at("top").get<std::int64_t>(), crop.at("left").get<std::int64_t>()};
        CHECK(differing(data::preprocess(image, R, false, 0.5, at), expected.read_f32(crop.at("tensor").get<std::string>())) == 0);
        ++random_crops;
      }
  }
  REQUIRE(compared == 50);
  REQUIRE(refused == 1);
  REQUIRE(random_crops > 0);
}

TEST_CASE("centre crops sit where torchvision puts them: Python's round, half to even", "[images][preprocess]") {
  // slack 5: 2.5 rounds to 2 (half away from zero would give 3); slack 3: 1.5 rounds to 2; slack 1: 0.5 rounds to 0
  REQUIRE(data::crop_offset(5, true, 0) == 2);
  REQUIRE(data::crop_offset(3, true, 0) == 2);
  REQUIRE(data::crop_offset(1, true, 0) == 0);
  REQUIRE(data::crop_offset(4, true, 0) == 2);
  REQUIRE(data::crop_offset(0, true, 0) == 0);
  REQUIRE(data::crop_offset(1021, true, 0) == 510);  // e.g. 4032x3024 at 768: 1024 - 768 ... any slack 1 mod 4
}

TEST_CASE("random crops draw every offset in [0, slack] equally often, as RandomCrop does", "[images][preprocess]") {
  // the dataset's draws (rng::uniform(seed, 1, draw)) over 60000 crops: a chi-square test against the uniform
  // distribution on slack + 1 offsets; rounding slack * u instead would make the two edges half as likely (chi-square
  // in the thousands)
  for (const std::int64_t slack : {1, 5, 12}) {
    INFO("slack " << slack);
    std::vector<double> counts(static_cast<std::size_t>(slack + 1));
    constexpr int kDraws = 60000;
    for (std::uint64_t draw = 0; draw < kDraws; ++draw) {
      const auto offset = data::crop_offset(slack, false, rng::uniform(17, 1, draw));
      REQUIRE(offset >= 0);
      REQUIRE(offset <= slack);
      counts[static_cast<std::size_t>(offset)] += 1;
    }
    const double expected = static_cast<double>(kDraws) / static_cast<double>(slack + 1);
    double chi2 = 0;
    for (double c : counts) chi2 += (c - expected) * (c - expected) / expected;
    INFO("chi-square " << chi2 << " with " << slack << " degrees of freedom");
    REQUIRE(chi2 < 10.0 + 3.0 * static_cast<double>(slack));  // far above the 99.99th percentile for these degrees of freedom
  }
  REQUIRE(data::crop_offset(0, false, 0.99) == 0);
  REQUIRE(data::crop_offset(3, false, 0.0) == 0);
  REQUIRE(data::crop_offset(3, false, 0.9999) == 3);
}

TEST_CASE("an interlaced (Adam7) PNG decodes to the same pixels as a plain one", "[images][png]") {
  const auto im = pattern(23, 17);
  const auto path = scratch() / "interlaced.png";
  std::FILE* file = std::fopen(path.c_str(), "wb");
  REQUIRE(file);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, file);
  png_set_IHDR(png, info, 23, 17, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_ADAM7, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  std::vector<png_bytep> rows(17);
  for (std::size_t y = 0; y < rows.size(); ++y) rows[y] = const_cast<png_bytep>(im.rgb.data() + y * 23 * 3);
  png_set_rows(png, info, rows.data());
  png_write_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(file);
  const auto back = data::load_image(path);
  REQUIRE(back.width == 23);
  REQUIRE(back.height == 17);
  REQUIRE(back.rgb == im.rgb);
}

TEST_CASE("a JPEG warning Pillow tolerates is tolerated and reported once, naming the file", "[images][jpeg]") {
  // a copy under a name of its own: another test may have reported the fixture's file in this process already
  const auto file = scratch() / "junk-before-marker-copy.jpg";
  fs::copy_file(fs::path(DREAMBOOTH_TEST_DATA_DIR) / "images" / "junk-before-marker.jpg", file, fs::copy_options::overwrite_existing);
  const auto log = scratch() / "stderr.txt";
  std::fflush(stderr);
  const int saved = ::dup(2);
  std::FILE* capture = std::fopen(log.c_str(), "w");
  REQUIRE(capture);
  ::dup2(::fileno(capture), 2);
  const auto first = data::load_image(file), second = data::load_image(file);
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::fclose(capture);
  REQUIRE(first.rgb == second.rgb);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  INFO(text);
  REQUIRE(text.find("junk-before-marker-copy.jpg") != std::string::npos);
  REQUIRE(text.find("extraneous bytes before marker") != std::string::npos);  // libjpeg's warning, kept
  REQUIRE(text.find("JPEG warning") == text.rfind("JPEG warning"));           // once
}
