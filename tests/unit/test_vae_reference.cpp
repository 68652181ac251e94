// AutoencoderKL against diffusers (fixtures from tools/reference/make_clip_vae_fixtures.py, float64 reference):
// encoder moments [mean, logvar], decoder output; the single-file layout; the full size; sampling.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/vae_loading.hpp"
#include "reference.hpp"

using namespace dreambooth;
using dreambooth::testing::relative_l2;
namespace fs = std::filesystem;
using VAE = models::AutoencoderKL<CpuBackend>;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "vae";

struct Outputs {
  std::vector<float> moments, decoded;
};

Outputs run(CpuBackend& b, const VAE& vae, const io::SafetensorsFile& fixture) {
  const auto image = Tensor<CpuBackend>::from_host(b, fixture.info("input.image").shape, fixture.read_f32("input.image"));
  const auto latents = Tensor<CpuBackend>::from_host(b, fixture.info("input.latents").shape, fixture.read_f32("input.latents"));
  return {vae.encode(b, image).to_host(), vae.decode(b, latents).to_host()};
}

void check(const std::string& config) {
  INFO("configuration " << config);
  CpuBackend b;
  const io::SafetensorsFile fixture(kData / config / "fixture.safetensors");
  auto vae = io::load_vae(b, kData / config / "vae");
  const auto out = run(b, *vae, fixture);
  const double encode_error = relative_l2(out.moments, fixture.read_f32("encoder.moments"));
  const double decode_error = relative_l2(out.decoded, fixture.read_f32("decoder.output"));
  INFO("encoder moments relative L2 " << encode_error << ", decoder output relative L2 " << decode_error);
  CHECK(encode_error <= 1e-5);  // float32 against a float64 reference
  CHECK(decode_error <= 1e-5);
  WARN(config << ": encoder moments relative L2 " << encode_error << ", decoder output relative L2 " << decode_error);
  if (fs::exists(kData / config / "single_file.safetensors")) {
    auto from_file =
        io::load_vae(b, kData / config / "single_file.safetensors", models::VAEConfig::from_file(kData / config / "vae" / "config.json"));
    const auto again = run(b, *from_file, fixture);
    REQUIRE(again.moments == out.moments);
    REQUIRE(again.decoded == out.decoded);
  }
}
}  // namespace

TEST_CASE("VAE equals diffusers: diffusers' tiny test VAE (and its single-file layout)", "[vae][reference]") { check("tiny"); }
TEST_CASE("VAE equals diffusers: SD's 4-level layout, non-square", "[vae][reference]") { check("sd_layout"); }

TEST_CASE("the SD VAE has 83,653,863 parameters", "[vae]") {
  VAE vae(models::VAEConfig::sd());
  REQUIRE(vae.parameter_count() == 83653863);
}

TEST_CASE("VAE sampling: mean + exp(logvar / 2) * eps with the backend's counter-based noise", "[vae]") {
  CpuBackend b;
  auto vae = io::load_vae(b, kData / "tiny" / "vae");
  // moments [1, 8, 1, 2]: mean = 1, 2, ..., logvar = 0 or log 4
  std::vector<float> m = {1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, std::log(4.0f), std::log(4.0f)};
  const auto moments = Tensor<CpuBackend>::from_host(b, {1, 8, 1, 2}, m);
  const auto z = vae->sample(b, moments, 77, 3).to_host();
  for (std::size_t i = 0; i < 8; ++i) {
    const float std = i >= 6 ? 2.0f : 1.0f;
    REQUIRE(z[i] == Approx(m[i] + std * rng::normal(77, 3, i)).epsilon(1e-6));
  }
  REQUIRE(vae->sample(b, moments, 77, 3).to_host() == z);  // reproducible
  REQUIRE(vae->sample(b, moments, 77, 4).to_host() != z);  // a new offset, new noise
}

TEST_CASE("VAE refuses images of the wrong size and weights that do not fit", "[vae][errors]") {
  CpuBackend b;
  auto vae = io::load_vae(b, kData / "tiny" / "vae");
  const auto odd = Tensor<CpuBackend>::zeros(b, {1, 3, 31, 32});
  REQUIRE_THROWS_WITH(vae->encode(b, odd), Catch::Contains("31x32 must be a multiple of 2"));
  REQUIRE_THROWS_WITH(io::load_vae(b, kData / "tiny" / "single_file.safetensors"),
                      Catch::Contains("single_file.safetensors") && Catch::Contains("the model expects [128, 3, 3, 3]"));
}
