// The DreamBooth step against diffusers' train_dreambooth.py computation (fixtures from
// tools/reference/make_training_fixtures.py): same tiny models, batch, injected noise and timesteps, AdamW; 5 steps with
// prior preservation, once with the text encoder frozen and once trained (and, from make_objective_fixtures.py, with
// min-SNR weighting and v-prediction on an SD 2.x-style UNet, and with batch 2 and gradient accumulation 2). The loss at
// every step within relative 1e-5;
// the final parameters within relative L2 1e-5 (all trained parameters as one vector), and the parameter updates
// (final - initial) within relative L2 1e-3.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "dreambooth/train/noise_offset.hpp"
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
  const auto& meta = fixture.metadata();
  schedulers::SchedulerConfig schedule;  // SD 1.x's training schedule; make_objective_fixtures.py's runs name their objective
  if (meta.count("prediction_type")) schedule.prediction_type = meta.at("prediction_type");
  train::StepConfig config;
  config.train_text_encoder = fixture.metadata().at("train_text_encoder") == "True";
  config.optimizer.lr = std::stod(fixture.metadata().at("lr"));
  config.prior_loss_weight = std::stod(fixture.metadata().at("prior_loss_weight"));
  config.max_grad_norm = std::stod(fixture.metadata().at("max_grad_norm"));
  if (meta.count("snr_gamma") && !meta.at("snr_gamma").empty()) config.snr_gamma = std::stod(meta.at("snr_gamma"));

  // initial values of everything trained
  std::map<std::string, std::vector<float>> initial;
  unet->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { initial["unet." + name] = p.value.to_host(); });
  text_encoder->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { initial["text_encoder." + name] = p.value.to_host(); });

  train::DreamBoothStep<CpuBackend> trainer(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedule), config);
  train::DreamBoothStep<CpuBackend>::Batch batch;
  // batch2_accumulate2: micro-batches of [instances..., classes...], each with its latents, noise and timesteps
  const int accumulate = meta.count("accumulate") ? std::stoi(meta.at("accumulate")) : 1;
  const auto suffix = [&](const std::string& key, int micro) { return accumulate > 1 ? key + "." + std::to_string(micro) : key; };
  const auto ids = fixture.read_f32("input.ids");
  batch.ids.assign(ids.begin(), ids.end());
  const int steps = std::stoi(fixture.metadata().at("steps"));
  for (int k = 0; k < steps; ++k) {
    const auto key = std::to_string(k);
    train::PriorPreservationLoss<CpuBackend>::Value loss;
    for (int m = 0; m < accumulate; ++m) {
      const auto latents = suffix("input.latents", m), noise = suffix("noise." + key, m);
      batch.latents = Tensor<CpuBackend>::from_host(b, fixture.info(latents).shape, fixture.read_f32(latents));
      batch.noise = Tensor<CpuBackend>::from_host(b, fixture.info(noise).shape, fixture.read_f32(noise));
      const auto t = fixture.read_f32(suffix("timesteps." + key, m));
      batch.timesteps.assign(t.begin(), t.end());
      const auto value = trainer.forward_backward(batch, 1.0 / accumulate);  // as the trainer runs accumulation
      loss.total += value.total / accumulate, loss.instance += value.instance / accumulate, loss.prior += value.prior / accumulate;
    }
    train::DreamBoothStep<CpuBackend>::Result r;
    r.loss = loss;
    (void)trainer.apply();
    const auto expected = fixture.read_f32("loss." + key);  // total, instance, prior
    INFO("step " << k << ": loss " << r.loss.total << " (instance " << r.loss.instance << ", prior " << r.loss.prior << "), diffusers " << expected[0]
                 << " (" << expected[1] << ", " << expected[2] << ")");
    CHECK(std::abs(r.loss.total - expected[0]) <= 1e-5 * std::abs(expected[0]));
    CHECK(std::abs(r.loss.instance - expected[1]) <= 1e-5 * std::abs(expected[1]));
    CHECK(std::abs(r.loss.prior - expected[2]) <= 1e-5 * std::abs(expected[2]));
  }

  // a frozen text encoder runs once for the fixture's fixed prompts, its output cached; a trained one every step
  CHECK(trainer.text_encoder_runs() == (config.train_text_encoder ? steps * accumulate : 1));

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
  if (fixture.contains("final.text_encoder.text_model.final_layer_norm.weight"))
    text_encoder->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { collect("text_encoder.", name, p); });
  const double final_error = dreambooth::testing::relative_l2(ours, theirs);
  const double update_error = dreambooth::testing::relative_l2(our_delta, their_delta);
  INFO("final parameters relative L2 " << final_error << ", parameter updates relative L2 " << update_error);
  CHECK(final_error <= 1e-5);
  CHECK(update_error <= 1e-3);
  WARN(run << ": final parameters relative L2 " << final_error << ", parameter updates relative L2 " << update_error << " over " << ours.size()
           << " parameters");
}
// A fixture's training batch for step `step`: its latents and prompt ids, and that step's noise and timesteps.
train::DreamBoothStep<CpuBackend>::Batch fixture_batch(CpuBackend& b, const io::SafetensorsFile& fixture, int step) {
  const auto key = std::to_string(step);
  train::DreamBoothStep<CpuBackend>::Batch batch;
  batch.latents = Tensor<CpuBackend>::from_host(b, fixture.info("input.latents").shape, fixture.read_f32("input.latents"));
  batch.noise = Tensor<CpuBackend>::from_host(b, fixture.info("noise." + key).shape, fixture.read_f32("noise." + key));
  const auto t = fixture.read_f32("timesteps." + key), ids = fixture.read_f32("input.ids");
  batch.timesteps.assign(t.begin(), t.end());
  batch.ids.assign(ids.begin(), ids.end());
  return batch;
}
}  // namespace

