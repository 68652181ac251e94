// Image decoding (PNG, JPEG with EXIF orientation) and DreamBooth's preprocessing.
#include <cstddef>
#include <cstdio>
// jpeglib.h needs size_t and FILE declared first
#include <jpeglib.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "dreambooth/core/rng.hpp"
#include "dreambooth/data/image.hpp"
#include "dreambooth/io/json.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "scratch.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;

namespace {
fs::path scratch() { return test::scratch_folder("images"); }

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

// ---- malformed and oversized files ----------------------------------------------------------------------------------

// AddressSanitizer's operator new ends the process when memory runs out instead of throwing std::bad_alloc (whatever
// allocator_may_return_null says): the test of that error runs in the regular build only.
#if defined(__SANITIZE_ADDRESS__)
#define DREAMBOOTH_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DREAMBOOTH_TEST_ASAN 1
#endif
#endif

namespace {
void put32(std::uint8_t* at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) at[i] = static_cast<std::uint8_t>(v >> (24 - 8 * i));
}

// One PNG chunk: length, type, data, CRC-32 of type and data (sized up front: GCC 12 misreads push_back here, PR 106199).
std::vector<std::uint8_t> png_chunk(const std::string& type, const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> out(12 + data.size());
  put32(out.data(), static_cast<std::uint32_t>(data.size()));
  std::copy_n(type.data(), 4, out.data() + 4);
  std::copy(data.begin(), data.end(), out.begin() + 8);
  put32(out.data() + 8 + data.size(), static_cast<std::uint32_t>(::crc32(0, out.data() + 4, static_cast<uInt>(4 + data.size()))));
  return out;
}

// A PNG whose IHDR claims width x height 8-bit RGB pixels, followed by a tiny IDAT (one row's worth of data) and IEND.
std::vector<std::uint8_t> png_claiming(std::uint32_t width, std::uint32_t height) {
  std::vector<std::uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> ihdr(13, 0);
  put32(ihdr.data(), width);
  put32(ihdr.data() + 4, height);
  ihdr[8] = 8, ihdr[9] = 2;  // 8-bit RGB; deflate, adaptive filtering, not interlaced
  const std::uint8_t row[] = {0, 1, 2, 3, 4, 5, 6};
  std::vector<std::uint8_t> idat(64);
  uLongf size = idat.size();
  REQUIRE(::compress(idat.data(), &size, row, sizeof row) == Z_OK);
  idat.resize(size);
  for (const auto& chunk : {png_chunk("IHDR", ihdr), png_chunk("IDAT", idat), png_chunk("IEND", {})})
    out.insert(out.end(), chunk.begin(), chunk.end());
  return out;
}

// A JPEG whose SOF0 claims width x height (the scan data stays that of the small image it was).
std::vector<std::uint8_t> jpeg_claiming(std::vector<std::uint8_t> jpeg, unsigned width, unsigned height) {
  for (std::size_t i = 2; i + 9 < jpeg.size();) {
    REQUIRE(jpeg[i] == 0xFF);
    if (jpeg[i + 1] == 0xC0) {
      jpeg[i + 5] = static_cast<std::uint8_t>(height >> 8), jpeg[i + 6] = static_cast<std::uint8_t>(height);
      jpeg[i + 7] = static_cast<std::uint8_t>(width >> 8), jpeg[i + 8] = static_cast<std::uint8_t>(width);
      return jpeg;
    }
    i += 2 + (std::size_t{jpeg[i + 2]} << 8 | jpeg[i + 3]);
  }
  FAIL("no SOF0 marker");
  return jpeg;
}

// A PNG of the given format encoded by libpng in memory; samples are [height, width, channels] big-endian values.
std::vector<std::uint8_t> encode_png(const std::vector<std::uint8_t>& samples, std::uint32_t width, std::uint32_t height, int bit_depth,
                                     int colour_type, int interlace = PNG_INTERLACE_NONE) {
  std::vector<std::uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, png_size_t n) {
        auto* v = static_cast<std::vector<std::uint8_t>*>(png_get_io_ptr(p));
        v->insert(v->end(), data, data + n);
      },
      [](png_structp) {});
  png_set_IHDR(png, info, width, height, bit_depth, colour_type, interlace, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  const std::size_t row_bytes = samples.size() / height;
  std::vector<png_bytep> rows(height);
  for (std::size_t y = 0; y < rows.size(); ++y) rows[y] = const_cast<png_bytep>(samples.data() + y * row_bytes);
  png_set_rows(png, info, rows.data());
  png_write_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// Where the data of the first IDAT chunk starts, and its length.
std::pair<std::size_t, std::size_t> first_idat(const std::vector<std::uint8_t>& png) {
  for (std::size_t i = 8; i + 8 <= png.size();) {
    const std::size_t length = std::size_t{png[i]} << 24 | std::size_t{png[i + 1]} << 16 | std::size_t{png[i + 2]} << 8 | png[i + 3];
    if (std::equal(png.begin() + static_cast<std::ptrdiff_t>(i + 4), png.begin() + static_cast<std::ptrdiff_t>(i + 8), "IDAT"))
      return {i + 8, length};
    i += 12 + length;
  }
  FAIL("no IDAT chunk");
  return {};
}

std::vector<std::uint8_t> noise(std::size_t n, std::uint32_t seed) {
  std::vector<std::uint8_t> out(n);
  for (auto& v : out) v = static_cast<std::uint8_t>((seed = seed * 1664525u + 1013904223u) >> 24);
  return out;
}
}  // namespace

