// The dreambooth command: one file per subcommand (examples/cli/<command>.cpp), parsed with CLI11; `dreambooth --help`
// and `dreambooth <command> --help` list the options. The commands that run a model take --device cpu|cuda: their bodies
// are templates on the backend, run by dreambooth::run_on_device (device_dispatch.hpp).
#include <cstdio>
#include <exception>
#include <new>

#include "command.hpp"

int main(int argc, char** argv) {
  CLI::App app("dreambooth: DreamBooth fine-tuning of Stable Diffusion 1.x, NeMo's files and configuration, diffusers' numbers", "dreambooth");
  app.require_subcommand(1);
  app.footer(
      "--device cuda runs on the CUDA backend (GPU 0) when the program was built with it; --precision sets its GEMM and\n"
      "convolution compute precision (storage stays fp32; the CPU backend computes in fp32 only).");
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
