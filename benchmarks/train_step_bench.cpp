// One DreamBooth training step of the full SD 1.5 configuration (random weights) at 512x512 with prior preservation:
// batch 2 (1 instance + 1 class image), latents as from the cache (64x64), frozen text encoder, AdamW over the UNet's
// 859.5 M parameters. Prints one JSON object.
//   train_step_bench [--steps N] [--checkpointing [on|off]] [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]
//                    [--warmup N] [--lora RANK] [--profile]
// --lora RANK: LoRA DreamBooth instead (diffusers' train_dreambooth_lora.py: adapters of rank RANK, alpha RANK, on the
// UNet's attention projections; the UNet frozen, allocated without gradients; AdamW over the adapters only).
// On the CPU (the default): --steps steps (2), the last one reported, with the peak memory of the backend and the process.
// With --device cuda, on GPU 0 at the given compute precision: --warmup steps (2) then --steps timed steps (5); reports
// the median seconds per step, the effective TFLOP/s at 4.82 TFLOP per step (the UNet's forward, 803 GFLOP per sample,
// and its backward at twice that, for 2 samples: the CPU figure's count), the peak device memory (allocated and held by
// the pool) and the device. --profile: the last step's time per backend op and the matrix arithmetic of the ops with
// products, in GFLOP and GFLOP/s (benchmarks/profiled_backend.hpp; on a GPU each op is synchronized, so that step runs
// slower), the step's arithmetic, and the time outside the ops, under "profile". fp16 uses dynamic loss scaling as the trainer
// does; skipped (overflowed) steps are counted.
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench_device.hpp"
#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/nn/init.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "profiled_backend.hpp"

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

