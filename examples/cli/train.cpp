// dreambooth train [--config FILE.yaml] [--device cpu|cuda] [key=value ...]: DreamBooth fine-tuning with NeMo's
// configuration keys (docs/training.md); NeMo's own DreamBooth YAML loads as it is (docs/nemo.md).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <span>
#include <type_traits>

#include "command.hpp"
#include "dreambooth/train/trainer.hpp"
#if DREAMBOOTH_WITH_MPI
#include "dreambooth/train/mpi_communicator.hpp"
#endif
#if DREAMBOOTH_WITH_NCCL
#include "dreambooth/backends/cuda_nccl.hpp"
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

// Data-parallel on GPUs: each process of a node takes the node's GPU of its place on the node (local rank modulo GPUs).
void choose_gpu([[maybe_unused]] dreambooth::DeviceChoice& device, [[maybe_unused]] dreambooth::train::Communicator& comm) {
#if DREAMBOOTH_WITH_MPI && DREAMBOOTH_WITH_CUDA
  const int gpus = dreambooth::CudaBackend::device_count();
  if (device.device != "cuda" || comm.size() == 1 || gpus == 0) return;
  if (const auto* mpi = dynamic_cast<const dreambooth::train::MpiCommunicator*>(&comm)) device.cuda_device = mpi->local_rank() % gpus;
#endif
}

// The communicator the trainer uses on `backend`: on GPUs, NCCL's sums in device memory where every process of the run has
// a GPU of its own (decided together from every process's GPU: NCCL's setup is collective); else `comm` (through host
// memory, over MPI).
template <class B>
std::unique_ptr<dreambooth::train::Communicator> on_backend([[maybe_unused]] B& backend, [[maybe_unused]] dreambooth::train::Communicator& comm) {
#if DREAMBOOTH_WITH_NCCL
  if constexpr (std::is_same_v<B, dreambooth::CudaBackend>) {
    if (comm.size() > 1) {
      const auto key = static_cast<double>(dreambooth::NcclCommunicator::device_key(backend));
      auto keys = comm.all_gather(std::span<const double>(&key, 1));
      std::sort(keys.begin(), keys.end());
      if (std::adjacent_find(keys.begin(), keys.end()) == keys.end()) return std::make_unique<dreambooth::NcclCommunicator>(backend, comm);
      if (comm.leader())
        std::fprintf(stderr,
                     "train: note: NCCL needs a GPU of its own for every process, and some processes share one (more processes on a node "
                     "than GPUs); the gradients are summed through host memory over MPI (slower)\n");
    }
  }
#endif
  return nullptr;
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
  DeviceChoice device{config.device, config.compute_precision(), a.device.empty() ? "trainer.device" : "--device"};
  const auto comm = communicator(config);
  choose_gpu(device, *comm);
  try {
    return run_on_device(device, "train", [&]<class B>(B& backend) {
      const auto device_comm = on_backend(backend, *comm);
      train::Trainer<B> trainer(backend, config, device_comm ? *device_comm : *comm);
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
