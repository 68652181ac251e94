// What the pipeline-loading tests compare: every parameter of a model by name (as stored in a dtype, optionally), and
// a short DDIM sample at 32x32.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dreambooth/core/dtype.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"

namespace dreambooth::test {

// name -> values, each rounded through `dtype` first (what storing the model as dtype keeps).
template <class Model>
std::map<std::string, std::vector<float>> values_of(Model& m, DType dtype = DType::F32) {
  std::map<std::string, std::vector<float>> out;
  m.visit([&](const std::string& n, auto& p) {
    auto v = p.value.to_host();
    if (dtype != DType::F32) {
      std::vector<std::byte> stored(v.size() * dtype_size(dtype));
      convert_from_f32(v, dtype, stored.data());
      convert_to_f32(stored.data(), dtype, v);
    }
    out[n] = v;
  });
  return out;
}

// The sampling settings a reference fixture's metadata records (prompt, negative_prompt, steps, guidance_scale, size,
// noise_seed), with its input.latents and the given scheduler.
template <class Source>
pipeline::GenerationOptions fixture_generation_options(const Source& fixture, const std::string& scheduler) {
  const auto& meta = fixture.metadata();
  pipeline::GenerationOptions o;
  o.prompt = meta.at("prompt");
  o.negative_prompt = meta.at("negative_prompt");
  o.steps = std::stoi(meta.at("steps"));
  o.guidance_scale = std::stod(meta.at("guidance_scale"));
  o.width = o.height = std::stoll(meta.at("size"));
  o.seed = std::stoull(meta.at("noise_seed"));
  o.scheduler = scheduler;
  o.latents = fixture.read_f32("input.latents");
  return o;
}

// "a photo of a thing", 3 DDIM steps, 32x32.
template <class B>
pipeline::GenerationResult sample(pipeline::TextToImagePipeline<B>& p, std::uint64_t seed) {
  pipeline::GenerationOptions g;
  g.prompt = "a photo of a thing";
  g.steps = 3;
  g.width = g.height = 32;
  g.seed = seed;
  g.scheduler = "ddim";
  return p.generate(g);
}

}  // namespace dreambooth::test
