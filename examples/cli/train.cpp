// dreambooth train [--config FILE.yaml] [--device cpu|cuda] [key=value ...]: DreamBooth fine-tuning with NeMo's
// configuration keys (docs/training.md); NeMo's own DreamBooth YAML loads as it is (docs/nemo.md).
#include "command.hpp"
#include "dreambooth/train/trainer.hpp"

namespace cli {

namespace {
struct Arguments {
  std::string config, device;
  std::vector<std::string> overrides;
};

int train(const Arguments& a) {
  using namespace dreambooth;
  for (const auto& o : a.overrides)
    if (o.find('=') == std::string::npos || o.rfind("--", 0) == 0) fail("\"", o, "\" is not a key=value override (e.g. trainer.max_steps=400)");
  auto overrides = a.overrides;
  if (!a.device.empty()) overrides.push_back("trainer.device=" + a.device);  // the command line's --device wins over the file's
  std::optional<std::filesystem::path> file;
  if (!a.config.empty()) file = a.config;
  auto config = train::TrainingConfig::load(file, overrides);
  if (config.accelerator == "auto" && a.device.empty() && cuda_available()) config.device = "cuda";  // trainer.accelerator: auto
  const DeviceChoice device{config.device, config.compute_precision(), a.device.empty() ? "trainer.device" : "--device"};
  return run_on_device(device, "train", [&]<class B>(B& backend) {
    train::Trainer<B> trainer(backend, config);
    const auto summary = trainer.run();
    if (summary.last_step > summary.first_step) std::fprintf(stderr, "train: trained steps %ld to %ld\n", summary.first_step + 1, summary.last_step);
    return 0;
  });
}
}  // namespace

void add_train(CLI::App& root, Run& run) {
  auto [app, a] = add_command<Arguments>(root, run, "train",
                                         "DreamBooth fine-tuning with NeMo's configuration keys (docs/training.md); NeMo's own "
                                         "DreamBooth YAML loads as it is (docs/nemo.md, examples/nemo_dreambooth.yaml)",
                                         train);
  app->add_option("--config", a->config, "a YAML configuration (NeMo's dreambooth.yaml layout)");
  app->add_option("--device", a->device, "cpu or cuda (trainer.device=...); trainer.precision=bf16 or 16 on the GPU");
  app->add_option("overrides", a->overrides,
                  "key=value settings over the file's, e.g. model.restore_from_path=DIR model.data.instance_dir=DIR "
                  "\"model.data.instance_prompt=a photo of sks dog\" trainer.max_steps=400");
  app->footer("Every key, its default and NeMo's spelling: docs/training.md and docs/nemo.md.");
}

}  // namespace cli
