// The dreambooth command. Subcommands grow with the project (train, generate, cache-latents, convert, ...).
//   dreambooth inspect FILE   list the tensors (name, dtype, shape, bytes), metadata and layout of a weights file
//                             (.safetensors, .ckpt / .pt / .bin) or a .nemo archive
//   dreambooth convert --model SRC --output DST [--format F] [--precision 32|16|bf16] [--ema]   any model to any format
//   dreambooth unet --model PATH --inputs IN.safetensors --output OUT.safetensors [--grad] [--config config.json]
//                   [--checkpointing]
//       run the UNet on inputs read from a file (input.sample, input.timesteps, input.encoder_hidden_states) and
//       write `output`; with --grad also the gradients of sum(output * R) (R read from the inputs file) as
//       grad.<parameter> and grad_input.<input>: any reference can be compared without recompiling.
//   dreambooth generate --model PATH --prompt TEXT --output OUT.png [options]   text-to-image sampling (see usage)
//   dreambooth train [--config FILE.yaml] [--device cpu|cuda] [key=value ...]     DreamBooth fine-tuning
// The commands that run a model take --device cpu|cuda (default cpu): the command bodies are templates on the backend,
// instantiated for CpuBackend and, when the program is built with the CUDA backend (DREAMBOOTH_WITH_CUDA), CudaBackend.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/nemo_archive.hpp"
#include "dreambooth/io/open_tensors.hpp"
#include "dreambooth/io/png.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/pipeline/export.hpp"
#include "dreambooth/pipeline/infotext.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"
#include "dreambooth/train/trainer.hpp"
#ifdef DREAMBOOTH_WITH_CUDA
#include "dreambooth/backends/cuda.hpp"
#endif

