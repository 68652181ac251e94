// Seconds per sampling step of the full SD 1.5 pipeline (random weights) at 512x512 on the CPU (or with --device cuda
// on GPU 0): classifier-free guidance batches the two halves, so one step is one UNet forward at batch 2 on 64x64
// latents plus the scheduler. Also times the text encoding and the VAE decode. Prints one JSON object.
//   sampling_bench [--steps N] [--size S] [--scheduler NAME] [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <numeric>
#include <string>

#include "bench_device.hpp"
#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/nn/init.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

template <class B>
int run(B& b, const bench::Device& device, int steps, std::int64_t size, const std::string& scheduler) {
  auto unet = std::make_unique<models::UNet2DConditionModel<B>>(models::UNetConfig::sd15());
  auto clip = std::make_unique<models::CLIPTextModel<B>>(models::CLIPTextConfig::vit_l14());
  auto vae = std::make_unique<models::AutoencoderKL<B>>(models::VAEConfig::sd());
  unet->allocate(b);
  clip->allocate(b);
  vae->allocate(b);
  nn::init_random(b, *unet, 1);
  nn::init_random(b, *clip, 2);
  nn::init_random(b, *vae, 3);
  const std::string vocab = DREAMBOOTH_SOURCE_DIR "/tests/data/clip_tokenizer";
  auto tokenizer = std::make_unique<tokenizer::CLIPTokenizer>(vocab + "/vocab.json", vocab + "/merges.txt");
  pipeline::TextToImagePipeline<B> pipe(b, std::move(unet), std::move(clip), std::move(vae), std::move(tokenizer), {});

  pipeline::GenerationOptions o;
  o.prompt = "a photo of sks dog in the snow";
  o.steps = steps;
  o.width = o.height = size;
  o.scheduler = scheduler;
  std::vector<double> step_times;
  auto last = Clock::now();
  const auto start = last;
  o.progress = [&](int step, int total) {
    const auto now = Clock::now();
    step_times.push_back(std::chrono::duration<double>(now - last).count());
    std::fprintf(stderr, "step %d/%d: %.2f s\n", step, total, step_times.back());
    last = now;
  };
  const auto result = pipe.generate(o);
  const double total = std::chrono::duration<double>(Clock::now() - start).count();
  double sum = 0, best = 1e30;
  for (std::size_t i = 1; i < step_times.size(); ++i) sum += step_times[i], best = std::min(best, step_times[i]);  // step 0 also encodes text
  const std::size_t counted = step_times.size() > 1 ? step_times.size() - 1 : 1;
  const double after_loop = total - std::accumulate(step_times.begin(), step_times.end(), 0.0);
  const int digits = bench::seconds_digits(b);
  std::printf(
      "{\n  \"model\": \"SD 1.5 (random weights)\",\n%s  \"size\": %lld,\n  \"scheduler\": \"%s\",\n  \"threads\": %d,\n"
      "  \"unet_calls\": %zu,\n  \"seconds_per_step\": %.*f,\n  \"best_step_seconds\": %.*f,\n  \"first_step_seconds_with_text_encoding\": %.*f,\n"
      "  \"vae_decode_seconds\": %.*f,\n  \"total_seconds\": %.*f\n}\n",
      bench::device_json(b, device).c_str(), static_cast<long long>(size), scheduler.c_str(), omp_get_max_threads(), step_times.size(), digits,
      sum / static_cast<double>(counted), digits, step_times.size() > 1 ? best : step_times[0], digits, step_times[0], digits, after_loop, digits,
      total);
  return result.pixels.empty();
}

int main(int argc, char** argv) {
  int steps = 3;
  std::int64_t size = 512;
  std::string scheduler = "pndm";
  bench::Device device;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (device.parse(argc, argv, i)) continue;
    if (a == "--steps" && i + 1 < argc)
      steps = std::stoi(argv[++i]);
    else if (a == "--size" && i + 1 < argc)
      size = std::stoll(argv[++i]);
    else if (a == "--scheduler" && i + 1 < argc)
      scheduler = argv[++i];
    else {
      std::fprintf(stderr, "usage: sampling_bench [--steps N] [--size S] [--scheduler NAME] [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]\n");
      return 2;
    }
  }
  return bench::on_device(device, [&](auto& b) { return run(b, device, steps, size, scheduler); });
}
