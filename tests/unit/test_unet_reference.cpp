// UNet2DConditionModel against diffusers (fixtures from tools/reference/make_unet_fixtures.py, computed in float64):
// output, every parameter gradient and the input gradients; the single-file layout; gradient checkpointing;
// refused checkpoints.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "reference.hpp"

using namespace dreambooth;
using Model = models::UNet2DConditionModel<CpuBackend>;
namespace fs = std::filesystem;
using dreambooth::testing::relative_l2;

namespace {

const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "unet";

struct Run {
  std::vector<float> output;
  std::map<std::string, std::vector<float>> grads;  // parameter gradients, and "input.sample" / "input.encoder_hidden_states"
  std::size_t peak_bytes = 0;
};

Run run_model(CpuBackend& b, Model& model, const io::SafetensorsFile& fixture, bool with_backward = true) {
  const auto& sample_info = fixture.info("input.sample");
  const auto& context_info = fixture.info("input.encoder_hidden_states");
  auto sample = Tensor<CpuBackend>::from_host(b, sample_info.shape, fixture.read_f32("input.sample"));
  auto context = Tensor<CpuBackend>::from_host(b, context_info.shape, fixture.read_f32("input.encoder_hidden_states"));
  const auto timesteps = fixture.read_f32("input.timesteps");
  Run r;
  b.reset_peak();
  const auto base = b.bytes_in_use();
  Model::Activations activations;
  auto out = model.forward(b, sample, timesteps, context, activations);
  r.output = out.to_host();
  if (with_backward) {
    model.zero_grad();
    auto R = Tensor<CpuBackend>::from_host(b, out.shape(), fixture.read_f32("R"));
    auto input_grads = model.backward(b, R, activations);
    r.grads["input.sample"] = input_grads.sample.to_host();
    r.grads["input.encoder_hidden_states"] = input_grads.context.to_host();
    model.visit([&](const std::string& name, nn::Param<CpuBackend>& p) { r.grads[name] = p.grad.to_host(); });
  }
  r.peak_bytes = b.peak_bytes() - base;
  return r;
}

void check_against_fixture(const std::string& config) {
  CpuBackend b;
  INFO("configuration " << config);
  const io::SafetensorsFile fixture(kData / config / "fixture.safetensors");
  auto model = io::load_unet(b, kData / config / "diffusers");
  const auto r = run_model(b, *model, fixture);

  // Thresholds: the reference is float64 rounded to float32; our float32 evaluation differs by rounding in sums over
  // up to a few thousand terms, ~1e-6 relative. Forward 1e-5 and gradients 1e-4 (gradients pass through more
  // reductions, and small-norm gradients, e.g. of biases far from the output, lose relative accuracy first).
  const double forward_error = relative_l2(r.output, fixture.read_f32("output"));
  INFO("output relative L2 " << forward_error);
  CHECK(forward_error <= 1e-5);

  dreambooth::testing::GradientComparison grads(fixture, 1e-4);
  for (const auto& [name, grad] : r.grads) {
    const auto key = name.rfind("input.", 0) == 0 ? "grad_input." + name.substr(6) : "grad." + name;
    REQUIRE(fixture.contains(key));
    grads.check(name, grad, fixture.read_f32(key));
  }
  // every parameter of the fixture was compared (the model visits exactly diffusers' parameters)
  std::size_t fixture_grads = 0;
  for (const auto& [key, info] : fixture.tensors()) fixture_grads += key.rfind("grad", 0) == 0;
  CHECK(grads.checked() == fixture_grads);
  WARN(config << ": output relative L2 " << forward_error << "; " << grads.summary());
}

}  // namespace

TEST_CASE("UNet equals diffusers: diffusers' tiny test UNet", "[unet][reference]") { check_against_fixture("tiny"); }
TEST_CASE("UNet equals diffusers: the SD 1.5 block layout", "[unet][reference]") { check_against_fixture("sd15_layout"); }
TEST_CASE("UNet equals diffusers: SD 2.x options (linear projection, per-block heads)", "[unet][reference]") { check_against_fixture("sd2_options"); }

TEST_CASE("UNet from an original single-file checkpoint gives identical outputs", "[unet][single_file]") {
  for (const std::string config : {"tiny", "sd2_options"}) {
    INFO("configuration " << config);
    CpuBackend b;
    const io::SafetensorsFile fixture(kData / config / "fixture.safetensors");
    auto from_folder = io::load_unet(b, kData / config / "diffusers");
    auto from_file =
        io::load_unet(b, kData / config / "single_file.safetensors", models::UNetConfig::from_file(kData / config / "diffusers" / "config.json"));
    const auto a = run_model(b, *from_folder, fixture, false), c = run_model(b, *from_file, fixture, false);
    REQUIRE(a.output == c.output);  // bit for bit: same weights, same code
  }
}

