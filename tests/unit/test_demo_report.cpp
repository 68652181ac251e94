// The demo's measurement (eval/): object masks and colour histograms on the demo's own subject pictures, the distances,
// the figures of a demo folder built from recoloured pictures, and the report's PNGs (data/canvas.hpp).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "dreambooth/data/canvas.hpp"
#include "dreambooth/data/demo_images.hpp"
#include "dreambooth/eval/colour_histogram.hpp"
#include "dreambooth/eval/demo_report.hpp"
#include "dreambooth/eval/loss_plot.hpp"
#include "scratch.hpp"

using namespace dreambooth;

namespace {

constexpr int kSize = 64;

// The subject picture k with its colour channels permuted: the same layout, other colours.
std::vector<std::uint8_t> recoloured(int k, int permutation) {
  auto rgb = data::demo_subject_image(k, kSize);
  for (std::size_t i = 0; i < rgb.size(); i += 3) {
    const std::uint8_t r = rgb[i], g = rgb[i + 1], b = rgb[i + 2];
    if (permutation == 1) rgb[i] = b, rgb[i + 1] = g, rgb[i + 2] = r;  // orange -> blue
    if (permutation == 2) rgb[i] = g, rgb[i + 1] = b, rgb[i + 2] = r;  // orange -> a green / purple
  }
  return rgb;
}

void write(const std::filesystem::path& path, const std::vector<std::uint8_t>& rgb) {
  std::filesystem::create_directories(path.parent_path());
  io::write_png(path, rgb.data(), kSize, kSize);
}

}  // namespace

TEST_CASE("object_mask finds the subject's ball and nothing on a plain floor", "[eval]") {
  const auto rgb = data::demo_subject_image(0, kSize);
  const auto mask = eval::object_mask(rgb.data(), kSize, kSize);
  double covered = 0;
  for (const auto m : mask) covered += m;
  covered /= static_cast<double>(mask.size());
  // the ball's radius is 0.2 .. 0.3 of the side: between pi 0.2^2 = 12.6 % and pi 0.3^2 = 28.3 % of the picture
  CHECK(covered > 0.10);
  CHECK(covered < 0.30);
  // the picture's corners (floor and wall) are not the object
  CHECK(mask[0] == 0);
  CHECK(mask[mask.size() - 1] == 0);

  std::vector<std::uint8_t> plain(static_cast<std::size_t>(kSize * kSize * 3));
  for (int y = 0; y < kSize; ++y)  // a wall over a floor, shaded toward the bottom: no object
    for (int x = 0; x < kSize; ++x)
      for (int c = 0; c < 3; ++c) plain[static_cast<std::size_t>((y * kSize + x) * 3 + c)] = static_cast<std::uint8_t>(y < 20 ? 220 : 150 - y);
  const auto none = eval::object_mask(plain.data(), kSize, kSize);
  CHECK(std::count(none.begin(), none.end(), 1) == 0);
  // with no object, the histogram is the whole picture's
  const auto h = eval::object_colours(plain.data(), kSize, kSize);
  double sum = 0;
  for (const double v : h) sum += v;
  CHECK(sum == Approx(1.0));
}

TEST_CASE("the subject's object colours are mostly its orange", "[eval]") {
  const auto rgb = data::demo_subject_image(1, kSize);
  const auto h = eval::object_colours(rgb.data(), kSize, kSize);
  const std::uint8_t orange[3] = {235, 120, 30};
  const std::uint8_t darker[3] = {180, 90, 20};  // the ball's shaded side
  const double share = h[static_cast<std::size_t>(eval::colour_bin(orange))] + h[static_cast<std::size_t>(eval::colour_bin(darker))];
  CHECK(share > 0.5);
}

TEST_CASE("total variation distance and the set statistics", "[eval]") {
  eval::ColourHistogram a{}, b{}, c{};
  a[0] = 1;
  b[1] = 1;
  c[0] = 0.5, c[1] = 0.5;
  CHECK(eval::total_variation(a, a) == 0);
  CHECK(eval::total_variation(a, b) == Approx(1));
  CHECK(eval::total_variation(a, c) == Approx(0.5));
  CHECK(eval::mean_histogram({a, b})[0] == Approx(0.5));
  CHECK(eval::mean_distance_to({a, b}, c) == Approx(0.5));
  CHECK(eval::mean_pairwise_distance({a, b, c}) == Approx((1 + 0.5 + 0.5) / 3));
  CHECK_THROWS_WITH(eval::mean_pairwise_distance({a}), Catch::Contains("two histograms"));
}

