// dreambooth render-demo-images --output-dir DIR [--count 4] [--size 128]: the demo's instance images.
#include "command.hpp"
#include "dreambooth/data/demo_images.hpp"

namespace cli {

void add_render_demo_images(CLI::App& root, Run& run) {
  struct Arguments {
    std::string output_dir;
    int count = 4, size = 128;
  };
  auto [app, a] = add_command<Arguments>(root, run, "render-demo-images", "draw the demo's instance images (a made-up subject on varied backgrounds)",
                                         [](const Arguments& a) {
                                           dreambooth::data::write_demo_images(a.output_dir, a.count, a.size);
                                           std::fprintf(stderr, "render-demo-images: wrote %d images to %s\n", a.count, a.output_dir.c_str());
                                           return 0;
                                         });
  app->add_option("--output-dir", a->output_dir, "the folder to write subject-NN.png into (created)")->required();
  app->add_option("--count", a->count, "how many images")->capture_default_str()->check(CLI::Range(1, 10000));
  app->add_option("--size", a->size, "their side in pixels")->capture_default_str()->check(CLI::Range(8, dreambooth::data::kMaxDemoImageSize));
}

}  // namespace cli
