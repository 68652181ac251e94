// TextToImagePipeline<Backend>: Stable Diffusion sampling as diffusers' StableDiffusionPipeline does it.
//
// prompt and negative prompt -> CLIP tokenizer -> text encoder (last_hidden_state) -> [negative, prompt] embeddings;
// latents N(0, 1) (counter-based, seed) scaled by the scheduler's init_noise_sigma; per timestep the UNet runs on the
// unconditional and conditional halves batched together, eps = eps_u + g (eps_c - eps_u) (only the conditional half when
// g <= 1), the scheduler steps; the VAE decodes latents / scaling_factor; images (x / 2 + 0.5) clamped to [0, 1] and
// quantised as round(x * 255).
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/io/vae_loading.hpp"
#include "dreambooth/schedulers/schedulers.hpp"
#include "dreambooth/tokenizer/clip_tokenizer.hpp"

namespace dreambooth::pipeline {

struct GenerationOptions {
  std::string prompt;
  std::string negative_prompt;
  int steps = 50;
  double guidance_scale = 7.5;
  std::int64_t width = 512, height = 512;
  std::uint64_t seed = 0;
  int images_per_prompt = 1;
  std::string scheduler;                      // empty: the pipeline's scheduler_config.json class
  double eta = 0.0;                           // DDIM only
  std::optional<std::vector<float>> latents;  // initial latents [images, 4, h, w] (before init_noise_sigma), instead of the seed's
  std::function<void(int step, int total)> progress;
};

struct GenerationResult {
  std::vector<float> latents;        // final latents [images, C, h, w], before decoding
  std::vector<float> images;         // [images, 3, H, W] in [0, 1]
  std::vector<std::uint8_t> pixels;  // [images, H, W, 3], round(x * 255)
  std::vector<double> timesteps;     // what the UNet was called with
  std::size_t prompt_tokens = 0;     // untruncated token count of the prompt (> 77: truncated)
};

// The tokenizer's files as loaded, so that exports can write them again (a .nemo or a single file carries none of its own).
struct TokenizerFiles {
  std::string vocab_json, merges_txt;
  std::string pad_token = "<|endoftext|>";  // SD 1.x's; SD 2.x's tokenizer pads with "!"
  static TokenizerFiles from_folder(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    const auto folder = fs::exists(path / "vocab.json") || !fs::exists(path / "tokenizer") ? path : path / "tokenizer";
    const auto read = [](const fs::path& f) {
      std::ifstream in(f, std::ios::binary);
      if (!in) fail("tokenizer: cannot read ", f.string());
      return std::string(std::istreambuf_iterator<char>(in), {});
    };
    TokenizerFiles files{read(folder / "vocab.json"), read(folder / "merges.txt")};
    if (fs::exists(folder / "special_tokens_map.json")) {
      try {
        const auto j = nlohmann::json::parse(read(folder / "special_tokens_map.json"));
        if (j.contains("pad_token"))
          files.pad_token = j["pad_token"].is_string() ? j["pad_token"].get<std::string>() : j["pad_token"].at("content").get<std::string>();
      } catch (const nlohmann::json::exception& e) {
        fail("tokenizer: ", (folder / "special_tokens_map.json").string(), ": ", e.what());
      }
    }
    return files;
  }
};

template <class B>
class TextToImagePipeline {
 public:
  std::unique_ptr<models::UNet2DConditionModel<B>> unet;
  std::unique_ptr<models::CLIPTextModel<B>> text_encoder;
  std::unique_ptr<models::AutoencoderKL<B>> vae;
  std::unique_ptr<tokenizer::CLIPTokenizer> tokenizer;
  schedulers::SchedulerConfig scheduler_config;
  std::optional<TokenizerFiles> tokenizer_files;  // where the loader had them

  // An empty pipeline whose components the caller fills in (load_pipeline.hpp).
  explicit TextToImagePipeline(B& b) : backend_(&b) {}
  B& backend() const { return *backend_; }

