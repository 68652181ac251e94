// The full-size VAE (encode and decode at 512x512) and CLIP ViT-L/14 text encoder (77 tokens, forward and backward)
// on the CPU with seeded random weights. Prints one JSON object.
//   vae_clip_bench [--size S]   (S: image side, default 512)
// FLOP figures (REFERENCE.md): VAE encoder 1,117 GFLOP and decoder 2,515 GFLOP at 512^2; CLIP 13 GFLOP on 77 tokens.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/models/vae.hpp"
#include "dreambooth/nn/init.hpp"

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  std::int64_t size = 512;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--size" && i + 1 < argc)
      size = std::stoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: vae_clip_bench [--size S]\n");
      return 2;
    }
  }
  CpuBackend b;
  const auto seconds = [](Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); };

  models::AutoencoderKL<CpuBackend> vae(models::VAEConfig::sd());
  vae.allocate(b);
  nn::init_random(b, vae, 7);
  auto image = Tensor<CpuBackend>::empty(b, {1, 3, size, size});
  b.fill_uniform(image.data<float>(), static_cast<std::size_t>(image.numel()), 1, 0, -1.0f, 1.0f);
  auto start = Clock::now();
  const auto moments = vae.encode(b, image);
  const double encode_s = seconds(start);
  std::fprintf(stderr, "VAE encode %s -> %s: %.2f s\n", image.shape().str().c_str(), moments.shape().str().c_str(), encode_s);
  const auto latents = vae.sample(b, moments, 2, 0);
  start = Clock::now();
  const auto decoded = vae.decode(b, latents);
  const double decode_s = seconds(start);
  std::fprintf(stderr, "VAE decode -> %s: %.2f s\n", decoded.shape().str().c_str(), decode_s);

  models::CLIPTextModel<CpuBackend> clip(models::CLIPTextConfig::vit_l14());
  clip.allocate(b);
  nn::init_random(b, clip, 8);
  std::vector<std::int32_t> ids(77, 49407);
  ids[0] = 49406;
  for (int i = 1; i < 8; ++i) ids[static_cast<std::size_t>(i)] = 320 + i;
  models::CLIPTextModel<CpuBackend>::Activations activations;
  clip.forward(b, ids, 1, 77, activations);  // warm-up
  start = Clock::now();
  const auto hidden = clip.forward(b, ids, 1, 77, activations);
  const double clip_forward_s = seconds(start);
  start = Clock::now();
  clip.backward(b, hidden, activations);
  const double clip_backward_s = seconds(start);

  const double pixels = static_cast<double>(size * size) / (512.0 * 512.0);
  std::printf(
      "{\n  \"threads\": %d,\n  \"vae_parameters\": %lld,\n  \"clip_parameters\": %lld,\n  \"image\": %lld,\n"
      "  \"vae_encode_seconds\": %.2f,\n  \"vae_encode_gflops\": %.1f,\n  \"vae_decode_seconds\": %.2f,\n  \"vae_decode_gflops\": %.1f,\n"
      "  \"clip_forward_seconds\": %.3f,\n  \"clip_forward_gflops\": %.1f,\n  \"clip_backward_seconds\": %.3f\n}\n",
      omp_get_max_threads(), static_cast<long long>(vae.parameter_count()), static_cast<long long>(clip.parameter_count()),
      static_cast<long long>(size), encode_s, 1117.0 * pixels / encode_s, decode_s, 2515.0 * pixels / decode_s, clip_forward_s, 13.0 / clip_forward_s,
      clip_backward_s);
  return 0;
}
