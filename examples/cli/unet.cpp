// dreambooth unet --model PATH --inputs IN.safetensors --output OUT.safetensors [--grad] [--config FILE]
//                 [--checkpointing] [--device cpu|cuda] [--precision ...]
// The UNet on inputs read from a file (input.sample, input.timesteps, input.encoder_hidden_states); writes `output` and,
// with --grad, the gradients of sum(output * R) (R read from the inputs file) as grad.<parameter> and
// grad_input.<input>: any reference can be compared without recompiling.
#include <chrono>
#include <optional>

#include "command.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/io/unet_loading.hpp"

namespace cli {

namespace {
struct Arguments {
  std::string model, inputs, output, config;
  bool grad = false, checkpointing = false;
  dreambooth::DeviceChoice device;
};

template <class B>
int run_unet(B& backend, const Arguments& a) {
  using namespace dreambooth;
  using Clock = std::chrono::steady_clock;
  const io::SafetensorsFile inputs(a.inputs);
  std::optional<models::UNetConfig> config;
  if (!a.config.empty()) config = models::UNetConfig::from_file(a.config);
  auto model = io::load_unet(backend, a.model, config);
  model->gradient_checkpointing = a.checkpointing;
  std::fprintf(stderr, "unet: %lld parameters from %s\n", static_cast<long long>(model->parameter_count()), a.model.c_str());

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
  writer.set_metadata("model", a.model);
  writer.set_metadata("backend", backend.name());
  writer.add("output", out);
  if (a.grad) {
    start = Clock::now();
    const auto grads = model->backward(backend, tensor("R"), activations);
    backend.synchronize();
    std::fprintf(stderr, "unet: backward in %.3f s\n", std::chrono::duration<double>(Clock::now() - start).count());
    writer.add("grad_input.sample", grads.sample);
    writer.add("grad_input.encoder_hidden_states", grads.context);
    model->visit([&](const std::string& name, nn::Param<B>& p) { writer.add("grad." + name, p.grad); });
  }
  writer.write(a.output);
  std::fprintf(stderr, "unet: wrote %s\n", a.output.c_str());
  return 0;
}
}  // namespace

void add_unet(CLI::App& root, Run& run) {
  auto [app, a] = add_command<Arguments>(
      root, run, "unet",
      "run the UNet (a diffusers folder, or a single file with --config or SD 1.5's) on input.sample, "
      "input.timesteps, input.encoder_hidden_states; write output and, with --grad, the gradients of "
      "sum(output * R) (R from the inputs file)",
      [](const Arguments& a) { return dreambooth::run_on_device(a.device, "unet", [&](auto& backend) { return run_unet(backend, a); }); });
  app->add_option("--model", a->model, "a diffusers folder, its unet/ folder or a single file")->required();
  app->add_option("--inputs", a->inputs, "a safetensors file with the inputs")->required();
  app->add_option("--output", a->output, "the safetensors file to write")->required();
  app->add_option("--config", a->config, "the UNet's config.json (for a single file)");
  app->add_flag("--grad", a->grad, "also the backward pass");
  app->add_flag("--checkpointing", a->checkpointing, "gradient checkpointing");
  add_device_options(*app, a->device);
}

}  // namespace cli