namespace {

int usage(std::FILE* out) {
  std::fputs(
      "usage: dreambooth <command> [arguments]\n"
      "commands:\n"
      "  inspect FILE               list the tensors, metadata and checkpoint layout of a weights file (.safetensors,\n"
      "                             .ckpt, .pt, .bin) or a .nemo archive\n"
      "  convert --model SRC --output DST [--format diffusers|safetensors|ckpt|nemo] [--precision 32|16|bf16] [--ema]\n"
      "          [--tokenizer DIR] [--configs DIR] [--device cpu|cuda]\n"
      "                             convert a model (a diffusers folder, a .nemo, one original .safetensors / .ckpt) into a\n"
      "                             diffusers folder, one original .safetensors or .ckpt (A1111, ComfyUI, stable-diffusion.cpp),\n"
      "                             or a .nemo (format from --format, else DST's extension); --ema takes the UNet's EMA copy.\n"
      "                             The written file is read back and compared with the weights it came from\n"
      "  unet --model PATH --inputs IN.safetensors --output OUT.safetensors [--grad] [--config FILE] [--checkpointing]\n"
      "       [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]\n"
      "                             run the UNet (a diffusers folder, or a single file with --config or SD 1.5's)\n"
      "                             on input.sample, input.timesteps, input.encoder_hidden_states; write output\n"
      "                             and, with --grad, the gradients of sum(output * R) (R from the inputs file)\n"
      "  render-demo-images --output-dir DIR [--count 4] [--size 128]\n"
      "                             draw the demo's instance images (a made-up subject on varied backgrounds)\n"
      "  train [--config FILE.yaml] [--device cpu|cuda] [key=value ...]\n"
      "                             DreamBooth fine-tuning with NeMo's configuration keys (docs/training.md); NeMo's own\n"
      "                             DreamBooth YAML loads as it is (docs/nemo.md, examples/nemo_dreambooth.yaml). E.g.\n"
      "                             model.restore_from_path=DIR model.data.instance_dir=DIR\n"
      "                             model.data.instance_prompt=\"a photo of sks dog\" trainer.max_steps=400\n"
      "                             (--device cuda is trainer.device=cuda; trainer.precision=bf16 or 16 on the GPU)\n"
      "  generate --model PATH --prompt TEXT --output OUT.png [--negative-prompt TEXT] [--steps 50]\n"
      "           [--guidance 7.5] [--width 512] [--height 512] [--seed 0] [--images 1] [--scheduler NAME]\n"
      "           [--eta 0] [--configs DIR] [--tokenizer DIR] [--ema] [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]\n"
      "                             sample images from a diffusers pipeline folder, a .nemo or an original single file\n"
      "                             (then --configs names a diffusers-style folder with the component configs and\n"
      "                             tokenizer, or SD 1.5's configurations and --tokenizer DIR are used). Schedulers:\n"
      "                             pndm, ddim, euler, euler_a, dpm++2m (default: the pipeline's). With --images N > 1\n"
      "                             the files are OUT-0.png ... OUT-(N-1).png\n"
      "--device cuda runs on the CUDA backend (GPU 0) when the program was built with it; --precision sets its GEMM and\n"
      "convolution compute precision (storage stays fp32; the CPU backend computes in fp32 only).\n",
      out);
  return out == stdout ? 0 : 2;
}

int inspect(const std::string& path) {
  using namespace dreambooth;
  std::unique_ptr<io::NemoArchive> archive;
  std::unique_ptr<io::TensorSource> owned;
  const io::TensorSource* source = nullptr;
  if (pipeline::model_kind(path) == pipeline::ModelKind::Nemo) {
    archive = std::make_unique<io::NemoArchive>(path);
    std::printf(".nemo archive, model %s\n", archive->target().c_str());
    for (const auto& m : archive->members()) std::printf("member %s\n", m.c_str());
    owned = archive->weights();
  } else {
    owned = io::open_tensor_source(path);
  }
  source = owned.get();
  std::printf("format %s\n", std::string(source->format()).c_str());
  if (const auto layout = io::detect_layout(*source))
    std::printf("layout %s (UNet %s, VAE %s, text encoder %s)%s\n", layout->name.c_str(),
                layout->unet_prefix.empty() ? "-" : layout->unet_prefix.c_str(), layout->vae_prefix.empty() ? "-" : layout->vae_prefix.c_str(),
                layout->text_prefix.empty() ? "-" : layout->text_prefix.c_str(), io::has_unet_ema(*source) ? ", with a UNet EMA copy" : "");
  std::uint64_t total = 0;
  for (const auto& [key, value] : source->metadata()) std::printf("metadata %s = %s\n", key.c_str(), value.c_str());
  for (const auto& [name, info] : source->tensors()) {
    std::printf("%-60s %-5s %-22s %12llu bytes\n", name.c_str(), std::string(io::st_dtype_name(info.dtype)).c_str(), info.shape.str().c_str(),
                static_cast<unsigned long long>(info.bytes()));
    total += info.bytes();
  }
  std::printf("%zu tensors, %llu bytes of data\n", source->tensors().size(), static_cast<unsigned long long>(total));
  return 0;
}

// --name value options and --flag switches, checked against the allowed set.
struct Options {
  std::map<std::string, std::string> values;
  std::map<std::string, bool> flags;
  static Options parse(int argc, char** argv, int first, const std::vector<std::string>& valued, const std::vector<std::string>& switches) {
    Options o;
    for (int i = first; i < argc; ++i) {
      const std::string a = argv[i];
      if (std::find(switches.begin(), switches.end(), a) != switches.end()) {
        o.flags[a] = true;
      } else if (std::find(valued.begin(), valued.end(), a) != valued.end()) {
        if (i + 1 >= argc) dreambooth::fail("option ", a, " needs a value");
        o.values[a] = argv[++i];
      } else {
        dreambooth::fail("unknown option '", a, "'");
      }
    }
    return o;
  }
  const std::string& required(const std::string& name) const {
    const auto it = values.find(name);
    if (it == values.end()) dreambooth::fail("missing option ", name);
    return it->second;
  }
  bool flag(const std::string& name) const { return flags.count(name) != 0; }
};

// The compute precision named by --precision (or trainer.precision): "fp32", "tf32", "bf16" or "fp16".
std::string precision_option(const std::string& value, const char* option) {
  auto precision = dreambooth::train::canonical_precision(value);
  if (precision.empty()) dreambooth::fail("option ", option, ": \"", value, "\" is not one of fp32, tf32, bf16, fp16");
  return precision;
}

// Runs body(backend) on the backend that --device names: the CPU backend (fp32 only) or, in a build with the CUDA
// backend, GPU 0 at the given compute precision. Nothing is written before the backend exists, so a missing GPU stops a
// command before any output.
// `origin` names where the device was chosen, for the messages.
template <class Body>
int on_device(const std::string& command, const std::string& device, const std::string& precision, Body&& body,
              const std::string& origin = "--device") {
  using namespace dreambooth;
  const std::string cuda = origin == "--device" ? "--device cuda" : origin + "=cuda";
  if (device == "cpu") {
    if (precision != "fp32") fail("--precision ", precision, ": the CPU backend computes in fp32 only (--precision fp32, or --device cuda)");
    CpuBackend backend;
    return body(backend);
  }
  if (device != "cuda") fail(origin, " \"", device, "\" is not cpu or cuda");
#ifdef DREAMBOOTH_WITH_CUDA
  const auto compute = parse_cuda_precision(precision);
  if (CudaBackend::device_count() == 0) fail(cuda, ": no CUDA device is available (no NVIDIA GPU is visible, or its driver is not loaded)");
  std::optional<CudaBackend> backend;
  try {
    backend.emplace(CudaOptions{.precision = compute});
  } catch (const std::exception& e) {
    fail(cuda, ": the CUDA backend could not start: ", e.what());
  }
  std::fprintf(stderr, "%s: CUDA device %s, %s compute\n", command.c_str(), std::string(backend->device_description()).c_str(), to_string(compute));
  const int status = body(*backend);
  backend->synchronize();
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::fprintf(stderr, "%s: peak device memory %.2f GiB in use, %.2f GiB reserved\n", command.c_str(),
               static_cast<double>(backend->peak_bytes()) / gib, static_cast<double>(backend->peak_bytes_reserved()) / gib);
  return status;
#else
  (void)command, (void)body;
  fail(cuda, ": this build has no CUDA backend (configure with a CUDA toolkit, -DDREAMBOOTH_CUDA=ON)");
#endif
}

std::string option_or(const Options& o, const std::string& name, const std::string& fallback) {
  const auto it = o.values.find(name);
  return it == o.values.end() ? fallback : it->second;
}

template <class B>
int run_unet(B& backend, const Options& o) {
  using namespace dreambooth;
  using Clock = std::chrono::steady_clock;
  const auto model_path = o.required("--model");
  const io::SafetensorsFile inputs(o.required("--inputs"));
  const auto output_path = o.required("--output");
  std::optional<models::UNetConfig> config;
  if (o.values.count("--config")) config = models::UNetConfig::from_file(o.values.at("--config"));
  auto model = io::load_unet(backend, model_path, config);
  model->gradient_checkpointing = o.flag("--checkpointing");
  std::fprintf(stderr, "unet: %lld parameters from %s\n", static_cast<long long>(model->parameter_count()), model_path.c_str());

  const auto tensor = [&](const std::string& name) { return Tensor<B>::from_host(backend, inputs.info(name).shape, inputs.read_f32(name)); };
  const auto sample = tensor("input.sample"), context = tensor("input.encoder_hidden_states");
  const auto timesteps = inputs.read_f32("input.timesteps");
  typename models::UNet2DConditionModel<B>::Activations activations;
  auto start = Clock::now();
  const auto out = model->forward(backend, sample, timesteps, context, activations);
  backend.synchronize();
  std::fprintf(stderr, "unet: forward %s in %.3f s\n", out.shape().str().c_str(), std::chrono::duration<double>(Clock::now() - start).count());
  io::SafetensorsWriter writer;
  writer.set_metadata("producer", "dreambooth unet");
  writer.set_metadata("model", model_path);
  writer.set_metadata("backend", backend.name());
  writer.add("output", out);
  if (o.flag("--grad")) {
    start = Clock::now();
    const auto grads = model->backward(backend, tensor("R"), activations);
    backend.synchronize();
    std::fprintf(stderr, "unet: backward in %.3f s\n", std::chrono::duration<double>(Clock::now() - start).count());
    writer.add("grad_input.sample", grads.sample);
    writer.add("grad_input.encoder_hidden_states", grads.context);
    model->visit([&](const std::string& name, nn::Param<B>& p) { writer.add("grad." + name, p.grad); });
  }
  writer.write(output_path);
  std::fprintf(stderr, "unet: wrote %s\n", output_path.c_str());
  return 0;
}

int run_unet(const Options& o) {
  for (const char* name : {"--model", "--inputs", "--output"}) (void)o.required(name);  // refused before any device starts
  return on_device("unet", option_or(o, "--device", "cpu"), precision_option(option_or(o, "--precision", "fp32"), "--precision"),
                   [&](auto& backend) { return run_unet(backend, o); });
}

// The demo's instance images: one made-up subject (an orange disc with a white band and a dark eye) at a few positions,
// sizes and backgrounds, drawn with anti-aliased edges.
int run_render_demo_images(const Options& o) {
  using namespace dreambooth;
  const std::filesystem::path dir = o.required("--output-dir");
  const int count = std::stoi(o.values.count("--count") ? o.values.at("--count") : "4");
  const int size = std::stoi(o.values.count("--size") ? o.values.at("--size") : "128");
  if (count < 1 || size < 8) fail("--count must be >= 1 and --size >= 8");
  std::filesystem::create_directories(dir);
  for (int k = 0; k < count; ++k) {
    std::vector<std::uint8_t> rgb(static_cast<std::size_t>(size * size * 3));
    const float cx = size * (0.35f + 0.3f * rng::uniform(5, 0, 4 * k)), cy = size * (0.35f + 0.3f * rng::uniform(5, 0, 4 * k + 1));
    const float r = size * (0.18f + 0.1f * rng::uniform(5, 0, 4 * k + 2));
    const float hue = rng::uniform(5, 0, 4 * k + 3);
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x) {
        // background: a soft two-colour gradient that changes per image
        float px[3] = {40 + 120 * hue + 60.0f * y / size, 90 + 80 * (1 - hue), 150 - 60.0f * x / size};
        const float d = std::hypot(x + 0.5f - cx, y + 0.5f - cy);
        const float cover = std::clamp(r - d + 0.5f, 0.0f, 1.0f);
        float subject[3] = {235, 120, 30};
        if (std::abs(y + 0.5f - cy) < r * 0.15f) subject[0] = subject[1] = subject[2] = 245;                                             // the band
        if (std::hypot(x + 0.5f - (cx + r * 0.35f), y + 0.5f - (cy - r * 0.4f)) < r * 0.12f) subject[0] = subject[1] = subject[2] = 20;  // the eye
        for (int c = 0; c < 3; ++c)
          rgb[static_cast<std::size_t>((y * size + x) * 3 + c)] =
              static_cast<std::uint8_t>(std::clamp(px[c] * (1 - cover) + subject[c] * cover, 0.0f, 255.0f));
      }
    char name[32];
    std::snprintf(name, sizeof name, "subject-%02d.png", k);
    io::write_png(dir / name, rgb.data(), size, size, {{"Software", "dreambooth.cpp demo"}});
  }
  std::fprintf(stderr, "render-demo-images: wrote %d images to %s\n", count, dir.string().c_str());
  return 0;
}

