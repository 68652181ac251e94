// The exponential moving average of the trained weights (train/ema.hpp) against diffusers' EMAModel and NeMo's EMA
// (fixture from tools/reference/make_ema_fixtures.py): the DreamBooth steps of make_training_fixtures.py's
// "frozen_text_encoder" run with three averages of the UNet's weights beside them; each average within relative L2
// 1e-5 of its reference after 5 steps, the decay of every update equal to theirs. Then the average's swap and copy.
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <map>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "dreambooth/train/ema.hpp"
#include "reference.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "training";

std::vector<nn::Param<CpuBackend>*> parameters_of(models::UNet2DConditionModel<CpuBackend>& unet) {
  std::vector<nn::Param<CpuBackend>*> params;
  unet.visit([&](const std::string&, nn::Param<CpuBackend>& p) { params.push_back(&p); });
  return params;
}

// A float64 tensor's values, exactly.
std::vector<double> read_f64(const io::SafetensorsFile& file, const std::string& name) {
  REQUIRE(file.info(name).dtype == io::StDType::F64);
  const auto raw = file.bytes(name);
  std::vector<double> values(raw.size() / sizeof(double));
  std::memcpy(values.data(), raw.data(), values.size() * sizeof(double));
  return values;
}

std::vector<float> flatten(const std::vector<Tensor<CpuBackend>>& tensors) {
  std::vector<float> all;
  for (const auto& t : tensors) {
    const auto v = t.to_host();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}
}  // namespace

