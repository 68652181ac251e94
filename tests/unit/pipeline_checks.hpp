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