int run_train(int argc, char** argv) {
  using namespace dreambooth;
  std::optional<std::filesystem::path> file;
  std::vector<std::string> overrides;
  std::optional<std::string> device;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" || a == "--device") {
      if (i + 1 >= argc) fail("option ", a, " needs a value");
      if (a == "--config")
        file = argv[++i];
      else
        device = argv[++i];
    } else if (a.find('=') != std::string::npos && a.rfind("--", 0) != 0) {
      overrides.push_back(a);
    } else {
      fail("unknown argument '", a, "' (expected --config FILE, --device cpu|cuda or key=value overrides)");
    }
  }
  if (device) overrides.push_back("trainer.device=" + *device);  // the command line's --device wins over the file's trainer.device
  auto config = train::TrainingConfig::load(file, overrides);
#ifdef DREAMBOOTH_WITH_CUDA
  if (config.accelerator == "auto" && !device && CudaBackend::device_count() > 0) config.device = "cuda";  // trainer.accelerator: auto
#endif
  return on_device(
      "train", config.device, config.compute_precision(),
      [&]<class B>(B& backend) {
        train::Trainer<B> trainer(backend, config);
        const auto summary = trainer.run();
        std::fprintf(stderr, "train: steps %ld to %ld done\n", summary.first_step, summary.last_step);
        return 0;
      },
      device ? "--device" : "trainer.device");
}