TEST_CASE("DreamBooth steps equal diffusers' with the text encoder frozen", "[training][reference]") { check_run("frozen_text_encoder"); }
TEST_CASE("DreamBooth steps equal diffusers' with the text encoder trained", "[training][reference]") { check_run("trained_text_encoder"); }
TEST_CASE("min-SNR weighting (snr_gamma 5) equals diffusers' train_dreambooth.py --snr_gamma", "[training][reference]") {
  check_run("objectives/min_snr_epsilon");
}
TEST_CASE("v-prediction training on an SD 2.x-style UNet equals diffusers'", "[training][reference]") { check_run("objectives/v_prediction_sd2"); }
TEST_CASE("v-prediction with min-SNR weighting (the weights floored at 1) equals diffusers'", "[training][reference]") {
  check_run("objectives/v_prediction_min_snr");
}
TEST_CASE("two pairs per micro-batch and two micro-batches per step equal train_dreambooth.py's batch 2, accumulation 2", "[training][reference]") {
  check_run("objectives/batch2_accumulate2");
}

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

TEST_CASE("noise offset adds offset * z[n, c] to every element of a sample's channel (kohya's noise_offset)", "[training]") {
  CpuBackend b;
  const std::int64_t N = 2, C = 4, S = 3 * 3;
  std::vector<float> base(static_cast<std::size_t>(N * C * S));
  b.fill_normal(base.data(), base.size(), 11, 0, 0.0f, 1.0f);
  auto noise = Tensor<CpuBackend>::from_host(b, {N, C, 3, 3}, base);
  train::add_noise_offset(b, noise, 0.1, 7, 5);
  const auto shifted = noise.to_host();
  double spread = 0;
  for (std::int64_t k = 0; k < N * C; ++k) {
    const float expected = 0.1f * rng::normal(7, 5, static_cast<std::uint64_t>(k));
    spread = std::max(spread, std::abs(static_cast<double>(expected)));
    for (std::int64_t i = 0; i < S; ++i) {
      const auto at = static_cast<std::size_t>(k * S + i);
      CHECK(shifted[at] - base[at] == Approx(expected).margin(1e-6));
    }
  }
  CHECK(spread > 0.01);                          // the shifts are not all zero
  train::add_noise_offset(b, noise, 0.1, 7, 6);  // another micro-batch's stream shifts differently
  CHECK(noise.to_host()[0] - shifted[0] != Approx(shifted[0] - base[0]).margin(1e-6));
}

TEST_CASE("every diffusers schedule gives get_scheduler's rate at every step (make_lr_schedule_fixtures.py)", "[training][reference]") {
  std::ifstream in(kData / "lr_schedules.json");
  REQUIRE(in);
  const auto fixture = nlohmann::json::parse(in);
  std::set<std::string> names;
  for (const auto& c : fixture.at("cases")) {
    train::LRSchedule s{c.at("name").get<std::string>(), c.at("warmup_steps").get<long>(), c.at("total_steps").get<long>()};
    s.num_cycles = c.at("num_cycles").get<long>();
    s.power = c.at("power").get<double>();
    s.validate();
    const double lr = c.at("lr").get<double>();
    const auto& rates = c.at("rates");
    for (std::size_t step = 0; step < rates.size(); ++step) {
      INFO(s.name << " warmup " << s.warmup_steps << " of " << s.total_steps << ", step " << step);
      const double expected = rates[step].get<double>();
      CHECK(std::abs(s.rate(static_cast<long>(step), lr) - expected) <= 1e-12 + 1e-9 * std::abs(expected));
    }
    names.insert(s.name);
  }
  CHECK(names == std::set<std::string>{"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"});
  train::LRSchedule polynomial{"polynomial", 0, 10};
  REQUIRE_THROWS_WITH(polynomial.rate(0, 1e-8), Catch::Contains("must exceed its end rate"));
  train::LRSchedule restarts{"cosine_with_restarts", 0, 10};
  restarts.num_cycles = 0;
  REQUIRE_THROWS_WITH(restarts.validate(), Catch::Contains("num_cycles"));
}

