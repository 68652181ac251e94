// CLIPTextModel against transformers (fixtures from tools/reference/make_clip_vae_fixtures.py, float64 reference):
// last_hidden_state, every layer's hidden state, every parameter gradient; the single-file layout; the full size.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "reference.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using Model = models::CLIPTextModel<CpuBackend>;
using dreambooth::testing::relative_l2;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "clip";

std::vector<std::int32_t> ids_of(const io::SafetensorsFile& fixture) {
  const auto f = fixture.read_f32("input.ids");
  return {f.begin(), f.end()};
}

void check(const std::string& config) {
  INFO("configuration " << config);
  CpuBackend b;
  const io::SafetensorsFile fixture(kData / config / "fixture.safetensors");
  auto model = io::load_clip_text(b, kData / config / "text_encoder");
  const auto& shape = fixture.info("input.ids").shape;
  Model::Activations a;
  const auto out = model->forward(b, ids_of(fixture), shape[0], shape[1], a);
  // Thresholds as for the UNet: float32 against a float64 reference, 1e-5 forward, 1e-4 gradients.
  const double e = relative_l2(out.to_host(), fixture.read_f32("last_hidden_state"));
  INFO("last_hidden_state relative L2 " << e);
  CHECK(e <= 1e-5);
  for (std::size_t i = 0; i < a.hidden.size(); ++i) {
    const double h = relative_l2(a.hidden[i].to_host(), fixture.read_f32("hidden_state." + std::to_string(i)));
    INFO("hidden_state " << i << " relative L2 " << h);
    CHECK(h <= 1e-5);
  }
  model->zero_grad();
  model->backward(b, Tensor<CpuBackend>::from_host(b, out.shape(), fixture.read_f32("R")), a);
  dreambooth::testing::GradientComparison grads(fixture, 1e-4);
  model->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { grads.check(name, p.grad.to_host(), fixture.read_f32("grad." + name)); });
  WARN(config << ": last_hidden_state relative L2 " << e << "; " << grads.summary());

  // The single-file layout gives identical outputs.
  auto from_file = io::load_clip_text(b, kData / config / "single_file.safetensors",
                                      models::CLIPTextConfig::from_file(kData / config / "text_encoder" / "config.json"));
  Model::Activations a2;
  REQUIRE(from_file->forward(b, ids_of(fixture), shape[0], shape[1], a2).to_host() == out.to_host());
}
}  // namespace

TEST_CASE("CLIP text encoder equals transformers: diffusers' tiny test encoder (quick_gelu)", "[clip][reference]") { check("tiny"); }
TEST_CASE("CLIP text encoder equals transformers: 5 layers with exact gelu", "[clip][reference]") { check("gelu"); }

TEST_CASE("CLIP ViT-L/14 text encoder has 123,060,480 parameters", "[clip]") {
  Model model(models::CLIPTextConfig::vit_l14());
  REQUIRE(model.parameter_count() == 123060480);
}

TEST_CASE("CLIP text encoder refuses ids outside the vocabulary and weights that do not fit", "[clip][errors]") {
  CpuBackend b;
  auto model = io::load_clip_text(b, kData / "tiny" / "text_encoder");
  Model::Activations a;
  std::vector<std::int32_t> ids(77, 5);
  ids[3] = 1000;
  REQUIRE_THROWS_WITH(model->forward(b, ids, 1, 77, a), Catch::Contains("token id 1000 at position 3"));
  REQUIRE_THROWS_WITH(io::load_clip_text(b, kData / "tiny" / "single_file.safetensors"),
                      Catch::Contains("single_file.safetensors") && Catch::Contains("has shape [1000, 8]; the model expects [49408, 768]"));
}