// --tokenizer, --configs and --ema, for the commands that load a model.
dreambooth::pipeline::LoadOptions load_options(const Options& o, const std::string& command) {
  dreambooth::pipeline::LoadOptions l;
  if (o.values.count("--tokenizer")) l.tokenizer = o.values.at("--tokenizer");
  if (o.values.count("--configs")) {
    l.configs = o.values.at("--configs");
    if (l.tokenizer.empty() && std::filesystem::exists(l.configs / "tokenizer")) l.tokenizer = l.configs / "tokenizer";
  }
  l.ema = o.flag("--ema");
  l.note = [command](const std::string& n) { std::fprintf(stderr, "%s: note: %s\n", command.c_str(), n.c_str()); };
  return l;
}

// Every parameter of `got` equals `expected`'s as stored in `dtype`; returns how many tensors were compared.
template <class Model>
std::size_t compare_parameters(Model& got, Model& expected, dreambooth::DType dtype, const std::string& what) {
  using namespace dreambooth;
  std::map<std::string, std::vector<float>> want;
  expected.visit([&](const std::string& n, auto& p) { want[n] = p.value.to_host(); });
  std::size_t n = 0;
  got.visit([&](const std::string& name, auto& p) {
    auto v = want.at(name);
    std::vector<std::byte> stored(v.size() * dtype_size(dtype));
    convert_from_f32(v, dtype, stored.data());
    convert_to_f32(stored.data(), dtype, v);
    if (p.value.to_host() != v) fail("convert: read back, ", what, " parameter ", name, " differs from what was written");
    ++n;
  });
  return n;
}

