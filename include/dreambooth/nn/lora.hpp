// A LoRA adapter on a Linear layer, as peft's lora.Linear and kohya's LoRAModule compute it:
//   y[N, out] = base(x) + scale * up(down(x)),   scale = alpha / rank,
// down[rank, in] (peft's lora_A, kohya's lora_down) and up[out, rank] (lora_B, lora_up), neither with a bias. The
// layer holding the adapter (nn::Linear) calls add_forward after its own forward and backward after its own backward;
// in LoRA training the base weights are frozen (no gradient kept) and only down and up have gradients.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "dreambooth/core/error.hpp"
#include "dreambooth/nn/dims.hpp"
#include "dreambooth/nn/param.hpp"

namespace dreambooth::nn {

template <class B>
struct LoraAdapter {
  std::int64_t in_features = 0, out_features = 0, rank = 0;
  double alpha = 0;
  Param<B> down, up;

  LoraAdapter() = default;
  LoraAdapter(std::int64_t in, std::int64_t out, std::int64_t r, double a) : in_features(in), out_features(out), rank(r), alpha(a) {
    DB_CHECK(r > 0, "LoRA: the rank must be positive, not ", r);
    DB_CHECK(std::isfinite(a) && a > 0, "LoRA: alpha must be a positive number, not ", a);
    down.shape = {r, in};
    up.shape = {out, r};
  }

  double scale() const { return alpha / static_cast<double>(rank); }

  // down and up under <prefix>lora_down.weight and <prefix>lora_up.weight (kohya's names).
  void visit(const std::string& prefix, const ParamVisitor<B>& f) {
    f(prefix + "lora_down.weight", down);
    f(prefix + "lora_up.weight", up);
  }

  // y[N, out] += scale * up(down(x[N, in])) (N: every leading dimension of x).
  void add_forward(B& b, Tensor<B>& y, const Tensor<B>& x) const {
    const auto rows = x.numel() / in_features;
    const auto h = project_down(b, x);
    auto t = Tensor<B>::empty(b, {rows, out_features});
    b.linear_forward(ptr(t), ptr(h), ptr(up.value), nullptr, LinearDims{rows, rank, out_features});
    const auto n = static_cast<std::size_t>(t.numel());
    b.scale(ptr(t), ptr(t), static_cast<float>(scale()), n);
    b.accumulate(ptr(y), ptr(t), n);
  }

  // From dy[N, out] and the layer's input x[N, in]: with dt = scale * dy and h = down(x) (recomputed, a [N, rank]
  // GEMM), up.grad += dt^T h, dh = dt up, down.grad += dh^T x and, when dx is given, dx[N, in] += dh down. Null
  // gradients (a frozen adapter) are skipped.
  void backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, Tensor<B>* dx) {
    const auto rows = x.numel() / in_features;
    const auto h = project_down(b, x);
    auto dt = Tensor<B>::empty(b, {rows, out_features});
    b.scale(ptr(dt), ptr(dy), static_cast<float>(scale()), static_cast<std::size_t>(dt.numel()));
    auto dh = Tensor<B>::empty(b, {rows, rank});
    b.linear_backward(ptr(dh), ptr(up.grad), nullptr, ptr(dt), ptr(h), ptr(up.value), LinearDims{rows, rank, out_features});
    Tensor<B> dx_lora;
    if (dx) dx_lora = empty_like(b, x);
    b.linear_backward(dx ? ptr(dx_lora) : nullptr, ptr(down.grad), nullptr, ptr(dh), ptr(x), ptr(down.value), LinearDims{rows, in_features, rank});
    if (dx) b.accumulate(ptr(*dx), ptr(dx_lora), static_cast<std::size_t>(dx_lora.numel()));
  }

 private:
  // h[N, rank] = down(x)
  Tensor<B> project_down(B& b, const Tensor<B>& x) const {
    DB_CHECK(x.shape()[-1] == in_features, "LoRA: input ", x.shape().str(), " does not end in ", in_features);
    const auto rows = x.numel() / in_features;
    auto h = Tensor<B>::empty(b, {rows, rank});
    b.linear_forward(ptr(h), ptr(x), ptr(down.value), nullptr, LinearDims{rows, in_features, rank});
    return h;
  }
};

}  // namespace dreambooth::nn