TEST_CASE("gradient checkpointing gives the same gradients with a lower activation peak", "[unet][checkpointing]") {
  CpuBackend b;
  const io::SafetensorsFile fixture(kData / "sd15_layout" / "fixture.safetensors");
  auto model = io::load_unet(b, kData / "sd15_layout" / "diffusers");
  const auto plain = run_model(b, *model, fixture);
  model->gradient_checkpointing = true;
  const auto checkpointed = run_model(b, *model, fixture);
  REQUIRE(relative_l2(checkpointed.output, plain.output) == 0.0);
  for (const auto& [name, grad] : plain.grads) {
    INFO("gradient " << name);
    REQUIRE(relative_l2(checkpointed.grads.at(name), grad) <= 1e-6);
  }
  WARN("activation peak: " << plain.peak_bytes << " bytes without checkpointing, " << checkpointed.peak_bytes << " with");
  REQUIRE(checkpointed.peak_bytes < plain.peak_bytes * 3 / 4);
}

namespace {
// Copies the tiny UNet folder, rewriting its weights through `edit`.
fs::path edited_copy(const std::string& name, const std::function<void(const io::SafetensorsFile&, io::SafetensorsWriter&)>& edit) {
  const auto dir = fs::temp_directory_path() / ("dreambooth-unet-test-" + std::to_string(::getpid())) / name;
  fs::create_directories(dir);
  fs::copy_file(kData / "tiny" / "diffusers" / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
  const io::SafetensorsFile original(kData / "tiny" / "diffusers" / "diffusion_pytorch_model.safetensors");
  io::SafetensorsWriter writer;
  edit(original, writer);
  writer.write(dir / "diffusion_pytorch_model.safetensors");
  return dir;
}
void copy_all_but(const io::SafetensorsFile& in, io::SafetensorsWriter& out, const std::string& skip) {
  for (const auto& [key, info] : in.tensors())
    if (key != skip) out.add_raw(key, info.dtype, info.shape, in.bytes(key));
}
}  // namespace

TEST_CASE("a checkpoint with a missing tensor, a wrong shape or an unexpected dtype is refused", "[unet][errors]") {
  CpuBackend b;
  const std::string victim = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
  const auto missing = edited_copy("missing", [&](const auto& in, auto& out) { copy_all_but(in, out, victim); });
  REQUIRE_THROWS_WITH(io::load_unet(b, missing), Catch::Contains("missing tensor \"" + victim + "\"") &&
                                                     Catch::Contains((missing / "diffusion_pytorch_model.safetensors").string()));
  const auto reshaped = edited_copy("shape", [&](const auto& in, auto& out) {
    copy_all_but(in, out, victim);
    const auto values = in.read_f32(victim);
    out.add(victim, {static_cast<std::int64_t>(values.size())}, values);  // flattened
  });
  REQUIRE_THROWS_WITH(io::load_unet(b, reshaped), Catch::Contains("\"" + victim + "\" has shape [64]; the model expects [8, 8]") &&
                                                      Catch::Contains("shape/diffusion_pytorch_model.safetensors"));
  const auto integer = edited_copy("dtype", [&](const auto& in, auto& out) {
    copy_all_but(in, out, victim);
    std::vector<std::byte> zeros(64 * 4);
    out.add_raw(victim, io::StDType::I32, {8, 8}, zeros);
  });
  REQUIRE_THROWS_WITH(io::load_unet(b, integer), Catch::Contains("\"" + victim + "\" has dtype I32"));
  const auto extra = edited_copy("extra", [&](const auto& in, auto& out) {
    copy_all_but(in, out, "");
    const std::vector<float> v = {1, 2};
    out.add("down_blocks.9.resnets.0.conv1.bias", {2}, v);
  });
  // a tensor the model has no place for means the config and the weights disagree: refused, named
  REQUIRE_THROWS_WITH(io::load_unet(b, extra), Catch::Contains("unexpected tensor \"down_blocks.9.resnets.0.conv1.bias\""));
  // a single file read with the wrong configuration (SD 1.5's, for the tiny UNet's weights)
  CHECK_THROWS_WITH(io::load_unet(b, kData / "tiny" / "single_file.safetensors", models::UNetConfig::sd15()),
                    Catch::Contains("single_file.safetensors") && Catch::Contains("model.diffusion_model."));
}

TEST_CASE("the SD 1.5 configuration has exactly 859,520,964 parameters", "[unet][sd15]") {
  Model model(models::UNetConfig::sd15());
  REQUIRE(model.parameter_count() == 859520964);
}

TEST_CASE("UNet config errors name the file and the field", "[unet][config]") {
  const auto dir = fs::temp_directory_path() / ("dreambooth-unet-config-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"], "class_embed_type": "timestep", "norm_num_groups": 32})";
  REQUIRE_THROWS_WITH(models::UNetConfig::from_file(dir / "config.json"), Catch::Contains("class_embed_type") && Catch::Contains("config.json"));
  std::ofstream(dir / "config.json") << R"({"block_out_channels": [32, 48], "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 32})";
  REQUIRE_THROWS_WITH(models::UNetConfig::from_file(dir / "config.json"), Catch::Contains("block_out_channels[1] = 48"));
}
