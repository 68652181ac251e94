// Validation during training (model.validation.*): every validation prompt sampled with the current weights (seed
// model.seed + the prompt's index, model.validation.steps steps, model.regularization.scheduler) into one grid image,
// output_dir/validation/step-XXXXXXXX.png, up to 4 images a row.
#pragma once

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "dreambooth/io/png.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"
#include "dreambooth/train/config.hpp"

namespace dreambooth::train {

// Writes step `step`'s grid; returns its path.
template <class B>
std::filesystem::path write_validation_grid(const TrainingConfig& c, const std::filesystem::path& output_dir, long step,
                                            pipeline::TextToImagePipeline<B>& pipe) {
  const auto n = static_cast<std::int64_t>(c.validation_prompts.size());
  const std::int64_t R = c.resolution, columns = std::min<std::int64_t>(4, n), rows = (n + columns - 1) / columns;
  std::vector<std::uint8_t> grid(static_cast<std::size_t>(rows * R * columns * R * 3), 255);  // [rows R, columns R, 3]
  for (std::int64_t k = 0; k < n; ++k) {
    pipeline::GenerationOptions g;
    g.prompt = c.validation_prompts[static_cast<std::size_t>(k)];
    g.steps = static_cast<int>(c.validation_steps);
    g.width = g.height = R;
    g.seed = static_cast<std::uint64_t>(c.seed) + static_cast<std::uint64_t>(k);
    g.scheduler = c.reg_scheduler;
    const auto image = pipe.generate(g);
    const auto gy = k / columns, gx = k % columns;
    for (std::int64_t y = 0; y < R; ++y) std::copy_n(image.pixels.data() + y * R * 3, R * 3, grid.data() + ((gy * R + y) * columns * R + gx * R) * 3);
  }
  std::filesystem::create_directories(output_dir / "validation");
  char name[40];
  std::snprintf(name, sizeof name, "step-%08ld.png", step);
  std::string prompts;
  for (const auto& p : c.validation_prompts) prompts += (prompts.empty() ? "" : " | ") + p;
  const auto path = output_dir / "validation" / name;
  io::write_png(path, grid.data(), columns * R, rows * R, {{"parameters", prompts}, {"Software", "dreambooth.cpp validation"}});
  return path;
}

}  // namespace dreambooth::train
