// Mixed-precision training on the generic side, on the CPU backend: the dynamic loss scaler (GradScaler's rules: growth,
// backoff, the tracker), the DreamBooth step with loss scaling (scaled gradients, unscaled before clipping and AdamW, an
// overflowed step skipped without touching the weights or the optimizer), and trainer.precision / trainer.device in the
// configuration. The CUDA backend's fp16 compute is what makes overflow happen in practice; here it is injected.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/train/config.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "dreambooth/train/trainer.hpp"
#include "reference.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;

namespace {

const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "training" / "frozen_text_encoder";

// The tiny UNet and text encoder of the training fixture with its first batch.
struct Tiny {
  CpuBackend b;
  io::SafetensorsFile fixture{kData / "fixture.safetensors"};
  std::unique_ptr<models::UNet2DConditionModel<CpuBackend>> unet = io::load_unet(b, kData / "unet");
  std::unique_ptr<models::CLIPTextModel<CpuBackend>> text_encoder = io::load_clip_text(b, kData / "text_encoder");
  std::optional<train::DreamBoothStep<CpuBackend>> step;
  train::DreamBoothStep<CpuBackend>::Batch batch;

  explicit Tiny(train::LossScalerConfig scaler) {
    train::StepConfig config;
    config.optimizer.lr = 1e-3;
    config.max_grad_norm = 1.0;
    config.loss_scaler = scaler;
    step.emplace(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
    batch.latents = Tensor<CpuBackend>::from_host(b, fixture.info("input.latents").shape, fixture.read_f32("input.latents"));
    const auto ids = fixture.read_f32("input.ids");
    batch.ids.assign(ids.begin(), ids.end());
    set_step(0);
  }
  void set_step(int k) {
    const auto key = std::to_string(k);
    batch.noise = Tensor<CpuBackend>::from_host(b, fixture.info("noise." + key).shape, fixture.read_f32("noise." + key));
    const auto t = fixture.read_f32("timesteps." + key);
    batch.timesteps.assign(t.begin(), t.end());
  }
  std::vector<float> parameters() { return flattened(&nn::Param<CpuBackend>::value); }
  std::vector<float> gradients() { return flattened(&nn::Param<CpuBackend>::grad); }
  // Every UNet parameter's value or gradient, one after another in visiting order.
  std::vector<float> flattened(Tensor<CpuBackend> nn::Param<CpuBackend>::*member) {
    std::vector<float> all;
    unet->visit([&](const std::string&, nn::Param<CpuBackend>& p) {
      const auto v = (p.*member).to_host();
      all.insert(all.end(), v.begin(), v.end());
    });
    return all;
  }
  nn::Param<CpuBackend>& first_parameter() {
    nn::Param<CpuBackend>* first = nullptr;
    unet->visit([&](const std::string&, nn::Param<CpuBackend>& p) {
      if (!first) first = &p;
    });
    return *first;
  }
};

train::LossScalerConfig enabled(long growth_interval = 2000) {
  train::LossScalerConfig c;
  c.enabled = true;
  c.growth_interval = growth_interval;
  return c;
}

train::TrainingConfig load(std::vector<std::string> overrides, const std::optional<fs::path>& file = std::nullopt) {
  for (const char* required : {"model.data.instance_dir=instances", "model.data.instance_prompt=a photo of sks dog", "model.restore_from_path=model",
                               "model.with_prior_preservation=false"})
    overrides.insert(overrides.begin(), required);
  return train::TrainingConfig::load(file, overrides);
}

}  // namespace

TEST_CASE("the loss scaler grows, backs off and resets its tracker as torch's GradScaler", "[training][precision]") {
  train::DynamicLossScaler off;
  REQUIRE_FALSE(off.enabled());
  REQUIRE(off.scale() == 1.0);
  off.update(true);
  off.update(false);
  REQUIRE(off.scale() == 1.0);

  train::DynamicLossScaler s(enabled(3));
  REQUIRE(s.scale() == 65536.0);
  s.update(false);
  s.update(false);
  REQUIRE(s.scale() == 65536.0);
  REQUIRE(s.growth_tracker() == 2);
  s.update(false);  // the third finite step in a row: x2
  REQUIRE(s.scale() == 131072.0);
  REQUIRE(s.growth_tracker() == 0);
  s.update(false);
  s.update(false);
  s.update(true);  // an overflow: x0.5 and the count starts again
  REQUIRE(s.scale() == 65536.0);
  REQUIRE(s.growth_tracker() == 0);
  s.update(true);
  REQUIRE(s.scale() == 32768.0);
  REQUIRE(s.inverse_scale() == 1.0f / 32768.0f);

  train::DynamicLossScaler defaults(enabled());  // GradScaler's defaults: 2^16, x2 after 2000 finite steps
  for (int k = 0; k < 1999; ++k) defaults.update(false);
  REQUIRE(defaults.scale() == 65536.0);
  defaults.update(false);
  REQUIRE(defaults.scale() == 131072.0);

  auto top = enabled(1);  // never grows past float's range
  top.init_scale = std::ldexp(1.0, 127);
  train::DynamicLossScaler capped(top);
  capped.update(false);
  REQUIRE(capped.scale() == std::ldexp(1.0, 127));

  REQUIRE(train::DynamicLossScaler::overflowed(std::numeric_limits<double>::infinity()));
  REQUIRE(train::DynamicLossScaler::overflowed(std::numeric_limits<double>::quiet_NaN()));
  REQUIRE_FALSE(train::DynamicLossScaler::overflowed(1e300));

  train::DynamicLossScaler restored(enabled(3));
  restored.load(s.state());
  REQUIRE(restored.scale() == 32768.0);
  auto bad = enabled();
  bad.backoff_factor = 1.5;
  REQUIRE_THROWS_WITH(train::DynamicLossScaler(bad), Catch::Contains("backoff factor"));
}

TEST_CASE("a step with loss scaling: gradients scaled by 2^16, unscaled before clipping, the same update", "[training][precision]") {
  Tiny plain(train::LossScalerConfig{}), scaled(enabled());
  // the loss gradient seed carries the scale: every gradient is exactly 2^16 times the unscaled one
  const auto loss = plain.step->forward_backward(plain.batch, 1.0), scaled_loss = scaled.step->forward_backward(scaled.batch, 1.0);
  REQUIRE(loss.total == scaled_loss.total);
  const auto g = plain.gradients(), gs = scaled.gradients();
  REQUIRE(g.size() == gs.size());
  std::size_t exact = 0;
  for (std::size_t i = 0; i < g.size(); ++i) exact += gs[i] == g[i] * 65536.0f;
  CHECK(exact == g.size());
  const auto r = plain.step->apply(), rs = scaled.step->apply();
  REQUIRE_FALSE(rs.skipped);
  REQUIRE(rs.loss_scale == 65536.0);
  REQUIRE(r.loss_scale == 1.0);
  CHECK(rs.grad_norm == Approx(r.grad_norm).epsilon(1e-12));  // the norm of the unscaled gradients
  REQUIRE(r.grad_norm > 1.0);                                 // so that clipping was exercised
  // two more steps; the weights stay those of the unscaled run
  for (int k = 1; k < std::min(3, std::stoi(plain.fixture.metadata().at("steps"))); ++k) {
    plain.set_step(k);
    scaled.set_step(k);
    const auto a = plain.step->step(plain.batch), c = scaled.step->step(scaled.batch);
    CHECK(a.loss.total == c.loss.total);
    CHECK(c.grad_norm == Approx(a.grad_norm).epsilon(1e-12));
  }
  const double error = dreambooth::testing::relative_l2(scaled.parameters(), plain.parameters());
  INFO("parameters after 3 steps, relative L2 " << error);
  CHECK(error <= 1e-6);
  // AdamW saw the unscaled gradients (its update hardly depends on their scale, its moments do)
  const auto moments = [](train::DreamBoothStep<CpuBackend>& step) {
    std::vector<float> all;
    for (const auto* list : {&step.optimizer().first_moments(), &step.optimizer().second_moments()})
      for (const auto& m : *list) {
        const auto v = m.to_host();
        all.insert(all.end(), v.begin(), v.end());
      }
    return all;
  };
  const double moment_error = dreambooth::testing::relative_l2(moments(*scaled.step), moments(*plain.step));
  INFO("AdamW moments after 3 steps, relative L2 " << moment_error);
  CHECK(moment_error <= 1e-6);
  REQUIRE(scaled.step->optimizer().steps() == 3);
}

TEST_CASE("an overflowed step is skipped: weights, moments and step count unchanged, the scale halved", "[training][precision]") {
  for (const float poison : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    INFO("injected gradient " << poison);
    Tiny t(enabled());
    const auto before = t.parameters();
    (void)t.step->forward_backward(t.batch, 1.0);
    auto& p = t.first_parameter();
    auto grad = p.grad.to_host();
    grad[grad.size() / 2] = poison;  // what an fp16 overflow in the backward pass leaves
    p.grad.copy_from_host(grad);
    const auto r = t.step->apply();
    REQUIRE(r.skipped);
    REQUIRE_FALSE(std::isfinite(r.grad_norm));
    REQUIRE(r.loss_scale == 65536.0);
    REQUIRE(t.step->loss_scaler().scale() == 32768.0);
    REQUIRE(t.step->optimizer().steps() == 0);
    REQUIRE(t.parameters() == before);
    for (const auto& m : t.step->optimizer().first_moments())
      for (float v : m.to_host()) REQUIRE(v == 0.0f);
    const auto gradients = t.gradients();
    REQUIRE(std::all_of(gradients.begin(), gradients.end(), [](float v) { return v == 0.0f; }));  // zeroed for the next step
    // the next step runs at the backed-off scale and updates the weights
    const auto next = t.step->step(t.batch);
    REQUIRE_FALSE(next.skipped);
    REQUIRE(next.loss_scale == 32768.0);
    REQUIRE(std::isfinite(next.grad_norm));
    REQUIRE(t.step->optimizer().steps() == 1);
    REQUIRE(t.parameters() != before);
  }
}

TEST_CASE("the scale grows after growth_interval finite steps of training", "[training][precision]") {
  Tiny t(enabled(2));
  std::vector<double> scales;
  const int fixture_steps = std::stoi(t.fixture.metadata().at("steps"));
  for (int k = 0; k < 5; ++k) {
    t.set_step(k % fixture_steps);
    const auto r = t.step->step(t.batch);
    REQUIRE_FALSE(r.skipped);
    scales.push_back(r.loss_scale);
  }
  REQUIRE(scales == std::vector<double>{65536.0, 65536.0, 131072.0, 131072.0, 262144.0});
  REQUIRE(t.step->loss_scaler().growth_tracker() == 1);
}

TEST_CASE("trainer.precision takes Lightning's spellings and the CPU refuses half precision by key", "[training][precision][config]") {
  REQUIRE(load({}).compute_precision() == "fp32");
  REQUIRE(load({"trainer.precision=32-true"}).compute_precision() == "fp32");
  REQUIRE_FALSE(load({}).loss_scaling());
  const auto bf16 = load({"trainer.precision=bf16-mixed", "trainer.device=cuda"});
  REQUIRE(bf16.compute_precision() == "bf16");
  REQUIRE(bf16.device == "cuda");
  REQUIRE_FALSE(bf16.loss_scaling());
  REQUIRE(load({"trainer.precision=16", "trainer.device=cuda"}).loss_scaling());
  REQUIRE(load({"trainer.precision=fp16", "trainer.device=cuda"}).compute_precision() == "fp16");
  REQUIRE(load({"trainer.precision=16-mixed", "trainer.device=cuda"}).compute_precision() == "fp16");
  REQUIRE(load({"trainer.precision=tf32", "trainer.device=cuda"}).compute_precision() == "tf32");

  REQUIRE(load({"trainer.precision=bf16"}).compute_precision() == "bf16");  // the CPU backend's bf16 GEMMs (oneDNN)
  REQUIRE_THROWS_WITH(load({"trainer.precision=tf32"}),
                      Catch::Contains("trainer.precision \"tf32\"") && Catch::Contains("CPU backend trains in fp32 or bf16"));
  REQUIRE_THROWS_WITH(load({"trainer.precision=16"}), Catch::Contains("trainer.device=cuda"));
  REQUIRE_THROWS_WITH(load({"trainer.precision=bf17", "trainer.device=cuda"}), Catch::Contains("\"bf17\" is not one of"));
  REQUIRE_THROWS_WITH(load({"trainer.precision=16-true", "trainer.device=cuda"}), Catch::Contains("use 16-mixed"));
  REQUIRE_THROWS_WITH(load({"trainer.device=gpu"}), Catch::Contains("trainer.device \"gpu\" is not cpu or cuda"));
  REQUIRE_THROWS_WITH(load({"trainer.devic=cuda"}), Catch::Contains("did you mean \"trainer.device\""));

  // a NeMo-style file: the launcher keys are still ignored, device and precision are read
  const auto file = fs::temp_directory_path() / ("dreambooth-precision-" + std::to_string(::getpid()) + ".yaml");
  {
    std::ofstream out(file);
    out << "trainer:\n  devices: 1\n  num_nodes: 1\n  accelerator: gpu\n  precision: bf16\n  device: cuda\n";
  }
  const auto from_file = load({}, file);
  fs::remove(file);
  REQUIRE(from_file.device == "cuda");
  REQUIRE(from_file.compute_precision() == "bf16");
}

// The trainer's side of fp16: checkpoints hold the loss scale and its growth counter, a resumed run continues from them.
// (The trainer is generic: run here on the CPU backend with loss scaling on, which the command line never does.)
TEST_CASE("an fp16 run's checkpoints hold the loss scale, and a resumed run continues from it", "[training][precision]") {
  const auto work = fs::temp_directory_path() / ("dreambooth-fp16-resume-" + std::to_string(::getpid()));
  fs::remove_all(work);
  fs::create_directories(work / "instance");
  for (int k = 0; k < 2; ++k) {  // two small instance images
    std::vector<std::uint8_t> rgb(32 * 32 * 3);
    for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<std::uint8_t>((i * (7 + k)) % 251);
    io::write_png(work / "instance" / ("image-" + std::to_string(k) + ".png"), rgb.data(), 32, 32);
  }
  const auto config = [&](const std::string& out) {
    return load({"model.restore_from_path=" + (fs::path(DREAMBOOTH_TEST_DATA_DIR) / "pipeline" / "model").string(),
                 "model.data.instance_dir=" + (work / "instance").string(), "model.data.resolution=32", "model.optim.lr=1e-3", "trainer.max_steps=4",
                 "trainer.checkpoint_every_n_steps=2", "trainer.device=cuda", "trainer.precision=16-mixed",
                 "trainer.output_dir=" + (work / out).string()});
  };
  // metrics.jsonl: step -> (loss, grad_scale)
  const auto metrics = [&](const std::string& out) {
    std::map<long, std::pair<double, double>> lines;
    std::ifstream in(work / out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      REQUIRE(j.contains("grad_scale"));
      REQUIRE(j.at("skipped") == false);
      lines[j.at("step").get<long>()] = {j.at("loss").get<double>(), j.at("grad_scale").get<double>()};
    }
    return lines;
  };
  CpuBackend b;
  train::Trainer<CpuBackend>(b, config("straight")).run();
  const auto straight = metrics("straight");
  REQUIRE(straight.size() == 4);
  for (const auto& [step, value] : straight) REQUIRE(value.second == 65536.0);
  const auto checkpoint = work / "straight" / "checkpoints" / "step-00000002";
  {
    const io::SafetensorsFile optimizer(checkpoint / "optimizer.safetensors");
    REQUIRE(optimizer.metadata().at("loss_scale") == "65536");
    REQUIRE(optimizer.metadata().at("loss_scale_growth_tracker") == "2");
  }

  // resumed from the step-2 checkpoint: the same losses and scale at steps 3 and 4, the same final weights
  fs::create_directories(work / "resumed" / "checkpoints");
  fs::copy(checkpoint, work / "resumed" / "checkpoints" / "step-00000002", fs::copy_options::recursive);
  const auto summary = train::Trainer<CpuBackend>(b, config("resumed")).run();
  REQUIRE(summary.first_step == 2);
  const auto resumed = metrics("resumed");
  REQUIRE(resumed.size() == 2);
  for (long step : {3L, 4L}) REQUIRE(resumed.at(step) == straight.at(step));
  const auto weights = [&](const std::string& out) {
    std::ifstream in(work / out / "model" / "unet" / "diffusion_pytorch_model.safetensors", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  REQUIRE(weights("resumed") == weights("straight"));

  // the scale comes from the checkpoint: one that says 1024 gives 1024
  {
    const io::SafetensorsFile original(checkpoint / "optimizer.safetensors");
    io::SafetensorsWriter edited;
    for (const auto& [key, value] : original.metadata()) edited.set_metadata(key, value);
    edited.set_metadata("loss_scale", "1024");
    for (const auto& [name, info] : original.tensors()) edited.add(name, info.shape, original.read_f32(name));
    fs::create_directories(work / "edited" / "checkpoints");
    fs::copy(checkpoint, work / "edited" / "checkpoints" / "step-00000002", fs::copy_options::recursive);
    edited.write(work / "edited" / "checkpoints" / "step-00000002" / "optimizer.safetensors");
  }
  train::Trainer<CpuBackend>(b, config("edited")).run();
  for (const auto& [step, value] : metrics("edited")) REQUIRE(value.second == 1024.0);
  fs::remove_all(work);
}