namespace {

constexpr double kUNetTflopPerStep = 4.82;

struct Options {
  int steps = -1, warmup = -1;  // -1: the device's default
  bool checkpointing = false;
  bool profile = false;
  long lora_rank = 0;  // 0: the full fine-tune
  bench::Device device;
};

template <class B>
int run(B& b, const Options& o) {
  const bool cpu = std::string(b.name()) == "cpu";
  const int warmup = cpu ? 0 : (o.warmup >= 0 ? o.warmup : 2);
  const int timed = o.steps >= 1 ? o.steps : (cpu ? 2 : 5);
  models::UNet2DConditionModel<B> unet(models::UNetConfig::sd15());
  models::CLIPTextModel<B> clip(models::CLIPTextConfig::vit_l14());
  const bool lora = o.lora_rank > 0;
  unet.allocate(b, /*with_gradients=*/!lora);
  clip.allocate(b, /*with_gradients=*/false);  // frozen
  nn::init_random(b, unet, 1);
  nn::init_random(b, clip, 2);
  unet.gradient_checkpointing = o.checkpointing;
  train::StepConfig config;  // prior preservation, weight 1.0, AdamW 5e-6, clip 1.0 (diffusers' defaults)
  config.loss_scaler.enabled = o.device.precision == "fp16";
  std::unique_ptr<models::LoraNetwork<B>> adapters;
  if (lora) {
    models::LoraConfig lc;
    lc.rank = o.lora_rank;
    lc.seed = 5;
    adapters = std::make_unique<models::LoraNetwork<B>>(b, unet, nullptr, lc);
    config.optimizer.lr = 1e-4;
  }
  train::DreamBoothStep<B> trainer(b, unet, clip, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config, adapters.get());
  const std::string what = lora ? "LoRA rank " + std::to_string(o.lora_rank) + " (" + std::to_string(adapters->modules().size()) +
                                      " adapters on the attention projections), the UNet and text encoder frozen"
                                : std::string("the UNet trained, frozen text encoder");
  typename train::DreamBoothStep<B>::Batch batch;
  batch.latents = Tensor<B>::empty(b, {2, 4, 64, 64});
  batch.noise = Tensor<B>::empty(b, {2, 4, 64, 64});
  b.fill_normal(batch.latents.template data<float>(), 2 * 4 * 64 * 64, 3, 0, 0.0f, 0.18215f);
  batch.ids.assign(2 * 77, 49407);
  batch.ids[0] = batch.ids[77] = 49406;
  std::vector<double> times;
  double loss = 0;
  int skipped = 0;
  for (int s = 0; s < warmup + timed; ++s) {
    b.fill_normal(batch.noise.template data<float>(), 2 * 4 * 64 * 64, 4, static_cast<std::uint64_t>(s), 0.0f, 1.0f);
    batch.timesteps = {(100 + 300 * s) % 1000, ((900 - 200 * s) % 1000 + 1000) % 1000};
    if constexpr (requires { b.profiling; }) {
      b.reset_profile();
      b.profiling = o.profile && s + 1 == warmup + timed;
    }
    const auto start = Clock::now();
    const auto r = trainer.step(batch);
    b.synchronize();  // the AdamW update is queued on a device: time it too
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    loss = r.loss.total;
    skipped += r.skipped && s >= warmup;
    std::fprintf(stderr, "step %d%s: %.*f s, loss %.4f%s\n", s, s < warmup ? " (warm-up)" : "", cpu ? 2 : 4, times.back(), loss,
                 r.skipped ? " (skipped: fp16 overflow)" : "");
  }
  std::string profile;
  if constexpr (requires { b.profile_json(); }) {
    if (o.profile) {
      char outside[64];
      std::snprintf(outside, sizeof outside, ",\n  \"seconds_outside_ops\": %.4f", times.back() - b.profiled_seconds());
      profile = ",\n  \"profile\": " + b.profile_json(2) + outside;
    }
  }
  const double gib = 1024.0 * 1024.0 * 1024.0;
  if (cpu) {  // the original report
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    std::printf(
        "{\n  \"model\": \"SD 1.5 UNet + CLIP ViT-L/14 (random weights), %s\",\n  \"resolution\": 512,\n  \"batch\": 2,\n"
        "  \"gradient_checkpointing\": %s,\n  \"threads\": %d,\n  \"first_step_seconds\": %.2f,\n  \"step_seconds\": %.2f,\n"
        "  \"backend_peak_gib\": %.2f,\n  \"peak_rss_gib\": %.2f,\n  \"unet_tflop_per_step\": 4.82,\n  \"effective_gflops\": %.1f%s\n}\n",
        what.c_str(), o.checkpointing ? "true" : "false", omp_get_max_threads(), times.front(), times.back(),
        static_cast<double>(b.peak_bytes()) / gib, static_cast<double>(usage.ru_maxrss) * 1024.0 / gib, kUNetTflopPerStep * 1000.0 / times.back(),
        profile.c_str());
    return 0;
  }
  std::vector<double> measured(times.begin() + warmup, times.end());
  std::sort(measured.begin(), measured.end());
  const auto n = measured.size();
  const double median = n % 2 ? measured[n / 2] : 0.5 * (measured[n / 2 - 1] + measured[n / 2]);
  std::string list;
  for (std::size_t i = static_cast<std::size_t>(warmup); i < times.size(); ++i) {
    char t[32];
    std::snprintf(t, sizeof t, "%s%.4f", list.empty() ? "" : ", ", times[i]);
    list += t;
  }
  std::printf(
      "{\n  \"model\": \"SD 1.5 UNet + CLIP ViT-L/14 (random weights), %s\",\n%s  \"resolution\": 512,\n  \"batch\": 2,\n"
      "  \"gradient_checkpointing\": %s,\n  \"warmup_steps\": %d,\n  \"timed_steps\": %d,\n  \"first_step_seconds\": %.4f,\n"
      "  \"step_seconds\": %.4f,\n  \"step_seconds_each\": [%s],\n  \"unet_tflop_per_step\": %.2f,\n  \"effective_tflops\": %.1f,\n"
      "  \"skipped_steps\": %d,\n  \"final_loss_scale\": %.0f,\n  \"loss\": %.6f%s\n}\n",
      what.c_str(), bench::device_json(b, o.device).c_str(), o.checkpointing ? "true" : "false", warmup, timed, times.front(), median, list.c_str(),
      kUNetTflopPerStep, kUNetTflopPerStep / median, skipped, trainer.loss_scaler().scale(), loss, profile.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (o.device.parse(argc, argv, i)) continue;
    if (a == "--steps" && i + 1 < argc) {
      o.steps = std::stoi(argv[++i]);
    } else if (a == "--warmup" && i + 1 < argc) {
      o.warmup = std::stoi(argv[++i]);
    } else if (a == "--lora" && i + 1 < argc) {
      o.lora_rank = std::stol(argv[++i]);
      if (o.lora_rank < 1) {
        std::fprintf(stderr, "train_step_bench: --lora needs a rank of at least 1\n");
        return 2;
      }
    } else if (a == "--profile") {
      o.profile = true;
    } else if (a == "--checkpointing") {  // a bare --checkpointing (as before) or --checkpointing on|off
      o.checkpointing = true;
      if (i + 1 < argc && (std::string(argv[i + 1]) == "on" || std::string(argv[i + 1]) == "off")) o.checkpointing = std::string(argv[++i]) == "on";
    } else {
      std::fprintf(stderr,
                   "usage: train_step_bench [--steps N] [--checkpointing [on|off]] [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16] "
                   "[--warmup N] [--lora RANK] [--profile]\n");
      return 2;
    }
  }
  return bench::on_device<bench::ProfiledBackend>(o.device, [&](auto& b) { return run(b, o); });
}
