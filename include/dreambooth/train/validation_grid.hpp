// Validation during training (model.validation.*): every validation prompt sampled with the current weights (seed
// model.seed + the prompt's index; model.validation.steps steps of model.validation.scheduler, else
// model.regularization.scheduler's; model.validation.guidance_scale and negative_prompt; num_images_per_prompt images
// each, in one batch) into one grid image, output_dir/validation/step-XXXXXXXX.png: one row per prompt when a prompt has
// several images, else up to 4 prompts a row.
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
  const auto n = static_cast<std::int64_t>(c.validation_prompts.size()), per_prompt = c.validation_images_per_prompt;
  const std::int64_t R = c.resolution, tiles = n * per_prompt, columns = per_prompt > 1 ? per_prompt : std::min<std::int64_t>(4, n),
                     rows = (tiles + columns - 1) / columns;
  std::vector<std::uint8_t> grid(static_cast<std::size_t>(rows * R * columns * R * 3), 255);  // [rows R, columns R, 3]
  for (std::int64_t k = 0; k < n; ++k) {
    pipeline::GenerationOptions g;
    g.prompt = c.validation_prompts[static_cast<std::size_t>(k)];
    g.negative_prompt = c.validation_negative_prompt;
    g.guidance_scale = c.validation_guidance_scale;
    g.steps = static_cast<int>(c.validation_steps);
    g.width = g.height = R;
    g.seed = static_cast<std::uint64_t>(c.seed) + static_cast<std::uint64_t>(k);
    g.images_per_prompt = static_cast<int>(per_prompt);
    g.scheduler = c.validation_scheduler.empty() ? c.reg_scheduler : c.validation_scheduler;
    const auto images = pipe.generate(g);  // pixels [per_prompt, R, R, 3]
    for (std::int64_t i = 0; i < per_prompt; ++i) {
      const auto tile = k * per_prompt + i, gy = tile / columns, gx = tile % columns;
      const auto* image = images.pixels.data() + i * R * R * 3;
      for (std::int64_t y = 0; y < R; ++y) std::copy_n(image + y * R * 3, R * 3, grid.data() + ((gy * R + y) * columns * R + gx * R) * 3);
    }
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