TEST_CASE("the EMA of the weights equals diffusers' EMAModel and NeMo's EMA over 5 DreamBooth steps", "[training][reference][ema]") {
  CpuBackend b;
  const io::SafetensorsFile training(kData / "frozen_text_encoder" / "fixture.safetensors");
  const io::SafetensorsFile fixture(kData / "ema" / "fixture.safetensors");
  auto unet = io::load_unet(b, kData / "frozen_text_encoder" / "unet");
  auto text_encoder = io::load_clip_text(b, kData / "frozen_text_encoder" / "text_encoder");
  train::StepConfig config;
  config.optimizer.lr = std::stod(training.metadata().at("lr"));
  config.prior_loss_weight = std::stod(training.metadata().at("prior_loss_weight"));
  config.max_grad_norm = std::stod(training.metadata().at("max_grad_norm"));

  // the three averages of make_ema_fixtures.py
  std::map<std::string, train::EmaConfig> configs;
  configs["diffusers"].decay = 0.9999;
  auto& power = configs["power"];
  power.decay = 0.999, power.min_decay = 0.5, power.update_after_step = 1, power.warmup = "power", power.inv_gamma = 1.0, power.power = 0.75;
  auto& nemo = configs["nemo"];
  nemo.decay = std::stod(fixture.metadata().at("nemo_decay")), nemo.warmup = "none";
  nemo.every_n_steps = std::stol(fixture.metadata().at("nemo_every_n_steps"));
  std::map<std::string, train::ExponentialMovingAverage<CpuBackend>> averages;
  std::map<std::string, std::vector<double>> decays;
  for (const auto& [name, c] : configs) averages.emplace(name, train::ExponentialMovingAverage<CpuBackend>(b, parameters_of(*unet), c));

  train::DreamBoothStep<CpuBackend> trainer(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
  train::DreamBoothStep<CpuBackend>::Batch batch;
  batch.latents = Tensor<CpuBackend>::from_host(b, training.info("input.latents").shape, training.read_f32("input.latents"));
  const auto ids = training.read_f32("input.ids");
  batch.ids.assign(ids.begin(), ids.end());
  const int steps = std::stoi(training.metadata().at("steps"));
  for (int k = 0; k < steps; ++k) {
    batch.noise =
        Tensor<CpuBackend>::from_host(b, training.info("noise." + std::to_string(k)).shape, training.read_f32("noise." + std::to_string(k)));
    const auto t = training.read_f32("timesteps." + std::to_string(k));
    batch.timesteps.assign(t.begin(), t.end());
    trainer.step(batch);
    for (auto& [name, ema] : averages) {
      const long before = ema.updates();
      ema.after_step(trainer.optimizer().steps());
      if (ema.updates() > before) decays[name].push_back(ema.last_decay());
    }
  }

  std::vector<float> weights;
  for (auto* p : parameters_of(*unet)) {
    const auto v = p->value.to_host();
    weights.insert(weights.end(), v.begin(), v.end());
  }
  for (auto& [name, ema] : averages) {
    INFO("average " << name);
    const auto expected_decays = read_f64(fixture, "decays." + name);
    REQUIRE(decays[name].size() == expected_decays.size());
    for (std::size_t u = 0; u < expected_decays.size(); ++u) CHECK(std::abs(decays[name][u] - expected_decays[u]) <= 1e-15);
    std::vector<float> theirs;
    unet->visit([&](const std::string& param, nn::Param<CpuBackend>&) {
      const auto v = fixture.read_f32("ema." + name + "." + param);
      theirs.insert(theirs.end(), v.begin(), v.end());
    });
    const auto ours = flatten(ema.shadows());
    const double error = dreambooth::testing::relative_l2(ours, theirs);
    const double apart = dreambooth::testing::relative_l2(weights, theirs);  // how far the average is from the weights
    INFO("relative L2 to the reference " << error << "; the reference average is " << apart << " from the final weights");
    CHECK(error <= 1e-5);
    CHECK(apart > 100 * error);  // the comparison tells an average from the weights
  }
}

TEST_CASE("the EMA's decay rule: EMAModel.get_decay's warm-ups, NeMo's constant decay, NeMo's update interval", "[training][ema]") {
  train::EmaConfig c;  // diffusers' default: 0 at the first update, then (1 + s) / (10 + s) up to the decay
  CHECK(c.decay_at(1) == 0.0);
  CHECK(c.decay_at(2) == 2.0 / 11.0);
  CHECK(c.decay_at(1000000) == 0.9999);
  c.update_after_step = 2;
  CHECK(c.decay_at(3) == 0.0);
  CHECK(c.decay_at(4) == 2.0 / 11.0);
  c.warmup = "none";  // NeMo's: the decay from the first update after update_after_step
  c.update_after_step = 0;
  CHECK(c.decay_at(1) == 0.9999);
  c.every_n_steps = 3;
  CHECK(c.updates_after(1));
  CHECK_FALSE(c.updates_after(2));
  CHECK_FALSE(c.updates_after(3));
  CHECK(c.updates_after(4));
}

TEST_CASE("the EMA swaps with the weights and back, and replaces them for good at the end", "[training][ema]") {
  CpuBackend b;
  nn::Param<CpuBackend> a, c;
  a.shape = Shape({3});
  c.shape = Shape({2});
  a.value = Tensor<CpuBackend>::from_host(b, a.shape, std::vector<float>{1, 2, 3});
  c.value = Tensor<CpuBackend>::from_host(b, c.shape, std::vector<float>{4, 5});
  train::EmaConfig config;
  config.warmup = "none";
  config.decay = 0.5;
  train::ExponentialMovingAverage<CpuBackend> ema(b, {&a, &c}, config);
  a.value.copy_from_host(std::vector<float>{3, 4, 5});  // a training step moves the weights
  ema.update();                                         // the average started at the old values: half way
  CHECK(ema.shadows()[0].to_host() == std::vector<float>{2, 3, 4});
  CHECK(ema.shadows()[1].to_host() == std::vector<float>{4, 5});
  ema.swap();
  CHECK(a.value.to_host() == std::vector<float>{2, 3, 4});
  CHECK(ema.shadows()[0].to_host() == std::vector<float>{3, 4, 5});
  ema.swap();
  CHECK(a.value.to_host() == std::vector<float>{3, 4, 5});
  ema.copy_to_weights();
  CHECK(a.value.to_host() == std::vector<float>{2, 3, 4});
  CHECK(c.value.to_host() == std::vector<float>{4, 5});
}
