// The text-to-image pipeline against diffusers' StableDiffusionPipeline on a tiny pipeline (fixture from
// tools/reference/make_pipeline_fixtures.py): for every scheduler the timesteps, the final latents (relative L2 <= 1e-4)
// and the decoded 8-bit image (within one level per pixel), from the same initial latents (and, for Euler ancestral, the
// same injected Philox noise).
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"
#include "pipeline_checks.hpp"
#include "reference.hpp"

using namespace dreambooth;
using dreambooth::testing::relative_l2;
namespace fs = std::filesystem;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "pipeline";
}

TEST_CASE("every scheduler's timesteps, final latents and image equal diffusers", "[pipeline][reference]") {
  CpuBackend b;
  const io::SafetensorsFile fixture(kData / "fixture.safetensors");
  auto pipe = pipeline::TextToImagePipeline<CpuBackend>::from_pretrained(b, kData / "model");
  for (const std::string scheduler : {"pndm", "ddim", "euler", "euler_a", "dpm++2m"}) {
    INFO("scheduler " << scheduler);
    const auto r = pipe.generate(test::fixture_generation_options(fixture, scheduler));
    const auto expected_t = fixture.read_f32("timesteps." + scheduler);
    REQUIRE(r.timesteps.size() == expected_t.size());
    for (std::size_t i = 0; i < expected_t.size(); ++i) REQUIRE(r.timesteps[i] == Approx(expected_t[i]).margin(1e-3));
    const double e = relative_l2(r.latents, fixture.read_f32("latents." + scheduler));
    INFO("final latents relative L2 " << e);
    CHECK(e <= 1e-4);
    const auto u8 = fixture.read_f32("image_u8." + scheduler);
    REQUIRE(u8.size() == r.pixels.size());
    int worst = 0;
    for (std::size_t i = 0; i < u8.size(); ++i) worst = std::max(worst, std::abs(static_cast<int>(r.pixels[i]) - static_cast<int>(u8[i])));
    INFO("largest 8-bit difference " << worst);
    CHECK(worst <= 1);
    WARN(scheduler << ": " << r.timesteps.size() << " UNet calls, final latents relative L2 " << e << ", largest pixel difference " << worst);
  }
}

TEST_CASE("timesteps equal diffusers' for every scheduler, spacing and step count", "[pipeline][schedulers]") {
  const io::SafetensorsFile fixture(kData / "fixture.safetensors");
  const auto base = schedulers::SchedulerConfig::from_file(kData / "model" / "scheduler" / "scheduler_config.json");
  std::size_t compared = 0;
  for (const std::string name : {"pndm", "ddim", "euler", "euler_a", "dpm++2m"})
    for (const std::string spacing : {"leading", "trailing", "linspace"})
      for (int steps : {7, 25, 50}) {
        INFO(name << ", " << spacing << ", " << steps << " steps");
        auto config = base;
        config.timestep_spacing = spacing;
        auto scheduler = schedulers::make_scheduler(name, config);
        scheduler->set_timesteps(steps);
        const auto expected = fixture.read_f32("schedule." + name + "." + spacing + "." + std::to_string(steps));
        REQUIRE(scheduler->timesteps().size() == expected.size());
        for (std::size_t i = 0; i < expected.size(); ++i) REQUIRE(scheduler->timesteps()[i] == Approx(expected[i]).margin(1e-3));
        ++compared;
      }
  REQUIRE(compared == 45);
}

TEST_CASE("a single-file checkpoint generates the same image as the diffusers folder", "[pipeline][single_file]") {
  CpuBackend b;
  auto folder = pipeline::TextToImagePipeline<CpuBackend>::from_pretrained(b, kData / "model");
  auto file = pipeline::TextToImagePipeline<CpuBackend>::from_single_file(
      b, kData / "single_file.safetensors", kData / "model" / "tokenizer", models::UNetConfig::from_file(kData / "model" / "unet" / "config.json"),
      models::CLIPTextConfig::from_file(kData / "model" / "text_encoder" / "config.json"),
      models::VAEConfig::from_file(kData / "model" / "vae" / "config.json"));
  file.scheduler_config = folder.scheduler_config;
  pipeline::GenerationOptions o;
  o.prompt = "a photo of sks dog";
  o.width = o.height = 32;
  o.steps = 4;
  o.seed = 9;
  REQUIRE(file.generate(o).pixels == folder.generate(o).pixels);
}

TEST_CASE("generate refuses bad settings before producing anything", "[pipeline][errors]") {
  CpuBackend b;
  auto pipe = pipeline::TextToImagePipeline<CpuBackend>::from_pretrained(b, kData / "model");
  pipeline::GenerationOptions o;
  o.prompt = "a dog";
  o.width = o.height = 32;
  o.steps = 0;
  REQUIRE_THROWS_WITH(pipe.generate(o), Catch::Contains("steps must be positive"));
  o.steps = 2;
  o.width = 36;
  REQUIRE_THROWS_WITH(pipe.generate(o), Catch::Contains("multiples of 8"));
  o.width = 32;
  o.scheduler = "heun";
  REQUIRE_THROWS_WITH(pipe.generate(o), Catch::Contains("unknown scheduler \"heun\""));
  REQUIRE_THROWS_WITH(pipeline::TextToImagePipeline<CpuBackend>::from_pretrained(b, kData / "nowhere"), Catch::Contains("nowhere"));
}
