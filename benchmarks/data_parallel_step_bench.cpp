// data_parallel_step_bench: the data-parallel DreamBooth step under mpirun, with the gradient sum overlapped with the
// backward pass (train/gradient_sum.hpp) or after it, on an SD 1.x UNet of a chosen width (random weights, frozen text
// encoder, batch 2 with prior preservation per process, AdamW). Prints one JSON object (rank 0): per step the slowest
// process's seconds, and how long the processes waited for the sum after their backward pass.
//   mpirun -np 2 build/benchmarks/data_parallel_step_bench [--overlap on|off] [--width 160] [--latent 32] [--steps 4]
//                                                         [--bucket-mib 25] [--wire fp32|bf16]
// --width: the UNet's first block's channels (SD 1.5: 320; 160 gives a quarter of its 859.5 M parameters, so that two
// processes fit a small machine); --latent: the latents' side (32: 256x256 pictures). The first step is a warm-up.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/nn/init.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "dreambooth/train/gradient_sum.hpp"
#include "dreambooth/train/mpi_communicator.hpp"

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  bool overlap = true, bf16_wire = false;
  std::int64_t width = 160, latent = 32;
  int steps = 4;
  double bucket_mib = 25;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--overlap")
      overlap = value == "on";
    else if (key == "--width")
      width = std::atol(value.c_str());
    else if (key == "--latent")
      latent = std::atol(value.c_str());
    else if (key == "--steps")
      steps = std::max(2, std::atoi(value.c_str()));
    else if (key == "--bucket-mib")
      bucket_mib = std::atof(value.c_str());
    else if (key == "--wire")
      bf16_wire = value == "bf16";
    else {
      std::fprintf(stderr, "data_parallel_step_bench: unknown option %s\n", key.c_str());
      return 2;
    }
  }
  train::MpiCommunicator comm;
  CpuBackend b;
  auto unet_config = models::UNetConfig::sd15();
  for (auto& c : unet_config.block_out_channels) c = c * width / 320;
  models::UNet2DConditionModel<CpuBackend> unet(unet_config);
  models::CLIPTextModel<CpuBackend> clip(models::CLIPTextConfig::vit_l14());
  unet.allocate(b);
  clip.allocate(b, /*with_gradients=*/false);
  nn::init_random(b, unet, 1);
  nn::init_random(b, clip, 2);
  train::DreamBoothStep<CpuBackend> step(b, unet, clip, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), train::StepConfig{});
  train::GradientSum<CpuBackend> sum(b, comm, static_cast<std::size_t>(bucket_mib * 1024 * 1024), overlap && comm.sums_on_another_thread(),
                                     bf16_wire);

  typename train::DreamBoothStep<CpuBackend>::Batch batch;
  const auto n = static_cast<std::size_t>(2 * 4 * latent * latent);
  batch.latents = Tensor<CpuBackend>::empty(b, {2, 4, latent, latent});
  batch.noise = Tensor<CpuBackend>::empty(b, {2, 4, latent, latent});
  b.fill_normal(batch.latents.data<float>(), n, 3, static_cast<std::uint64_t>(comm.rank()), 0.0f, 0.18215f);
  batch.ids.assign(2 * 77, 49407);
  batch.ids[0] = batch.ids[77] = 49406;

  std::vector<double> step_seconds, waited, backward_end;
  std::size_t buckets = 0, during = 0, runs = 0, bytes = 0;
  for (int s = 0; s < steps; ++s) {
    b.fill_normal(batch.noise.data<float>(), n, 4, static_cast<std::uint64_t>(s * comm.size() + comm.rank()), 0.0f, 1.0f);
    batch.timesteps = {(100 + 300 * s) % 1000, ((900 - 200 * s) % 1000 + 1000) % 1000};
    comm.barrier();
    const auto start = Clock::now();
    sum.begin(step.optimizer().trained_parameters());
    if (sum.background()) step.report_gradients_of_next_micro_batch(sum.hook());
    step.forward_backward(batch, 1.0 / comm.size());
    const double computed = std::chrono::duration<double>(Clock::now() - start).count();
    sum.finish();
    step.apply();
    const double mine[3] = {std::chrono::duration<double>(Clock::now() - start).count(), sum.last().waited_seconds, computed};
    const auto all = comm.all_gather(std::span<const double>(mine, 3));
    double slowest = 0, wait = 0, forward_backward = 0;
    for (std::size_t k = 0; k + 2 < all.size(); k += 3)
      slowest = std::max(slowest, all[k]), wait = std::max(wait, all[k + 1]), forward_backward = std::max(forward_backward, all[k + 2]);
    if (comm.leader())
      std::fprintf(stderr, "step %d: %.3f s (forward + backward %.3f s, waited %.3f s for the sum)\n", s, slowest, forward_backward, wait);
    if (s == 0) continue;  // warm-up
    step_seconds.push_back(slowest);
    waited.push_back(wait);
    backward_end.push_back(forward_backward);
    buckets = sum.last().buckets, during = sum.last().started_during_backward, runs = sum.last().runs, bytes = sum.last().bytes;
  }
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  if (comm.leader())
    std::printf(
        "{\n  \"processes\": %d,\n  \"threads_per_process\": %d,\n  \"unet_parameters\": %lld,\n  \"latent\": %lld,\n  \"batch_per_process\": 2,\n"
        "  \"overlap\": %s,\n  \"wire\": \"%s\",\n  \"bucket_mib\": %g,\n  \"buckets\": %zu,\n  \"buckets_started_during_backward\": %zu,\n  "
        "\"sums\": %zu,\n"
        "  \"gradient_gib\": %.3f,\n  \"timed_steps\": %zu,\n  \"step_seconds\": %.3f,\n  \"forward_backward_seconds\": %.3f,\n"
        "  \"waited_for_sum_seconds\": %.3f\n}\n",
        comm.size(), omp_get_max_threads(), static_cast<long long>(unet.parameter_count()), static_cast<long long>(latent),
        sum.background() ? "true" : "false", bf16_wire ? "bf16" : "fp32", bucket_mib, buckets, during, runs, static_cast<double>(bytes) / (1 << 30),
        step_seconds.size(), median(step_seconds), median(backward_end), median(waited));
  return 0;
}