int run_convert(const Options& o) {
  using namespace dreambooth;
  namespace fs = std::filesystem;
  const fs::path source = o.required("--model"), output = o.required("--output");
  const auto extension = output.extension().string();
  const auto format = pipeline::parse_export_format(o.values.count("--format")                                          ? o.values.at("--format")
                                                    : extension == ".safetensors"                                       ? "safetensors"
                                                    : extension == ".ckpt" || extension == ".pt" || extension == ".pth" ? "ckpt"
                                                    : extension == ".nemo"                                              ? "nemo"
                                                                                                                        : "diffusers",
                                                    "--format");
  const auto dtype = pipeline::parse_save_precision(option_or(o, "--precision", "32"), "--precision");
  if (output.has_parent_path() && !fs::is_directory(output.parent_path()))
    fail("output directory ", output.parent_path().string(), " does not exist");
  return on_device("convert", option_or(o, "--device", "cpu"), "fp32", [&]<class B>(B& backend) {
    auto pipe = pipeline::load_pipeline(backend, source, load_options(o, "convert"));
    pipeline::export_pipeline(pipe, output, format, dtype);
    // read back what was written and compare it with what it came from
    auto options = load_options(o, "convert");
    options.ema = false;
    if (format == pipeline::ExportFormat::Safetensors || format == pipeline::ExportFormat::Ckpt) {
      if (options.configs.empty()) {  // a single file carries no configuration: the source's, written beside for the check
        options.configs = fs::temp_directory_path() / ("dreambooth-convert-" + std::to_string(::getpid()));
        pipeline::export_diffusers(pipe, options.configs);
      }
      if (options.tokenizer.empty()) options.fallback_tokenizer = pipe.tokenizer_files;
    }
    auto back = pipeline::load_pipeline(backend, output, options);
    if (options.configs.string().find("dreambooth-convert-") != std::string::npos) fs::remove_all(options.configs);
    const auto n = compare_parameters(*back.unet, *pipe.unet, dtype, "UNet") + compare_parameters(*back.vae, *pipe.vae, dtype, "VAE") +
                   compare_parameters(*back.text_encoder, *pipe.text_encoder, dtype, "text encoder");
    std::fprintf(stderr, "convert: wrote %s (%s, %s); read back, its %zu tensors equal the source's\n", output.string().c_str(),
                 pipeline::export_format_name(format).c_str(), std::string(dtype_name(dtype)).c_str(), n);
    return 0;
  });
}