TEST_CASE("an image over the pixel limit is refused from its header, naming the file, its size, the limit and the key", "[images][limits]") {
  // Before: a bare std::bad_alloc (30 GB of pixels for the PNG), no file named.
  const auto png = write_file("huge.png", png_claiming(100000, 100000));
  REQUIRE_THROWS_AS(data::load_image(png), Error);
  REQUIRE_THROWS_WITH(data::load_image(png), Catch::Contains("huge.png") && Catch::Contains("100000x100000") && Catch::Contains("64000000") &&
                                                 Catch::Contains("model.data.max_image_pixels"));
  const auto jpeg = write_file("huge.jpg", jpeg_claiming(encode_jpeg(pattern(16, 16)), 65500, 65500));
  REQUIRE_THROWS_AS(data::load_image(jpeg), Error);
  REQUIRE_THROWS_WITH(data::load_image(jpeg), Catch::Contains("huge.jpg") && Catch::Contains("65500x65500") && Catch::Contains("64000000") &&
                                                  Catch::Contains("model.data.max_image_pixels"));
}

TEST_CASE("a corrupt 16-bit PNG is refused with its name, and nothing leaks (run under AddressSanitizer)", "[images][png][errors]") {
  // Before: libpng's longjmp out of png_read_image skipped the destructors of the row buffers (undefined behaviour,
  // a leak that LeakSanitizer reports).
  for (const int colour : {PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_GRAY}) {  // RGB through libpng's strip_16, grey through our own clipping
    const int channels = colour == PNG_COLOR_TYPE_RGB ? 3 : 1;
    const auto good = encode_png(noise(static_cast<std::size_t>(40 * 30 * channels * 2), 7), 40, 30, 16, colour);
    const auto [at, length] = first_idat(good);
    REQUIRE(length > 100);
    INFO("colour type " << colour);
    REQUIRE(data::load_image(write_file("good16.png", good)).width == 40);
    // cut in the middle of the IDAT data
    auto truncated = good;
    truncated.resize(at + length / 2);
    REQUIRE_THROWS_WITH(data::load_image(write_file("truncated16.png", truncated)), Catch::Contains("truncated16.png"));
    // the deflate stream overwritten past its first bytes, the chunk's CRC made to match: a decompression error
    auto garbled = good;
    for (std::size_t i = at + 8; i < at + length; ++i) garbled[i] ^= 0x5A;
    const auto fixed = png_chunk("IDAT", std::vector<std::uint8_t>(garbled.begin() + static_cast<std::ptrdiff_t>(at),
                                                                   garbled.begin() + static_cast<std::ptrdiff_t>(at + length)));
    std::copy(fixed.begin(), fixed.end(), garbled.begin() + static_cast<std::ptrdiff_t>(at - 8));
    REQUIRE_THROWS_WITH(data::load_image(write_file("garbled16.png", garbled)), Catch::Contains("garbled16.png"));
    // the IDAT's CRC wrong
    auto bad_crc = good;
    bad_crc[at + length] ^= 0xFF;
    REQUIRE_THROWS_WITH(data::load_image(write_file("crc16.png", bad_crc)), Catch::Contains("crc16.png"));
  }
}

TEST_CASE("a PNG chunk longer than the file is refused before libpng allocates it", "[images][png][errors]") {
  // found by fuzzing: a 4x4 PNG whose tEXt chunk claims 2113929256 bytes made libpng allocate 2 GB
  const auto bytes = [] {
    std::ifstream in(fs::path(DREAMBOOTH_TEST_DATA_DIR) / ".." / "fuzz" / "corpus" / "fuzz_png" / "found-text-chunk-claims-2GB.png",
                     std::ios::binary);
    return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(in)), {});
  }();
  REQUIRE(bytes.size() == 304);
  REQUIRE_THROWS_WITH(data::load_image(write_file("long-chunk.png", bytes)),
                      Catch::Contains("long-chunk.png") && Catch::Contains("claims 2113929256 bytes"));
}

