// Parameter storage shared by every model: counting, and one arena for values plus one for gradients, laid out in the
// model's visit order and sized before anything is allocated.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dreambooth/core/arena.hpp"
#include "dreambooth/nn/modules.hpp"

namespace dreambooth::nn {

template <class B, class Model>
std::int64_t parameter_count(Model& model) {
  std::int64_t n = 0;
  model.visit([&](const std::string&, Param<B>& p) { n += p.shape.numel(); });
  return n;
}

template <class B>
class ParameterStorage {
 public:
  // Allocates every parameter `model` visits (and, with gradients, a zeroed gradient of the same shape).
  template <class Model>
  void allocate(B& b, Model& model, const std::string& name, bool with_gradients) {
    std::vector<std::pair<Shape, DType>> plan;
    model.visit([&](const std::string&, Param<B>& p) { plan.emplace_back(p.shape, DType::F32); });
    const auto bytes = Arena<B>::plan(plan);
    values_.emplace(b, bytes, name + " parameters");
    if (with_gradients) {  // zeroed padding too: a data-parallel gradient sum adds runs of gradients with their padding
      gradients_.emplace(b, bytes, name + " gradients");
      gradients_->set_zero();
    }
    model.visit([&](const std::string&, Param<B>& p) {
      p.value = values_->allocate(p.shape);
      if (with_gradients) p.grad = gradients_->allocate(p.shape);
    });
  }
  std::size_t bytes() const { return values_ ? values_->capacity() : 0; }

  // Frees every gradient `model` visits: the parameters are frozen (backward computes no gradient for them).
  template <class Model>
  void release_gradients(Model& model) {
    model.visit([&](const std::string&, Param<B>& p) { p.grad = Tensor<B>(); });
    gradients_.reset();
  }

 private:
  std::optional<Arena<B>> values_, gradients_;
};

template <class B, class Model>
void zero_gradients(Model& model) {
  model.visit([&](const std::string&, Param<B>& p) { p.grad.set_zero(); });
}

// Refuses a model holding a NaN or infinite parameter value before it is written anywhere, naming the first such
// parameter and how many values are not finite (`what` says what was about to be written).
template <class Model>
void require_finite_parameters(Model& model, const std::string& what) {
  model.visit([&](const std::string& name, auto& p) {
    const auto values = p.value.to_host();
    std::size_t bad = 0;
    for (float v : values) bad += !std::isfinite(v);
    if (bad > 0) fail(what, ": parameter ", name, " holds ", bad, " non-finite values (NaN or infinity); nothing was written");
  });
}

}  // namespace dreambooth::nn
