// The dreambooth command: one file per subcommand (examples/cli/<command>.cpp), parsed with CLI11; `dreambooth --help`
// and `dreambooth <command> --help` list the options. The commands that run a model take --device cpu|cuda: their bodies
// are templates on the backend, run by dreambooth::run_on_device (device_dispatch.hpp).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

#include "command.hpp"

// OpenMP threads that wait at a barrier spin for libgomp's default 300000 iterations before they sleep; on a machine that
// is busy with something else (a compile, a second test), the spinning team members take the cores the working ones need,
// and a run slowed 47-fold (docs/architecture.md, "CPU threads"). libgomp reads GOMP_SPINCOUNT once, when it is loaded
// (before main), so the program runs itself again with a short spin when the environment sets neither it nor
// OMP_WAIT_POLICY. If the new image cannot start, the program carries on as it is.
namespace {
void shorten_openmp_spin_waits(char** argv) {
  if (std::getenv("GOMP_SPINCOUNT") || std::getenv("OMP_WAIT_POLICY")) return;
  ::setenv("GOMP_SPINCOUNT", "1000", 1);
  ::execv("/proc/self/exe", argv);
}
}  // namespace

int main(int argc, char** argv) {
  shorten_openmp_spin_waits(argv);
  CLI::App app("dreambooth: DreamBooth fine-tuning of Stable Diffusion 1.x, NeMo's files and configuration, diffusers' numbers", "dreambooth");
  app.require_subcommand(1);
  app.footer(
      "--device cuda runs on the CUDA backend (GPU 0) when the program was built with it; --precision sets its GEMM and\n"
      "convolution compute precision (storage stays fp32; the CPU backend computes in fp32 or bf16).");
  cli::Run run;
  cli::add_inspect(app, run);
  cli::add_convert(app, run);
  cli::add_generate(app, run);
  cli::add_train(app, run);
  cli::add_unet(app, run);
  cli::add_render_demo_images(app, run);
  cli::add_demo_report(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int status = app.exit(e);  // prints the help, or the error and a pointer to --help
    return status == 0 ? 0 : 2;
  }
  const auto* command = app.get_subcommands().front();
  try {
    return run();
  } catch (const std::bad_alloc&) {  // an allocation no reader or backend sized beforehand
    std::fprintf(stderr,
                 "dreambooth %s: error: out of memory: an allocation failed (std::bad_alloc) outside the checked places; "
                 "please report it with the command line\n",
                 command->get_name().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dreambooth %s: error: %s\n", command->get_name().c_str(), e.what());
    return 1;
  }
}
