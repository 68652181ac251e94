// The dreambooth command. Subcommands grow with the project (train, generate, cache-latents, convert, ...).
//   dreambooth inspect FILE.safetensors   list the tensors (name, dtype, shape, bytes) and metadata of a file
//   dreambooth unet --model PATH --inputs IN.safetensors --output OUT.safetensors [--grad] [--config config.json]
//                   [--checkpointing]
//       run the UNet on inputs read from a file (input.sample, input.timesteps, input.encoder_hidden_states) and
//       write `output`; with --grad also the gradients of sum(output * R) (R read from the inputs file) as
//       grad.<parameter> and grad_input.<input>: any reference can be compared without recompiling.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/io/unet_loading.hpp"

namespace {

int usage(std::FILE* out) {
  std::fputs(
      "usage: dreambooth <command> [arguments]\n"
      "commands:\n"
      "  inspect FILE.safetensors   list the tensors and metadata of a safetensors file\n"
      "  unet --model PATH --inputs IN.safetensors --output OUT.safetensors [--grad] [--config FILE] [--checkpointing]\n"
      "                             run the UNet (a diffusers folder, or a single file with --config or SD 1.5's)\n"
      "                             on input.sample, input.timesteps, input.encoder_hidden_states; write output\n"
      "                             and, with --grad, the gradients of sum(output * R) (R from the inputs file)\n",
      out);
  return out == stdout ? 0 : 2;
}

int inspect(const std::string& path) {
  const dreambooth::io::SafetensorsFile file(path);
  std::uint64_t total = 0;
  for (const auto& [key, value] : file.metadata()) std::printf("metadata %s = %s\n", key.c_str(), value.c_str());
  for (const auto& [name, info] : file.tensors()) {
    std::printf("%-60s %-5s %-22s %12llu bytes\n", name.c_str(), std::string(dreambooth::io::st_dtype_name(info.dtype)).c_str(),
                info.shape.str().c_str(), static_cast<unsigned long long>(info.bytes()));
    total += info.bytes();
  }
  std::printf("%zu tensors, %llu bytes of data\n", file.tensors().size(), static_cast<unsigned long long>(total));
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

int run_unet(const Options& o) {
  using namespace dreambooth;
  using Clock = std::chrono::steady_clock;
  CpuBackend backend;
  const auto model_path = o.required("--model");
  const io::SafetensorsFile inputs(o.required("--inputs"));
  const auto output_path = o.required("--output");
  std::optional<models::UNetConfig> config;
  if (o.values.count("--config")) config = models::UNetConfig::from_file(o.values.at("--config"));
  auto model = io::load_unet(backend, model_path, config);
  model->gradient_checkpointing = o.flag("--checkpointing");
  std::fprintf(stderr, "unet: %lld parameters from %s\n", static_cast<long long>(model->parameter_count()), model_path.c_str());

  const auto tensor = [&](const std::string& name) { return Tensor<CpuBackend>::from_host(backend, inputs.info(name).shape, inputs.read_f32(name)); };
  const auto sample = tensor("input.sample"), context = tensor("input.encoder_hidden_states");
  const auto timesteps = inputs.read_f32("input.timesteps");
  models::UNet2DConditionModel<CpuBackend>::Activations activations;
  auto start = Clock::now();
  const auto out = model->forward(backend, sample, timesteps, context, activations);
  std::fprintf(stderr, "unet: forward %s in %.3f s\n", out.shape().str().c_str(), std::chrono::duration<double>(Clock::now() - start).count());
  io::SafetensorsWriter writer;
  writer.set_metadata("producer", "dreambooth unet");
  writer.set_metadata("model", model_path);
  writer.add("output", out);
  if (o.flag("--grad")) {
    start = Clock::now();
    const auto grads = model->backward(backend, tensor("R"), activations);
    std::fprintf(stderr, "unet: backward in %.3f s\n", std::chrono::duration<double>(Clock::now() - start).count());
    writer.add("grad_input.sample", grads.sample);
    writer.add("grad_input.encoder_hidden_states", grads.context);
    model->visit([&](const std::string& name, nn::Param<CpuBackend>& p) { writer.add("grad." + name, p.grad); });
  }
  writer.write(output_path);
  std::fprintf(stderr, "unet: wrote %s\n", output_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  const std::string command = argv[1];
  try {
    if (command == "-h" || command == "--help" || command == "help") return usage(stdout);
    if (command == "inspect") {
      if (argc != 3) {
        std::fputs("dreambooth inspect: expected one argument, FILE.safetensors\n", stderr);
        return 2;
      }
      return inspect(argv[2]);
    }
    if (command == "unet")
      return run_unet(Options::parse(argc, argv, 2, {"--model", "--inputs", "--output", "--config"}, {"--grad", "--checkpointing"}));
    std::fprintf(stderr, "dreambooth: unknown command '%s'\n", command.c_str());
    return usage(stderr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dreambooth %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