TEST_CASE("a PNG that cannot be written throws naming the file and leaves no partial file under its name", "[images][png][write]") {
  const auto path = scratch() / "limited.png";
  const auto old = pattern(8, 8);
  io::write_png(path, old.rgb.data(), 8, 8);
  const auto pixels = noise(200 * 200 * 3, 11);  // incompressible: about 120 KB
  // a file size limit (RLIMIT_FSIZE) of 4 KB: write() fails with EFBIG ("File too large") once the file reaches it
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  const auto previous = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = saved;
  small.rlim_cur = 4096;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string message = "no error";
  try {
    io::write_png(path, pixels.data(), 200, 200, {{"parameters", "a photo of sks dog"}, {"Software", "test"}});
  } catch (const std::exception& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous);
  INFO(message);
  REQUIRE(message.find("limited.png") != std::string::npos);
  REQUIRE(message.find(std::strerror(EFBIG)) != std::string::npos);  // why, not only "Write Error"
  REQUIRE(data::load_image(path).rgb == old.rgb);                    // the old file stays whole under the name
  for (const auto& entry : fs::directory_iterator(scratch()))        // and no temporary is left beside it
    REQUIRE(entry.path().filename().string().rfind("limited.png.tmp", 0) == std::string::npos);
}

TEST_CASE("the pixel limit: an image of exactly the limit loads, one pixel over it is refused", "[images][limits]") {
  const auto im = pattern(37, 21);  // 777 pixels
  const auto png = scratch() / "limit.png";
  io::write_png(png, im.rgb.data(), im.width, im.height);
  const auto jpeg = write_file("limit.jpg", encode_jpeg(im));
  const auto turned = write_file("limit-turned.jpg", with_orientation(encode_jpeg(im), 6));  // stored 37x21, shown 21x37
  for (const auto& path : {png, jpeg, turned}) {
    INFO(path.string());
    REQUIRE(data::load_image(path, 777).rgb.size() == 777 * 3);
    REQUIRE(data::load_image(path, 778).rgb.size() == 777 * 3);
    REQUIRE_THROWS_WITH(data::load_image(path, 776), Catch::Contains(path.filename().string()) && Catch::Contains("37x21") &&
                                                         Catch::Contains("776") && Catch::Contains("model.data.max_image_pixels"));
  }
  REQUIRE(io::read_png(png, 777).width == 37);
  REQUIRE_THROWS_WITH(io::read_png(png, 776), Catch::Contains("limit.png") && Catch::Contains("37x21"));
  // the limit reads the header's size: a 16x16 JPEG whose SOF0 claims 300x200 (libjpeg fills the missing data, with a warning)
  const auto claimed = write_file("claims-300x200.jpg", jpeg_claiming(encode_jpeg(pattern(16, 16)), 300, 200));
  REQUIRE_THROWS_WITH(data::load_image(claimed, 59999), Catch::Contains("claims-300x200.jpg") && Catch::Contains("300x200"));
  REQUIRE(data::load_image(claimed, 60000).width == 300);
}

TEST_CASE("a pixel buffer that cannot be allocated is an error saying what, how big and for which file", "[images][limits]") {
#ifdef DREAMBOOTH_TEST_ASAN
  WARN("skipped under AddressSanitizer, whose operator new aborts on an allocation it cannot serve");
#else
  // 10^6 x 10^6 RGB with the pixel limit lifted: 3 * 10^12 bytes, more than any machine here has
  const auto path = write_file("terapixel.png", png_claiming(1000000, 1000000));
  REQUIRE_THROWS_WITH(data::load_image(path, std::numeric_limits<std::int64_t>::max()), Catch::Contains("terapixel.png") &&
                                                                                            Catch::Contains("cannot allocate 3000000000000 bytes") &&
                                                                                            Catch::Contains("decoded pixels"));
#endif
}

TEST_CASE("decode_image decodes bytes in memory as load_image decodes the file", "[images]") {
  const auto im = pattern(19, 13);
  const auto png = scratch() / "memory.png";
  io::write_png(png, im.rgb.data(), im.width, im.height, {{"parameters", "x"}});
  for (const auto& path : {png, write_file("memory.jpg", with_orientation(encode_jpeg(im), 8))}) {
    std::ifstream in(path, std::ios::binary);
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
    const auto from_memory = data::decode_image(bytes, "in-memory", 1000);
    REQUIRE(from_memory.rgb == data::load_image(path).rgb);
    REQUIRE_THROWS_WITH(data::decode_image(bytes, "in-memory", 200), Catch::Contains("in-memory"));
  }
  REQUIRE(io::read_png(png).text.at("parameters") == "x");
  REQUIRE_THROWS_WITH(data::decode_image(std::vector<std::uint8_t>{}, "empty", 1000), Catch::Contains("empty: not a JPEG or PNG"));
}
