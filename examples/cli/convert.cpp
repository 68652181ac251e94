// dreambooth convert --model SRC --output DST [--format diffusers|safetensors|ckpt|nemo] [--precision 32|16|bf16]
//                    [--ema] [--tokenizer DIR] [--configs DIR] [--unet | --vae | --text-encoder PATH]
//                    [--unet-config | --vae-config | --text-encoder-config FILE] [--device cpu|cuda]
// Any model (a diffusers folder, a .nemo, one original .safetensors / .ckpt, with components from elsewhere as generate
// and training take them) to any format; the written file is read back and compared with the weights it came from.
#include <unistd.h>
#include <map>

#include "command.hpp"
#include "dreambooth/pipeline/export.hpp"

namespace cli {

namespace {
struct Arguments {
  std::string model, output, format, precision = "32";
  LoadArguments load;
  dreambooth::DeviceChoice device;
};

// A folder removed when this goes out of scope (on failure too).
struct TemporaryFolder {
  std::filesystem::path path;
  TemporaryFolder() = default;
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;
  ~TemporaryFolder() {
    std::error_code ignored;
    if (!path.empty()) std::filesystem::remove_all(path, ignored);
  }
};

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

int convert(const Arguments& a) {
  using namespace dreambooth;
  namespace fs = std::filesystem;
  const fs::path source = a.model, output = a.output;
  const auto extension = output.extension().string();
  const auto format = pipeline::parse_export_format(!a.format.empty()                                                   ? a.format
                                                    : extension == ".safetensors"                                       ? "safetensors"
                                                    : extension == ".ckpt" || extension == ".pt" || extension == ".pth" ? "ckpt"
                                                    : extension == ".nemo"                                              ? "nemo"
                                                                                                                        : "diffusers",
                                                    "--format");
  const auto dtype = pipeline::parse_save_precision(a.precision, "--precision");
  check_output_directory(output);
  auto device = a.device;
  device.precision = "fp32";  // --precision here is the stored precision
  return run_on_device(device, "convert", [&]<class B>(B& backend) {
    auto pipe = pipeline::load_pipeline(backend, a.load.spec(source, "convert"));
    a.load.apply_loras(pipe, "convert");  // a merged export
    pipeline::export_pipeline(pipe, output, format, dtype);
    // read back what was written and compare it with what it came from
    auto options = a.load.options("convert");
    options.ema = false;
    TemporaryFolder configs;
    if (format == pipeline::ExportFormat::Safetensors || format == pipeline::ExportFormat::Ckpt) {
      // a single file carries no configuration: the loaded pipeline's (whatever options gave it), written beside
      configs.path = fs::temp_directory_path() / ("dreambooth-convert-" + std::to_string(::getpid()));
      pipeline::export_diffusers(pipe, configs.path);
      options.configs = configs.path;
      if (options.tokenizer.empty()) options.fallback_tokenizer = pipe.tokenizer_files;
    }
    auto back = pipeline::load_pipeline(backend, output, options);
    const auto n = compare_parameters(*back.unet, *pipe.unet, dtype, "UNet") + compare_parameters(*back.vae, *pipe.vae, dtype, "VAE") +
                   compare_parameters(*back.text_encoder, *pipe.text_encoder, dtype, "text encoder");
    std::fprintf(stderr, "convert: wrote %s (%s, %s); read back, its %zu tensors equal the source's\n", output.string().c_str(),
                 pipeline::export_format_name(format).c_str(), std::string(dtype_name(dtype)).c_str(), n);
    return 0;
  });
}
}  // namespace

void add_convert(CLI::App& root, Run& run) {
  auto [app, a] =
      add_command<Arguments>(root, run, "convert",
                             "convert a model (a diffusers folder, a .nemo, one original .safetensors / .ckpt) into a diffusers folder, one original "
                             ".safetensors or .ckpt (A1111, ComfyUI, stable-diffusion.cpp), or a .nemo; the written file is read back and compared",
                             convert);
  app->add_option("--model", a->model, "the model to convert")->required();
  app->add_option("--output", a->output, "what to write: a folder, X.safetensors, X.ckpt or X.nemo")->required();
  app->add_option("--format", a->format, "diffusers, safetensors, ckpt or nemo (default: from --output's extension)");
  app->add_option("--precision", a->precision, "the stored precision: 32, 16 or bf16")->capture_default_str();
  a->load.add_to(*app);
  app->add_option("--device", a->device.device, "cpu or cuda")->capture_default_str();
}

}  // namespace cli
