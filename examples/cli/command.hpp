// What the dreambooth commands share: how a command registers itself (its CLI11 subcommand and the body run when it is
// chosen), the --device / --precision options, and the options of the commands that load a model.
#pragma once

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dreambooth/device_dispatch.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/pipeline/lora_files.hpp"

namespace cli {

// A command's body, run after the whole command line has parsed; returns the exit status.
using Run = std::function<int()>;

// Each command file defines one of these: it adds its subcommand to `root` and sets `run` to its body.
void add_inspect(CLI::App& root, Run& run);
void add_convert(CLI::App& root, Run& run);
void add_unet(CLI::App& root, Run& run);
void add_render_demo_images(CLI::App& root, Run& run);
void add_demo_report(CLI::App& root, Run& run);
void add_train(CLI::App& root, Run& run);
void add_generate(CLI::App& root, Run& run);

// Adds the subcommand `name`; when the command line chooses it, `run` is set to body(arguments), the arguments filled in
// by the options the caller adds to the returned subcommand. `body` is a function of `Arguments&` returning the exit status.
template <class Arguments, class Body>
std::pair<CLI::App*, std::shared_ptr<Arguments>> add_command(CLI::App& root, Run& run, const std::string& name, const std::string& description,
                                                             Body body) {
  auto arguments = std::make_shared<Arguments>();
  auto* app = root.add_subcommand(name, description);
  app->callback([&run, arguments, body] { run = [arguments, body] { return body(*arguments); }; });
  return {app, arguments};
}

// --device cpu|cuda and --precision fp32|tf32|bf16|fp16.
inline void add_device_options(CLI::App& app, dreambooth::DeviceChoice& d) {
  app.add_option("--device", d.device, "cpu or cuda (GPU 0, in a build with the CUDA backend)")->capture_default_str();
  app.add_option("--precision", d.precision, "GEMM / convolution compute precision on the GPU: fp32, tf32, bf16, fp16 (the CPU: fp32)")
      ->capture_default_str();
}

// The options of the commands that load a model: --configs, --tokenizer, --ema, the components and architectures
// from elsewhere (--unet / --vae / --text-encoder and their --*-config), as training takes them from its keys, and
// LoRA files merged into the loaded weights (--lora FILE[:WEIGHT], repeatable).
struct LoadArguments {
  std::string tokenizer, configs;
  bool ema = false;
  dreambooth::pipeline::ComponentFiles components;
  std::vector<std::string> loras;

  void add_to(CLI::App& app) {
    app.add_option("--configs", configs, "a diffusers-style folder with the component configs (and tokenizer) for a single file");
    app.add_option("--tokenizer", tokenizer, "a folder with the CLIP tokenizer's vocab.json and merges.txt");
    app.add_flag("--ema", ema, "take the UNet's EMA copy where the file holds one");
    app.add_option("--lora", loras,
                   "FILE[:WEIGHT]: a LoRA (kohya's lora_unet_ / lora_te_ keys, or diffusers' pytorch_lora_weights.safetensors) merged into "
                   "the weights at WEIGHT (default 1); repeat for several");
    struct Component {
      const char *name, *what, *folder;
      std::filesystem::path *weights, *config;
    };
    auto& c = components;
    for (const Component& k :
         {Component{"unet", "UNet", "a diffusers folder, a .nemo", &c.unet, &c.unet_config},
          Component{"vae", "VAE", "a diffusers folder, a .nemo", &c.vae, &c.vae_config},
          Component{"text-encoder", "text encoder", "a transformers folder, a CLIP .nemo", &c.text_encoder, &c.text_encoder_config}}) {
      const std::string option = std::string("--") + k.name;
      app.add_option(option, *k.weights,
                     std::string("the ") + k.what + " from elsewhere: " + k.folder + ", or a weights file (with " + option + "-config)")
          ->check(CLI::ExistingPath);
      app.add_option(option + "-config", *k.config,
                     std::string("the architecture (a diffusers / transformers config.json) of ") + option +
                         "'s weights file, or of a single file's " + k.what + " (default: SD 1.5's)")
          ->check(CLI::ExistingFile);
    }
  }
  dreambooth::pipeline::LoadOptions options(const std::string& command) const {
    dreambooth::pipeline::LoadOptions l;
    l.tokenizer = tokenizer;
    if (!configs.empty()) {
      l.configs = configs;
      if (l.tokenizer.empty() && std::filesystem::exists(l.configs / "tokenizer")) l.tokenizer = l.configs / "tokenizer";
    }
    l.ema = ema;
    l.note = [command](const std::string& n) { std::fprintf(stderr, "%s: note: %s\n", command.c_str(), n.c_str()); };
    return l;
  }
  // Merges every --lora into the loaded pipeline, in order, each at its weight.
  template <class B>
  void apply_loras(dreambooth::pipeline::TextToImagePipeline<B>& pipe, const std::string& command) const {
    for (const auto& given : loras) {
      std::string file = given;
      double weight = 1.0;
      if (const auto colon = given.rfind(':'); colon != std::string::npos && colon + 1 < given.size()) {
        try {
          std::size_t used = 0;
          const double w = std::stod(given.substr(colon + 1), &used);
          if (used == given.size() - colon - 1) {
            if (!std::isfinite(w)) dreambooth::fail("--lora ", given, ": the weight is not a finite number");
            weight = w;
            file = given.substr(0, colon);
          }
        } catch (const std::logic_error&) {  // not a number: the colon is part of the path
        }
      }
      if (!std::filesystem::exists(file)) dreambooth::fail("--lora ", file, ": the file does not exist");
      const auto n = dreambooth::pipeline::merge_lora(pipe, dreambooth::pipeline::read_lora(file, pipe), weight);
      std::fprintf(stderr, "%s: merged LoRA %s into %zu layers at weight %g\n", command.c_str(), file.c_str(), n, weight);
    }
  }
  // What to load: `model`, with the components and architectures the options name.
  dreambooth::pipeline::PipelineSpec spec(const std::filesystem::path& model, const std::string& command) const {
    return dreambooth::pipeline::describe_pipeline(model, options(command), components);
  }
};

// Refuses an output whose directory does not exist, before anything runs.
inline void check_output_directory(const std::filesystem::path& output) {
  if (output.has_parent_path() && !std::filesystem::is_directory(output.parent_path()))
    dreambooth::fail("output directory ", output.parent_path().string(), " does not exist");
}

}  // namespace cli