  // From components already built (e.g. with random weights, for benchmarks and demos).
  TextToImagePipeline(B& b, std::unique_ptr<models::UNet2DConditionModel<B>> u, std::unique_ptr<models::CLIPTextModel<B>> t,
                      std::unique_ptr<models::AutoencoderKL<B>> v, std::unique_ptr<tokenizer::CLIPTokenizer> tok, schedulers::SchedulerConfig sc)
      : unet(std::move(u)), text_encoder(std::move(t)), vae(std::move(v)), tokenizer(std::move(tok)), scheduler_config(std::move(sc)), backend_(&b) {}

  // A diffusers pipeline folder (unet/, text_encoder/, vae/, tokenizer/, scheduler/).
  static TextToImagePipeline from_pretrained(B& b, const std::filesystem::path& folder) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(folder)) fail("pipeline: ", folder.string(), " is not a directory");
    for (const char* part : {"unet", "text_encoder", "vae", "tokenizer"})
      if (!fs::is_directory(folder / part))
        fail("pipeline: ", folder.string(), " has no ", part,
             "/ folder (a diffusers pipeline folder holds unet/, vae/, text_encoder/, tokenizer/, scheduler/)");
    TextToImagePipeline p(b);
    p.unet = io::load_unet(b, folder / "unet");
    p.text_encoder = io::load_clip_text(b, folder / "text_encoder");
    p.vae = io::load_vae(b, folder / "vae");
    p.tokenizer = std::make_unique<tokenizer::CLIPTokenizer>(tokenizer::CLIPTokenizer::from_folder(folder / "tokenizer"));
    p.tokenizer_files = TokenizerFiles::from_folder(folder / "tokenizer");
    const auto scheduler_file = folder / "scheduler" / "scheduler_config.json";
    p.scheduler_config = fs::exists(scheduler_file) ? schedulers::SchedulerConfig::from_file(scheduler_file) : schedulers::SchedulerConfig{};
    return p;
  }

  // An original single-file checkpoint (UNet, VAE and text encoder; SD 1.x configurations unless given) and a
  // tokenizer folder (vocab.json + merges.txt), which single files do not carry.
  static TextToImagePipeline from_single_file(B& b, const std::filesystem::path& file, const std::filesystem::path& tokenizer_folder,
                                              models::UNetConfig unet_config = models::UNetConfig::sd15(),
                                              models::CLIPTextConfig clip_config = models::CLIPTextConfig::vit_l14(),
                                              models::VAEConfig vae_config = models::VAEConfig::sd()) {
    if (!std::filesystem::is_regular_file(file)) fail("pipeline: model file ", file.string(), " does not exist");
    TextToImagePipeline p(b);
    p.unet = io::load_unet(b, file, unet_config);
    p.text_encoder = io::load_clip_text(b, file, clip_config);
    p.vae = io::load_vae(b, file, vae_config);
    p.tokenizer = std::make_unique<tokenizer::CLIPTokenizer>(tokenizer::CLIPTokenizer::from_folder(tokenizer_folder));
    p.tokenizer_files = TokenizerFiles::from_folder(tokenizer_folder);
    return p;
  }

  // Prompt embeddings [n, 77, D] for `count` copies of each prompt: the negatives first when guidance is on.
  Tensor<B> encode_prompts(const std::vector<std::string>& prompts, std::size_t* first_token_count = nullptr) {
    std::vector<std::int32_t> ids;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const auto e = tokenizer->encode(prompts[i]);
      if (i == prompts.size() - 1 && first_token_count) *first_token_count = e.token_count;
      ids.insert(ids.end(), e.ids.begin(), e.ids.end());
    }
    typename models::CLIPTextModel<B>::Activations a;
    return text_encoder->forward(*backend_, ids, static_cast<std::int64_t>(prompts.size()), static_cast<std::int64_t>(tokenizer->max_length()), a);
  }

  GenerationResult generate(const GenerationOptions& o) {
    B& b = *backend_;
    const auto f = vae->config.downscale();
    const std::int64_t unet_factor = std::int64_t{1} << (unet->config.levels() - 1);
    if (o.steps <= 0) fail("generate: the number of steps must be positive, not ", o.steps);
    if (o.width <= 0 || o.height <= 0 || o.width % 8 || o.height % 8)
      fail("generate: width and height (", o.width, "x", o.height, ") must be positive multiples of 8");
    if ((o.width / f) % unet_factor || (o.height / f) % unet_factor)
      fail("generate: width and height must be multiples of ", f * unet_factor, " for this model");
    if (o.images_per_prompt < 1) fail("generate: images per prompt must be at least 1");
    auto scheduler = schedulers::make_scheduler(o.scheduler.empty() ? scheduler_config.class_name : o.scheduler, scheduler_config, o.eta);
    scheduler->set_timesteps(o.steps);

    const bool guided = o.guidance_scale > 1.0;
    const auto n = static_cast<std::int64_t>(o.images_per_prompt);
    std::vector<std::string> prompts;
    if (guided) prompts.insert(prompts.end(), static_cast<std::size_t>(n), o.negative_prompt);
    prompts.insert(prompts.end(), static_cast<std::size_t>(n), o.prompt);
    GenerationResult result;
    const auto context = encode_prompts(prompts, &result.prompt_tokens);

    const std::int64_t C = unet->config.in_channels, h = o.height / f, w = o.width / f;
    const auto per_batch = static_cast<std::size_t>(n * C * h * w);
    std::vector<float> latents;
    if (o.latents) {
      if (o.latents->size() != per_batch) fail("generate: ", o.latents->size(), " initial latent values for [", n, ", ", C, ", ", h, ", ", w, "]");
      latents = *o.latents;
    } else {
      latents.resize(per_batch);
      for (std::size_t i = 0; i < per_batch; ++i) latents[i] = rng::normal(o.seed, 0, i);
    }
    const double sigma0 = scheduler->init_noise_sigma();
    for (auto& v : latents) v = static_cast<float>(v * sigma0);

    const auto noise = schedulers::philox_noise(o.seed);
    const auto& timesteps = scheduler->timesteps();
    for (std::size_t i = 0; i < timesteps.size(); ++i) {
      std::vector<float> input = latents;
      scheduler->scale_model_input(input, i);
      if (guided) input.insert(input.end(), input.begin(), input.end());
      const auto sample = Tensor<B>::from_host(b, {guided ? 2 * n : n, C, h, w}, input);
      const auto out = unet->infer(b, sample, {static_cast<float>(timesteps[i])}, context).to_host();
      std::vector<float> eps(out.end() - static_cast<std::ptrdiff_t>(per_batch), out.end());
      if (guided)
        for (std::size_t k = 0; k < per_batch; ++k) eps[k] = out[k] + static_cast<float>(o.guidance_scale) * (eps[k] - out[k]);
      latents = scheduler->step(eps, i, latents, noise);
      if (o.progress) o.progress(static_cast<int>(i + 1), static_cast<int>(timesteps.size()));
    }
    result.timesteps = timesteps;
    result.latents = latents;

    std::vector<float> scaled = latents;
    for (auto& v : scaled) v = static_cast<float>(v / vae->config.scaling_factor);
    result.images = vae->decode(b, Tensor<B>::from_host(b, {n, C, h, w}, scaled)).to_host();
    for (auto& v : result.images) v = std::clamp(v / 2.0f + 0.5f, 0.0f, 1.0f);
    const auto H = o.height, W = o.width;
    result.pixels.resize(result.images.size());
    for (std::int64_t k = 0; k < n; ++k)
      for (std::int64_t c = 0; c < 3; ++c)
        for (std::int64_t y = 0; y < H; ++y)
          for (std::int64_t x = 0; x < W; ++x)
            result.pixels[static_cast<std::size_t>(((k * H + y) * W + x) * 3 + c)] =
                static_cast<std::uint8_t>(std::nearbyint(result.images[static_cast<std::size_t>(((k * 3 + c) * H + y) * W + x)] * 255.0f));
    return result;
  }

 private:
  B* backend_;
};

}  // namespace dreambooth::pipeline
