// The full SD 1.5 UNet (seeded random weights) on the CPU (or with --device cuda on GPU 0): parameter count, memory
// plan, and the time of one forward + backward at batch 2, 64x64 latents, 77x768 context. Prints one JSON object (on the
// GPU also the device, the compute precision and the pool's peak reserved memory).
//   unet_bench [--checkpointing] [--batch N] [--latent S] [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]
// FLOP figures: 803 GFLOP per sample forward at 64x64 (REFERENCE.md), backward about twice that.
// Two steps run; the second is reported (the steady state of training: the backend's allocation cache is warm,
// the first step also pays the page faults of fresh memory).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "bench_device.hpp"
#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/models/unet.hpp"
#include "dreambooth/nn/init.hpp"

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

template <class B>
int run(B& b, const bench::Device& device, bool checkpointing, std::int64_t batch, std::int64_t latent) {
  models::UNet2DConditionModel<B> model(models::UNetConfig::sd15());
  model.gradient_checkpointing = checkpointing;
  const auto params = model.parameter_count();
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::fprintf(stderr, "unet_bench: SD 1.5 UNet, %lld parameters\n", static_cast<long long>(params));
  std::fprintf(stderr, "memory plan (fp32): parameters %.2f GiB, gradients %.2f GiB, AdamW moments %.2f GiB\n", params * 4 / gib, params * 4 / gib,
               params * 8 / gib);
  model.allocate(b);
  nn::init_random(b, model, 1234);

  auto sample = Tensor<B>::empty(b, {batch, 4, latent, latent});
  auto context = Tensor<B>::empty(b, {batch, 77, 768});
  b.fill_normal(sample.template data<float>(), static_cast<std::size_t>(sample.numel()), 1, 0, 0.0f, 1.0f);
  b.fill_normal(context.template data<float>(), static_cast<std::size_t>(context.numel()), 2, 0, 0.0f, 1.0f);
  std::vector<float> timesteps(static_cast<std::size_t>(batch));
  for (std::int64_t n = 0; n < batch; ++n) timesteps[static_cast<std::size_t>(n)] = static_cast<float>(37 + 400 * n);

  double forward_s = 0, backward_s = 0, first_step_s = 0;
  std::size_t after_forward = 0, peak = 0;
  for (int step = 0; step < 2; ++step) {
    model.zero_grad();
    const auto base = b.bytes_in_use();
    b.reset_peak();
    typename models::UNet2DConditionModel<B>::Activations activations;
    auto start = Clock::now();
    auto out = model.forward(b, sample, timesteps, context, activations);
    b.synchronize();
    forward_s = std::chrono::duration<double>(Clock::now() - start).count();
    after_forward = b.bytes_in_use() - base;
    std::fprintf(stderr, "step %d: forward %.2f s, activations held %.2f GiB\n", step, forward_s, after_forward / gib);
    auto dout = Tensor<B>::empty(b, out.shape());
    b.fill_normal(dout.template data<float>(), static_cast<std::size_t>(dout.numel()), 3, 0, 0.0f, 1.0f);
    start = Clock::now();
    model.backward(b, dout, activations);
    b.synchronize();
    backward_s = std::chrono::duration<double>(Clock::now() - start).count();
    peak = b.peak_bytes() - base;
    std::fprintf(stderr, "step %d: backward %.2f s, activation peak %.2f GiB\n", step, backward_s, peak / gib);
    if (step == 0) first_step_s = forward_s + backward_s;
  }
  const double scale = static_cast<double>(latent * latent) / (64.0 * 64.0);  // conv FLOPs scale with the pixels (attention faster)
  const double forward_gflop = 803.0 * static_cast<double>(batch) * scale;
  const int digits = bench::seconds_digits(b);
  std::printf(
      "{\n  \"model\": \"SD 1.5 UNet (random weights)\",\n%s  \"parameters\": %lld,\n  \"batch\": %lld,\n  \"latent\": %lld,\n"
      "  \"gradient_checkpointing\": %s,\n  \"threads\": %d,\n"
      "  \"parameter_gib\": %.3f,\n  \"gradient_gib\": %.3f,\n  \"adamw_moments_gib\": %.3f,\n"
      "  \"activations_after_forward_gib\": %.3f,\n  \"activation_peak_gib\": %.3f,\n"
      "  \"first_step_seconds\": %.*f,\n  \"forward_seconds\": %.*f,\n  \"backward_seconds\": %.*f,\n  \"step_seconds\": %.*f,\n"
      "  \"forward_gflop\": %.0f,\n  \"forward_gflops\": %.1f,\n  \"backward_gflops\": %.1f\n}\n",
      bench::device_json(b, device).c_str(), static_cast<long long>(params), static_cast<long long>(batch), static_cast<long long>(latent),
      checkpointing ? "true" : "false", omp_get_max_threads(), params * 4 / gib, params * 4 / gib, params * 8 / gib, after_forward / gib, peak / gib,
      digits, first_step_s, digits, forward_s, digits, backward_s, digits, forward_s + backward_s, forward_gflop, forward_gflop / forward_s,
      2 * forward_gflop / backward_s);
  return 0;
}

int main(int argc, char** argv) {
  bool checkpointing = false;
  std::int64_t batch = 2, latent = 64;
  bench::Device device;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (device.parse(argc, argv, i)) continue;
    if (a == "--checkpointing")
      checkpointing = true;
    else if (a == "--batch" && i + 1 < argc)
      batch = std::stoll(argv[++i]);
    else if (a == "--latent" && i + 1 < argc)
      latent = std::stoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: unet_bench [--checkpointing] [--batch N] [--latent S] [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]\n");
      return 2;
    }
  }
  return bench::on_device(device, [&](auto& b) { return run(b, device, checkpointing, batch, latent); });
}
