// Seeded random initialisation of any model that visits its parameters (benchmarks and demos: no pretrained weights
// can be downloaded). Matrices and kernels N(0, 1/fan_in); vectors 0, except norm scales 1.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "dreambooth/nn/modules.hpp"

namespace dreambooth::nn {

template <class B, class Model>
void init_random(B& b, Model& model, std::uint64_t seed) {
  std::uint64_t stream = 0;
  model.visit([&](const std::string& name, Param<B>& p) {
    const auto n = static_cast<std::size_t>(p.shape.numel());
    if (p.shape.rank() == 1) {
      const bool norm_scale = name.find("norm") != std::string::npos && name.ends_with("weight");
      b.fill(ptr(p.value), norm_scale ? 1.0f : 0.0f, n);
    } else {
      const double fan_in =
          p.shape.rank() == 2 && name.find("embedding") != std::string::npos ? 1.0 : static_cast<double>(p.shape.numel() / p.shape[0]);
      b.fill_normal(ptr(p.value), n, seed, stream, 0.0f, static_cast<float>(1.0 / std::sqrt(fan_in)));
    }
    ++stream;
  });
}

}  // namespace dreambooth::nn
