// The DreamBooth step against diffusers' train_dreambooth.py computation (fixtures from
// tools/reference/make_training_fixtures.py): same tiny models, batch, injected noise and timesteps, AdamW; 5 steps with
// prior preservation, once with the text encoder frozen and once trained. The loss at every step within relative 1e-4;
// the final parameters within relative L2 1e-5 (all trained parameters as one vector), and the parameter updates
// (final - initial) within relative L2 1e-3.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "reference.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "training";

void check_run(const std::string& run) {
  INFO("run " << run);
  CpuBackend b;
  const io::SafetensorsFile fixture(kData / run / "fixture.safetensors");
  auto unet = io::load_unet(b, kData / run / "unet");
  auto text_encoder = io::load_clip_text(b, kData / run / "text_encoder");
  train::StepConfig config;
  config.train_text_encoder = fixture.metadata().at("train_text_encoder") == "True";
  config.optimizer.lr = std::stod(fixture.metadata().at("lr"));
  config.prior_loss_weight = std::stod(fixture.metadata().at("prior_loss_weight"));
  config.max_grad_norm = std::stod(fixture.metadata().at("max_grad_norm"));

  // initial values of everything trained
  std::map<std::string, std::vector<float>> initial;
  unet->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { initial["unet." + name] = p.value.to_host(); });
  text_encoder->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { initial["text_encoder." + name] = p.value.to_host(); });

  train::DreamBoothStep<CpuBackend> trainer(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
  train::DreamBoothStep<CpuBackend>::Batch batch;
  batch.latents = Tensor<CpuBackend>::from_host(b, fixture.info("input.latents").shape, fixture.read_f32("input.latents"));
  const auto ids = fixture.read_f32("input.ids");
  batch.ids.assign(ids.begin(), ids.end());
  const int steps = std::stoi(fixture.metadata().at("steps"));
  for (int k = 0; k < steps; ++k) {
    const auto key = std::to_string(k);
    batch.noise = Tensor<CpuBackend>::from_host(b, fixture.info("noise." + key).shape, fixture.read_f32("noise." + key));
    const auto t = fixture.read_f32("timesteps." + key);
    batch.timesteps.assign(t.begin(), t.end());
    const auto r = trainer.step(batch);
    const auto expected = fixture.read_f32("loss." + key);  // total, instance, prior
    INFO("step " << k << ": loss " << r.loss.total << " (instance " << r.loss.instance << ", prior " << r.loss.prior << "), diffusers " << expected[0]
                 << " (" << expected[1] << ", " << expected[2] << ")");
    CHECK(std::abs(r.loss.total - expected[0]) <= 1e-4 * std::abs(expected[0]));
    CHECK(std::abs(r.loss.instance - expected[1]) <= 1e-4 * std::abs(expected[1]));
    CHECK(std::abs(r.loss.prior - expected[2]) <= 1e-4 * std::abs(expected[2]));
  }

  std::vector<float> ours, theirs, our_delta, their_delta;
  const auto collect = [&](const std::string& prefix, const std::string& name, nn::Param<CpuBackend>& p) {
    const auto got = p.value.to_host(), expected = fixture.read_f32("final." + prefix + name);
    const auto& init = initial.at(prefix + name);
    for (std::size_t i = 0; i < got.size(); ++i) {
      ours.push_back(got[i]);
      theirs.push_back(expected[i]);
      our_delta.push_back(got[i] - init[i]);
      their_delta.push_back(expected[i] - init[i]);
    }
  };
  unet->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { collect("unet.", name, p); });
  text_encoder->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { collect("text_encoder.", name, p); });
  const double final_error = dreambooth::testing::relative_l2(ours, theirs);
  const double update_error = dreambooth::testing::relative_l2(our_delta, their_delta);
  INFO("final parameters relative L2 " << final_error << ", parameter updates relative L2 " << update_error);
  CHECK(final_error <= 1e-5);
  CHECK(update_error <= 1e-3);
  WARN(run << ": final parameters relative L2 " << final_error << ", parameter updates relative L2 " << update_error << " over " << ours.size()
           << " parameters");
}
}  // namespace

TEST_CASE("DreamBooth steps equal diffusers' with the text encoder frozen", "[training][reference]") { check_run("frozen_text_encoder"); }
TEST_CASE("DreamBooth steps equal diffusers' with the text encoder trained", "[training][reference]") { check_run("trained_text_encoder"); }

TEST_CASE("learning-rate schedules follow diffusers' get_scheduler", "[training]") {
  train::LRSchedule s{"constant_with_warmup", 10, 100};
  REQUIRE(s.factor(0) == 0.0);
  REQUIRE(s.factor(5) == Approx(0.5));
  REQUIRE(s.factor(50) == 1.0);
  s.name = "linear";
  REQUIRE(s.factor(10) == Approx(1.0));
  REQUIRE(s.factor(55) == Approx(0.5));
  REQUIRE(s.factor(100) == 0.0);
  s.name = "cosine";
  REQUIRE(s.factor(55) == Approx(0.5));
  REQUIRE(s.factor(100) == Approx(0.0).margin(1e-12));
  s.name = "exotic";
  REQUIRE_THROWS_WITH(s.factor(1), Catch::Contains("\"exotic\" is not supported"));
}
