// One DreamBooth training step of the full SD 1.5 configuration (random weights) at 512x512 with prior preservation on the
// CPU: batch 2 (1 instance + 1 class image), latents as from the cache (64x64), frozen text encoder, AdamW over the UNet's
// 859.5 M parameters. Reports seconds per step and peak memory. Prints one JSON object.
//   train_step_bench [--steps N] [--checkpointing]
#include <omp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/nn/init.hpp"
#include "dreambooth/train/dreambooth_step.hpp"

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int steps = 2;
  bool checkpointing = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc)
      steps = std::stoi(argv[++i]);
    else if (a == "--checkpointing")
      checkpointing = true;
    else {
      std::fprintf(stderr, "usage: train_step_bench [--steps N] [--checkpointing]\n");
      return 2;
    }
  }
  CpuBackend b;
  models::UNet2DConditionModel<CpuBackend> unet(models::UNetConfig::sd15());
  models::CLIPTextModel<CpuBackend> clip(models::CLIPTextConfig::vit_l14());
  unet.allocate(b);
  clip.allocate(b);
  nn::init_random(b, unet, 1);
  nn::init_random(b, clip, 2);
  unet.gradient_checkpointing = checkpointing;
  train::StepConfig config;  // prior preservation, weight 1.0, AdamW 5e-6, clip 1.0 (diffusers' defaults)
  train::DreamBoothStep<CpuBackend> trainer(b, unet, clip, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
  train::DreamBoothStep<CpuBackend>::Batch batch;
  batch.latents = Tensor<CpuBackend>::empty(b, {2, 4, 64, 64});
  batch.noise = Tensor<CpuBackend>::empty(b, {2, 4, 64, 64});
  b.fill_normal(batch.latents.data<float>(), 2 * 4 * 64 * 64, 3, 0, 0.0f, 0.18215f);
  batch.ids.assign(2 * 77, 49407);
  batch.ids[0] = batch.ids[77] = 49406;
  std::vector<double> times;
  double loss = 0;
  for (int s = 0; s < steps; ++s) {
    b.fill_normal(batch.noise.data<float>(), 2 * 4 * 64 * 64, 4, static_cast<std::uint64_t>(s), 0.0f, 1.0f);
    batch.timesteps = {100 + 300 * s, 900 - 200 * s};
    const auto start = Clock::now();
    loss = trainer.step(batch).loss.total;
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    std::fprintf(stderr, "step %d: %.2f s, loss %.4f\n", s, times.back(), loss);
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf(
      "{\n  \"model\": \"SD 1.5 UNet + CLIP ViT-L/14 (random weights), frozen text encoder\",\n  \"resolution\": 512,\n  \"batch\": 2,\n"
      "  \"gradient_checkpointing\": %s,\n  \"threads\": %d,\n  \"first_step_seconds\": %.2f,\n  \"step_seconds\": %.2f,\n"
      "  \"backend_peak_gib\": %.2f,\n  \"peak_rss_gib\": %.2f,\n  \"unet_tflop_per_step\": 4.82,\n  \"effective_gflops\": %.1f\n}\n",
      checkpointing ? "true" : "false", omp_get_max_threads(), times.front(), times.back(), static_cast<double>(b.peak_bytes()) / gib,
      static_cast<double>(usage.ru_maxrss) * 1024.0 / gib, 4820.0 / times.back());
  return 0;
}
