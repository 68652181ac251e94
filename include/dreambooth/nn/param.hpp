// A layer's parameter (its value and gradient), how models name them (a visitor walking every parameter with its
// name), and the two tensor helpers every layer uses.
#pragma once

#include <functional>
#include <string>

#include "dreambooth/core/tensor.hpp"

namespace dreambooth::nn {

template <class B>
struct Param {
  Shape shape;
  Tensor<B> value;  // F32, allocated by the model (one arena for values, one for gradients)
  Tensor<B> grad;   // empty when the parameter is frozen: backward passes a null gradient and computes none for it
};

template <class B>
using ParamVisitor = std::function<void(const std::string& name, Param<B>& param)>;

// The usual pair of a layer's parameters, under <prefix>weight and <prefix>bias.
template <class B>
void visit_weight_and_bias(const std::string& prefix, const ParamVisitor<B>& f, Param<B>& weight, Param<B>& bias) {
  f(prefix + "weight", weight);
  f(prefix + "bias", bias);
}

// Called by a model's backward pass with each parameter whose gradient that pass has finished, in the order the pass
// finishes them, so that data-parallel training can sum a bucket of gradients over the processes while the backward
// runs on (train/gradient_sum.hpp). Empty: nobody listens.
template <class B>
using GradientReadyHook = std::function<void(Param<B>& param)>;

// Reports every parameter of `module` (anything with visit(prefix, visitor)) to `hook`, when there is one.
template <class B, class Module>
void report_gradients_ready(const GradientReadyHook<B>& hook, Module& module) {
  if (hook) module.visit("", [&](const std::string&, Param<B>& p) { hook(p); });
}

template <class B>
Tensor<B> empty_like(B& b, const Tensor<B>& t) {
  return Tensor<B>::empty(b, t.shape(), DType::F32);
}

template <class B>
float* ptr(const Tensor<B>& t) {
  return t.template data<float>();
}

}  // namespace dreambooth::nn