int run_generate(const Options& o) {
  using namespace dreambooth;
  namespace fs = std::filesystem;
  using Clock = std::chrono::steady_clock;
  const auto model_path = fs::path(o.required("--model"));
  const auto output = fs::path(o.required("--output"));
  pipeline::GenerationOptions g;
  g.prompt = o.required("--prompt");
  const auto number = [&](const char* name, auto fallback) {
    const auto it = o.values.find(name);
    if (it == o.values.end()) return fallback;
    try {
      std::size_t used = 0;
      const double v = std::stod(it->second, &used);
      if (used != it->second.size()) throw std::invalid_argument("trailing characters");
      return static_cast<decltype(fallback)>(v);
    } catch (const std::exception&) {
      fail("option ", name, ": \"", it->second, "\" is not a number");
    }
  };
  if (o.values.count("--negative-prompt")) g.negative_prompt = o.values.at("--negative-prompt");
  g.steps = number("--steps", 50);
  g.guidance_scale = number("--guidance", 7.5);
  g.width = number("--width", std::int64_t{512});
  g.height = number("--height", std::int64_t{512});
  g.seed = number("--seed", std::uint64_t{0});
  g.images_per_prompt = number("--images", 1);
  g.eta = number("--eta", 0.0);
  if (o.values.count("--scheduler")) g.scheduler = o.values.at("--scheduler");
  // Settings that are wrong whatever the model: refused before loading anything.
  if (g.steps <= 0) fail("--steps must be positive, not ", g.steps);
  if (g.width <= 0 || g.height <= 0 || g.width % 8 || g.height % 8)
    fail("--width and --height (", g.width, "x", g.height, ") must be positive multiples of 8");
  if (!g.scheduler.empty()) schedulers::make_scheduler(g.scheduler, {});
  if (output.has_parent_path() && !fs::is_directory(output.parent_path()))
    fail("output directory ", output.parent_path().string(), " does not exist");

  const auto precision = precision_option(option_or(o, "--precision", "fp32"), "--precision");
  return on_device("generate", option_or(o, "--device", "cpu"), precision, [&]<class B>(B& backend) {
    auto start = Clock::now();
    auto pipe = pipeline::load_pipeline(backend, model_path, load_options(o, "generate"));
    std::fprintf(stderr, "generate: loaded %s in %.1f s\n", model_path.string().c_str(), std::chrono::duration<double>(Clock::now() - start).count());
    start = Clock::now();
    g.progress = [&](int step, int total) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      std::fprintf(stderr, "\rgenerate: step %d/%d  %.2f s/step  ETA %.0f s   ", step, total, elapsed / step, elapsed / step * (total - step));
      if (step == total) std::fputc('\n', stderr);
    };
    const auto result = pipe.generate(g);
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

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  const std::string command = argv[1];
  try {
    if (command == "-h" || command == "--help" || command == "help") return usage(stdout);
    if (command == "inspect") {
      if (argc != 3) {
        std::fputs("dreambooth inspect: expected one argument, a weights file or a .nemo\n", stderr);
        return 2;
      }
      return inspect(argv[2]);
    }
    if (command == "convert")
      return run_convert(
          Options::parse(argc, argv, 2, {"--model", "--output", "--format", "--precision", "--tokenizer", "--configs", "--device"}, {"--ema"}));
    if (command == "train") return run_train(argc, argv);
    if (command == "render-demo-images") return run_render_demo_images(Options::parse(argc, argv, 2, {"--output-dir", "--count", "--size"}, {}));
    if (command == "generate")
      return run_generate(Options::parse(argc, argv, 2,
                                         {"--model", "--prompt", "--output", "--negative-prompt", "--steps", "--guidance", "--width", "--height",
                                          "--seed", "--images", "--scheduler", "--eta", "--configs", "--tokenizer", "--device", "--precision"},
                                         {"--ema"}));
    if (command == "unet")
      return run_unet(
          Options::parse(argc, argv, 2, {"--model", "--inputs", "--output", "--config", "--device", "--precision"}, {"--grad", "--checkpointing"}));
    std::fprintf(stderr, "dreambooth: unknown command '%s'\n", command.c_str());
    return usage(stderr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dreambooth %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
