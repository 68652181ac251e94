// Regularization (class) images for prior preservation: when a concept's regularization_dir holds fewer than its
// num_reg_images, the sampling model makes the missing ones from its regularization_prompt, num_images_per_prompt at a time, with the settings of
// model.regularization.* (NeMo's infer.*). Each image is written to a temporary file and renamed (a killed run leaves
// no partial image; a rerun makes only what is missing), named reg-00000.png, ... by the first free index, and image k
// of a batch uses seed * 1000003 + the batch's first index, so a rerun makes the same images. Each PNG records A1111's
// parameters. In a data-parallel run the batches are shared out (batch j to rank j mod P): each image is made once, by
// one process, and is the image one process would have made.
#pragma once

#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "dreambooth/core/fault.hpp"
#include "dreambooth/data/dataset.hpp"
#include "dreambooth/io/png.hpp"
#include "dreambooth/pipeline/infotext.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"
#include "dreambooth/train/communicator.hpp"
#include "dreambooth/train/config.hpp"

namespace dreambooth::train {

// Writes the concept's missing regularization images (reg-00000.png, ...) into its regularization_dir; returns how many
// this process made. Every process of `comm` calls it (each makes its share; all return once every image is there).
template <class B>
std::size_t ensure_regularization_images(pipeline::TextToImagePipeline<B>& pipe, const TrainingConfig& c, const ConceptConfig& subject,
                                         const std::function<void(const std::string&)>& log, Communicator& comm = single_process()) {
  namespace fs = std::filesystem;
  const fs::path dir = subject.regularization_dir;
  const auto wanted = static_cast<std::size_t>(subject.num_reg_images);
  const auto prompt = c.reg_sample_prompt.empty() ? subject.regularization_prompt : c.reg_sample_prompt;
  if (comm.leader()) {
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(dir))  // what a killed run was writing: never counted, removed now
      if (e.is_regular_file() && e.path().filename().string().find(".tmp-") != std::string::npos) fs::remove(e.path());
  }
  comm.barrier();  // the folder tidied before any process counts it
  const auto existing = data::list_images(dir, subject.key("regularization_dir")).size();
  comm.barrier();  // counted by every process before any writes
  if (existing >= wanted) return 0;
  log(subject.key("regularization_dir") + " " + dir.string() + " holds " + std::to_string(existing) + " of " + std::to_string(wanted) +
      " images: sampling the rest (\"" + prompt + "\", " + c.reg_scheduler + ", " + std::to_string(c.reg_steps) + " steps, guidance " +
      std::to_string(c.reg_guidance_scale) + ")" +
      (comm.size() > 1 ? ", batches shared by " + std::to_string(comm.size()) + " processes" : std::string()));
  // the batches: num_images_per_prompt of the next free names each
  std::vector<std::vector<std::size_t>> batches;
  for (std::size_t index = 0, missing = wanted - existing; missing > 0;) {
    const auto count = std::min<std::size_t>(missing, static_cast<std::size_t>(c.num_images_per_prompt));
    std::vector<std::size_t> indices;
    while (indices.size() < count) {
      char name[32];
      std::snprintf(name, sizeof name, "reg-%05zu.png", index);
      if (!fs::exists(dir / name)) indices.push_back(index);
      ++index;
    }
    batches.push_back(std::move(indices));
    missing -= count;
  }
  // what each image's PNG records (A1111's parameters): the sampling settings and the model sampled from
  pipeline::InfotextSettings infotext;
  infotext.prompt = prompt;
  infotext.negative_prompt = c.reg_negative_prompt;
  infotext.steps = static_cast<int>(c.reg_steps);
  infotext.scheduler = c.reg_scheduler.empty() ? pipe.scheduler_config.class_name : c.reg_scheduler;
  infotext.guidance_scale = c.reg_guidance_scale;
  infotext.eta = c.reg_eta;
  infotext.width = c.reg_width > 0 ? c.reg_width : c.resolution;
  infotext.height = c.reg_height > 0 ? c.reg_height : c.resolution;
  infotext.model = c.restore_from_path.empty() ? c.base_model_path : c.restore_from_path;
  infotext.model_hash = pipeline::a1111_model_hash(infotext.model);
  const auto mine = rank_share(batches.size(), comm.rank(), comm.size());
  std::size_t made = 0, to_make = 0;
  for (const auto j : mine) to_make += batches[j].size();
  for (const auto j : mine) {
    const auto& indices = batches[j];
    pipeline::GenerationOptions g;
    g.prompt = prompt;
    g.negative_prompt = c.reg_negative_prompt;
    g.steps = static_cast<int>(c.reg_steps);
    g.guidance_scale = c.reg_guidance_scale;
    g.width = c.reg_width > 0 ? c.reg_width : c.resolution;
    g.height = c.reg_height > 0 ? c.reg_height : c.resolution;
    g.scheduler = c.reg_scheduler;
    g.eta = c.reg_eta;
    g.images_per_prompt = static_cast<int>(indices.size());
    g.seed = static_cast<std::uint64_t>(c.seed) * 1000003u + indices.front();  // image k of a batch: seed + its first index
    const auto result = pipe.generate(g);
    const auto pixels = static_cast<std::size_t>(g.width * g.height * 3);
    for (std::size_t k = 0; k < indices.size(); ++k) {
      char name[32];
      std::snprintf(name, sizeof name, "reg-%05zu.png", indices[k]);
      auto settings = infotext;
      settings.seed = g.seed, settings.image = static_cast<int>(k), settings.images = g.images_per_prompt;
      io::write_png(dir / name, result.pixels.data() + k * pixels, g.width, g.height,
                    {{"parameters", pipeline::generation_infotext(settings).text()}, {"Software", "dreambooth.cpp regularization"}});
      fault::point("regularization-image");
      ++made;
    }
    if (comm.size() == 1)
      log("regularization images: " + std::to_string(existing + made) + "/" + std::to_string(wanted) + " in " + dir.string());
    else
      log("regularization images: " + std::to_string(made) + " of this process's " + std::to_string(to_make) + " (" +
          std::to_string(wanted - existing) + " made by " + std::to_string(comm.size()) + " processes) in " + dir.string());
  }
  comm.barrier();  // every process's images written before any reads the folder
  return made;
}

}  // namespace dreambooth::train
