// dreambooth generate --model PATH --prompt TEXT --output OUT.png [options]: text-to-image sampling from a diffusers
// folder, a .nemo or an original single file, with components and architectures from elsewhere as training takes them
// (--unet / --vae / --text-encoder, --unet-config / --vae-config / --text-encoder-config: cli::LoadArguments);
// each PNG carries A1111's parameters (pipeline/infotext.hpp).
#include <chrono>
#include <cmath>

#include "command.hpp"
#include "dreambooth/core/progress.hpp"
#include "dreambooth/io/png.hpp"
#include "dreambooth/pipeline/infotext.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"

namespace cli {

namespace {
struct Arguments {
  std::string model, output;
  dreambooth::pipeline::GenerationOptions g;
  LoadArguments load;
  dreambooth::DeviceChoice device;
};

int generate(Arguments& a) {
  using namespace dreambooth;
  namespace fs = std::filesystem;
  using Clock = std::chrono::steady_clock;
  auto& g = a.g;
  const fs::path model_path = a.model, output = a.output;
  // Settings that are wrong whatever the model: refused before loading anything.
  if (g.steps <= 0) fail("--steps must be positive, not ", g.steps);
  if (g.width <= 0 || g.height <= 0 || g.width % 8 || g.height % 8)
    fail("--width and --height (", g.width, "x", g.height, ") must be positive multiples of 8");
  if (g.images_per_prompt <= 0) fail("--images must be positive, not ", g.images_per_prompt);
  if (!g.scheduler.empty()) schedulers::make_scheduler(g.scheduler, {});
  check_output_directory(output);
  return run_on_device(a.device, "generate", [&]<class B>(B& backend) {
    auto start = Clock::now();
    auto pipe = pipeline::load_pipeline(backend, a.load.spec(model_path, "generate"));
    a.load.apply_loras(pipe, "generate");
    if (pipe.text_encoder->config.hidden_size != pipe.unet->config.cross_attention_dim)
      fail("the text encoder's width ", pipe.text_encoder->config.hidden_size, " is not the UNet's cross-attention width ",
           pipe.unet->config.cross_attention_dim, " (--unet, --text-encoder and their configs name models that do not fit together)");
    std::fprintf(stderr, "generate: loaded %s in %.1f s\n", model_path.string().c_str(), std::chrono::duration<double>(Clock::now() - start).count());
    start = Clock::now();
    ProgressLine progress;
    g.progress = [&](int step, int total) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      char text[120];
      std::snprintf(text, sizeof text, "generate: step %d/%d  %.2f s/step  ETA %.0f s", step, total, elapsed / step, elapsed / step * (total - step));
      progress.update(text, step == total);
    };
    const auto result = pipe.generate(g);
    for (const float v : result.latents)
      if (!std::isfinite(v)) fail("the model's output is not finite (NaN or infinity): its weights are damaged; no image was written");
    if (result.prompt_tokens > pipe.tokenizer->max_length())
      std::fprintf(stderr, "generate: warning: the prompt has %zu tokens; it was truncated to %zu\n", result.prompt_tokens,
                   pipe.tokenizer->max_length());
    pipeline::InfotextSettings infotext{.prompt = g.prompt,
                                        .negative_prompt = g.negative_prompt,
                                        .steps = g.steps,
                                        .scheduler = g.scheduler.empty() ? pipe.scheduler_config.class_name : g.scheduler,
                                        .guidance_scale = g.guidance_scale,
                                        .eta = g.eta,
                                        .seed = g.seed,
                                        .width = g.width,
                                        .height = g.height,
                                        .model = model_path,
                                        .model_hash = pipeline::a1111_model_hash(model_path),
                                        .images = g.images_per_prompt};
    const auto pixels_per_image = static_cast<std::size_t>(g.width * g.height * 3);
    for (int i = 0; i < g.images_per_prompt; ++i) {
      auto path = output;
      if (g.images_per_prompt > 1) path = output.parent_path() / (output.stem().string() + "-" + std::to_string(i) + output.extension().string());
      infotext.image = i;
      io::write_png(path, result.pixels.data() + static_cast<std::size_t>(i) * pixels_per_image, g.width, g.height,
                    {{"parameters", pipeline::generation_infotext(infotext).text()}, {"Software", "dreambooth.cpp"}});
      std::fprintf(stderr, "generate: wrote %s\n", path.string().c_str());
    }
    return 0;
  });
}
}  // namespace

void add_generate(CLI::App& root, Run& run) {
  auto [app, a] = add_command<Arguments>(root, run, "generate",
                                         "sample images from a diffusers pipeline folder, a .nemo or an original single file (then "
                                         "--configs names a folder with the component configs and tokenizer, or SD 1.5's "
                                         "configurations and --tokenizer DIR are used)",
                                         generate);
  auto& g = a->g;
  app->add_option("--model", a->model, "the model")->required();
  app->add_option("--prompt", g.prompt, "the prompt")->required();
  app->add_option("--output", a->output, "the PNG to write; with --images N > 1, OUT-0.png ... OUT-(N-1).png")->required();
  app->add_option("--negative-prompt", g.negative_prompt, "the negative prompt");
  app->add_option("--steps", g.steps, "sampling steps")->capture_default_str();
  app->add_option("--guidance", g.guidance_scale, "classifier-free guidance scale")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& text) {  // CLI::Range lets NaN through (every comparison with it is false)
            double v = 0;
            return CLI::detail::lexical_cast(text, v) && std::isfinite(v) && std::abs(v) <= 100
                       ? std::string()
                       : "guidance " + text + " is not a finite number in [-100, 100]";
          },
          "a finite number in [-100, 100]"));
  app->add_option("--width", g.width, "image width, a multiple of 8")->capture_default_str();
  app->add_option("--height", g.height, "image height, a multiple of 8")->capture_default_str();
  app->add_option("--seed", g.seed, "the seed of the initial noise")->capture_default_str();
  app->add_option("--images", g.images_per_prompt, "images to sample")->capture_default_str();
  app->add_option("--scheduler", g.scheduler, "pndm, ddim, euler, euler_a or dpm++2m (default: the pipeline's)");
  app->add_option("--eta", g.eta, "DDIM's eta (0: deterministic, 1: DDPM's variance)")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  a->load.add_to(*app);
  add_device_options(*app, a->device);
}

}  // namespace cli