TEST_CASE("a frozen text encoder's cached embeddings follow the prompts: the last two kept, new ids run it again", "[training]") {
  CpuBackend b;
  const auto dir = kData / "frozen_text_encoder";
  const io::SafetensorsFile fixture(dir / "fixture.safetensors");
  auto unet = io::load_unet(b, dir / "unet");
  auto text_encoder = io::load_clip_text(b, dir / "text_encoder");
  train::StepConfig config;
  config.optimizer.lr = 0;  // the weights stay: the same batch gives the same loss
  train::DreamBoothStep<CpuBackend> trainer(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
  const auto batch = fixture_batch(b, fixture, 0);
  const double first = trainer.step(batch).loss.total;
  auto swapped = batch;
  std::rotate(swapped.ids.begin(), swapped.ids.begin() + 77, swapped.ids.end());  // [class, instance]
  const double other = trainer.step(swapped).loss.total;
  const double again = trainer.step(batch).loss.total;
  CHECK(trainer.text_encoder_runs() == 2);  // the last two distinct prompt batches are kept (buckets run two per step)
  CHECK(other != first);
  CHECK(again == first);
  auto third = batch;
  std::fill(third.ids.begin() + 1, third.ids.begin() + 10, 400);  // new ids: the encoder runs, the oldest entry goes
  const double new_prompts = trainer.step(third).loss.total;
  CHECK(trainer.text_encoder_runs() == 3);
  CHECK(new_prompts != first);
  CHECK(trainer.step(batch).loss.total == first);  // still kept
  CHECK(trainer.text_encoder_runs() == 3);
  CHECK(trainer.step(swapped).loss.total == other);  // dropped: runs again
  CHECK(trainer.text_encoder_runs() == 4);
}

// kohya's stop_text_encoder_training: the trained_text_encoder fixture's steps, the text encoder stopped after step 2.
// Steps 1-2 are the fixture's (diffusers trains both); from step 3 the text encoder's weights stay exactly as they were,
// its output is cached, the UNet trains on, and AdamW leaves the text encoder's moments as they were.
TEST_CASE("stop_text_encoder_training freezes the text encoder from that step on; the UNet trains on", "[training]") {
  CpuBackend b;
  const auto dir = kData / "trained_text_encoder";
  const io::SafetensorsFile fixture(dir / "fixture.safetensors");
  auto unet = io::load_unet(b, dir / "unet");
  auto text_encoder = io::load_clip_text(b, dir / "text_encoder");
  train::StepConfig config;
  config.train_text_encoder = true;
  config.optimizer.lr = std::stod(fixture.metadata().at("lr"));
  config.prior_loss_weight = std::stod(fixture.metadata().at("prior_loss_weight"));
  train::DreamBoothStep<CpuBackend> trainer(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
  const auto weights = [](auto& model) {
    std::vector<float> all;
    model.visit([&](const std::string&, nn::Param<CpuBackend>& p) {
      const auto v = p.value.to_host();
      all.insert(all.end(), v.begin(), v.end());
    });
    return all;
  };
  std::vector<float> text_after_2, unet_after_2, text_moments_after_2;
  for (int k = 0; k < 5; ++k) {
    if (k == 2) {
      text_after_2 = weights(*text_encoder), unet_after_2 = weights(*unet);
      text_moments_after_2 = trainer.optimizer().first_moments().back().to_host();  // the text encoder's last parameter
      trainer.stop_text_encoder_training();
      CHECK_FALSE(trainer.trains_text_encoder());
    }
    const auto key = std::to_string(k);
    const auto r = trainer.step(fixture_batch(b, fixture, k));
    if (k < 2) CHECK(std::abs(r.loss.total - fixture.read_f32("loss." + key)[0]) <= 1e-5 * std::abs(fixture.read_f32("loss." + key)[0]));
  }
  CHECK(weights(*text_encoder) == text_after_2);
  CHECK(trainer.optimizer().first_moments().back().to_host() == text_moments_after_2);
  CHECK(dreambooth::testing::relative_l2(weights(*unet), unet_after_2) > 1e-4);
  CHECK(trainer.text_encoder_runs() == 3);  // steps 1, 2 and one cached output for steps 3-5
}
