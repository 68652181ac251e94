// Parameter storage shared by every model: counting, and one arena for values plus one for gradients, laid out in the
// model's visit order and sized before anything is allocated.
#pragma once

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
    if (with_gradients) gradients_.emplace(b, bytes, name + " gradients");
    model.visit([&](const std::string&, Param<B>& p) {
      p.value = values_->allocate(p.shape);
      if (with_gradients) {
        p.grad = gradients_->allocate(p.shape);
        p.grad.set_zero();
      }
    });
  }
  std::size_t bytes() const { return values_ ? values_->capacity() : 0; }

 private:
  std::optional<Arena<B>> values_, gradients_;
};

template <class B, class Model>
void zero_gradients(Model& model) {
  model.visit([&](const std::string&, Param<B>& p) { p.grad.set_zero(); });
}

}  // namespace dreambooth::nn