TEST_CASE("measure_demo: samples like the subject score close, recoloured ones far, and the report's PNGs", "[eval]") {
  const auto root = test::scratch_folder("demo-report");
  std::filesystem::remove_all(root);
  for (int k = 0; k < 4; ++k) write(root / "instance" / ("subject-0" + std::to_string(k) + ".png"), data::demo_subject_image(k, kSize));
  for (int k = 0; k < 3; ++k) {
    // base: neither prompt gives the subject's colours; prior: the subject learned, the class kept;
    // no-prior: the subject learned and the class turned into the subject
    write(root / "samples/base" / ("subject-" + std::to_string(k) + ".png"), recoloured(k + 4, 1 + k % 2));
    write(root / "samples/base" / ("class-" + std::to_string(k) + ".png"), recoloured(k + 8, 1 + k % 2));
    write(root / "samples/prior" / ("subject-" + std::to_string(k) + ".png"), recoloured(k + 4, 0));
    write(root / "samples/prior" / ("class-" + std::to_string(k) + ".png"), recoloured(k + 8, 1 + k % 2));
    write(root / "samples/no-prior" / ("subject-" + std::to_string(k) + ".png"), recoloured(k + 4, 0));
    write(root / "samples/no-prior" / ("class-" + std::to_string(k) + ".png"), recoloured(k + 8, 0));
  }
  const auto pictures = eval::read_demo_pictures(root);
  const auto f = eval::measure_demo(pictures);
  CHECK(f.instance_images == 4);
  CHECK(f.samples_per_prompt == 3);
  REQUIRE(f.no_prior);
  CHECK(f.base.subject_distance > 0.7);
  CHECK(f.prior.subject_distance < 0.3);
  CHECK(f.fidelity_gain(f.prior) > 0.4);
  CHECK(f.class_drift(f.prior) == Approx(0).margin(1e-12));  // the same class pictures as the base's
  CHECK(f.class_drift(*f.no_prior) > 0.4);
  CHECK(f.no_prior->class_variety < f.base.class_variety);
  const auto j = eval::to_json(f);
  CHECK(j["fidelity_gain"]["with_prior"].get<double>() == Approx(f.fidelity_gain(f.prior)));
  CHECK(j["class_drift"]["without_prior"].get<double>() == Approx(f.class_drift(*f.no_prior)));

  eval::write_demo_grid(root / "grid.png", pictures, "a photo of sks ball", "a photo of a ball", 3, 1);
  const auto grid = io::read_png(root / "grid.png");
  CHECK(grid.width > 3 * kSize);
  CHECK(grid.height > 7 * kSize);  // 7 rows of pictures and two headings

  std::ofstream(root / "metrics.jsonl") << "{\"step\": 1, \"loss\": 0.5}\n{\"step\": 2, \"loss\": 0.25}\n{\"step\": 3, \"loss\": 0.3}\n";
  const auto curve = eval::read_loss_curve(root / "metrics.jsonl", "RUN", {200, 0, 0});
  CHECK(curve.steps == std::vector<long>{1, 2, 3});
  CHECK(eval::moving_average(curve.losses, 2)[2] == Approx(0.275));
  eval::write_loss_plot(root / "loss.png", {curve}, "LOSS");
  const auto plot = io::read_png(root / "loss.png");
  std::size_t red = 0;  // the curve's pixels
  for (std::size_t i = 0; i < plot.pixels.size(); i += 3) red += plot.pixels[i] == 200 && plot.pixels[i + 1] == 0 && plot.pixels[i + 2] == 0;
  CHECK(red > 100);
  std::ofstream(root / "bad.jsonl") << "{\"step\": 1}\n";
  CHECK_THROWS_WITH(eval::read_loss_curve(root / "bad.jsonl", "RUN", {}), Catch::Contains("bad.jsonl line 1"));
  std::filesystem::remove_all(root / "samples/base");
  CHECK_THROWS_WITH(eval::read_demo_pictures(root), Catch::Contains("samples/base"));
}

TEST_CASE("Canvas draws text, lines and pasted pictures where asked", "[eval]") {
  data::Canvas canvas(40, 20, {255, 255, 255});
  canvas.text(1, 1, "A1", {0, 0, 0});
  // 'A' has ink at its top row's middle and none at its top-left corner
  CHECK(canvas.at(1 + 2, 1).r == 0);
  CHECK(canvas.at(1, 1).r == 255);
  CHECK(data::Canvas::text_width("A1") == 11);
  canvas.line(0, 15, 39, 15, {255, 0, 0});
  for (int x = 0; x < 40; ++x) CHECK(canvas.at(x, 15).g == 0);
  const std::uint8_t pixel[3] = {1, 2, 3};
  canvas.paste(pixel, 1, 1, 38, 18, 2);  // a 2x2 block, clipped at the corner
  CHECK(canvas.at(39, 19).b == 3);
  canvas.set(100, 100, {0, 0, 0});  // outside: nothing
}
