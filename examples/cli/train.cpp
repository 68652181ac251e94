// dreambooth train [--config FILE.yaml] [--device cpu|cuda] [key=value ...]: DreamBooth fine-tuning with NeMo's
// configuration keys (docs/training.md); NeMo's own DreamBooth YAML loads as it is (docs/nemo.md).
#include <cstdio>
#include <memory>

#include "command.hpp"
#include "dreambooth/train/trainer.hpp"
#if DREAMBOOTH_WITH_MPI
#include "dreambooth/train/mpi_communicator.hpp"
#endif

namespace cli {

namespace {
struct Arguments {
  std::string config, device;
  std::vector<std::string> overrides;
};

// The processes that train together: under mpirun (or another MPI launcher) all of them, else this one.
std::unique_ptr<dreambooth::train::Communicator> communicator(const dreambooth::train::TrainingConfig& config) {
#if DREAMBOOTH_WITH_MPI
  if (dreambooth::train::MpiCommunicator::launched_by_mpi()) return std::make_unique<dreambooth::train::MpiCommunicator>();
  (void)config;
#else
  if (config.processes() > 1)
    dreambooth::fail("trainer.devices x trainer.num_nodes = ", config.processes(),
                     " processes, but this program was built without MPI and trains in one process: rebuild with MPI (Debian: apt-get install "
                     "libopenmpi-dev openmpi-bin, then cmake -DDREAMBOOTH_MPI=ON) and start it with mpirun -np ",
                     config.processes(), ", or set trainer.devices=1 trainer.num_nodes=1");
#endif
  return std::make_unique<dreambooth::train::SingleProcess>();
}

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
  const auto comm = communicator(config);
  try {
    return run_on_device(device, "train", [&]<class B>(B& backend) {
      train::Trainer<B> trainer(backend, config, *comm);
      const auto summary = trainer.run();
      if (summary.last_step > summary.first_step && comm->leader())
        std::fprintf(stderr, "train: trained steps %ld to %ld\n", summary.first_step + 1, summary.last_step);
      return 0;
    });
  } catch (const std::exception& e) {
    if (comm->size() == 1) throw;
    // one process failed: it says why, and every process of the run stops (nothing half-written is published: every
    // file is written to a temporary name and renamed)
    std::fprintf(stderr, "dreambooth train: error (process %d of %d): %s\n", comm->rank(), comm->size(), e.what());
    std::fflush(stderr);
    comm->abort(1);
    return 1;  // not reached
  }
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
