// A LoRA adapter on a Linear or Conv2d layer, as peft's lora.Linear / lora.Conv2d and kohya's LoRAModule compute it:
//   y = base(x) + scale * up(down(dropout(x))),   scale = alpha / rank.
// On a Linear: down[rank, in] (peft's lora_A, kohya's lora_down) and up[out, rank] (lora_B, lora_up), no biases.
// On a Conv2d (kohya's LoCon): down[rank, in, k, k] convolves with the layer's kernel, stride and padding, up[out, rank,
// 1, 1] is a 1x1 convolution. The layer holding the adapter calls add_forward after its own forward and backward after
// its own backward; in LoRA training the base weights are frozen (no gradient kept) and only down and up have gradients.
//
// Dropout (peft's lora_dropout) applies to the adapter's input while `training`: element i is dropped when
// rng::uniform(dropout_seed, dropout_offset, i) < dropout (backend op `dropout`), so the backward recomputes the same
// mask instead of keeping it. The network sets the seed and offset for each micro-batch (see LoraNetwork).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "dreambooth/core/error.hpp"
#include "dreambooth/nn/dims.hpp"
#include "dreambooth/nn/param.hpp"

namespace dreambooth::nn {

// The convolution an adapter on a Conv2d layer follows (the layer's kernel, stride and padding).
struct LoraConvGeometry {
  std::int64_t kernel = 1, stride = 1, padding = 0, padding_end = -1;
};

template <class B>
struct LoraAdapter {
  std::int64_t in_features = 0, out_features = 0, rank = 0;
  double alpha = 0;
  bool conv = false;  // on a Conv2d layer: down and up are convolutions (geometry below)
  LoraConvGeometry geometry;
  double dropout = 0;     // in [0, 1)
  bool training = false;  // dropout applies only while training
  std::uint64_t dropout_seed = 0, dropout_offset = 0;
  Param<B> down, up;

  LoraAdapter() = default;
  // An adapter on a Linear layer [out, in].
  LoraAdapter(std::int64_t in, std::int64_t out, std::int64_t r, double a) : in_features(in), out_features(out), rank(r), alpha(a) {
    check();
    down.shape = {r, in};
    up.shape = {out, r};
  }
  // An adapter on a Conv2d layer [out, in, k, k].
  LoraAdapter(std::int64_t in, std::int64_t out, std::int64_t r, double a, LoraConvGeometry g)
      : in_features(in), out_features(out), rank(r), alpha(a), conv(true), geometry(g) {
    check();
    down.shape = {r, in, g.kernel, g.kernel};
    up.shape = {out, r, 1, 1};
  }

  double scale() const { return alpha / static_cast<double>(rank); }
  // The number of inputs each down row sees (in * k * k on a convolution): kaiming's fan-in.
  std::int64_t fan_in() const { return conv ? in_features * geometry.kernel * geometry.kernel : in_features; }
  bool dropping() const { return training && dropout > 0; }

  // down and up under <prefix>lora_down.weight and <prefix>lora_up.weight (kohya's names).
  void visit(const std::string& prefix, const ParamVisitor<B>& f) {
    f(prefix + "lora_down.weight", down);
    f(prefix + "lora_up.weight", up);
  }

  // y += scale * up(down(dropout(x))): x[N, in] -> y[N, out] (N: every leading dimension of x) on a Linear,
  // x[N, in, H, W] -> y[N, out, P, Q] on a Conv2d. On a Linear the up projection accumulates into y in one GEMM
  // (alpha = scale, beta = 1: y + scale * (h up^T), peft's order), with no [N, out] temporary to scale and add.
  void add_forward(B& b, Tensor<B>& y, const Tensor<B>& x) const {
    const auto xd = dropped_input(b, x);
    const auto h = project_down(b, xd);
    if (!conv) {
      b.gemm(false, true, rows(x), out_features, rank, static_cast<float>(scale()), ptr(h), rank, ptr(up.value), rank, 1.0f, ptr(y), out_features);
      return;
    }
    auto t = empty_like(b, y);
    b.conv2d_forward(ptr(t), ptr(h), ptr(up.value), nullptr, up_dims(h));
    const auto n = static_cast<std::size_t>(t.numel());
    b.scale(ptr(t), ptr(t), static_cast<float>(scale()), n);
    b.accumulate(ptr(y), ptr(t), n);
  }

  // From dy (shaped as y) and the layer's input x: with h = down(dropout(x)) (recomputed: one rank-wide GEMM or
  // convolution), up.grad += scale * dy^T h, dh = scale * dy up, down.grad += dh^T dropout(x) and, when dx is given,
  // dx += dropout(dh down) (the same mask). Null gradients (a frozen adapter) are skipped. On a Linear each is one GEMM
  // that reads dy or x once and accumulates where it can (without dropout dh down goes straight into dx); on a Conv2d
  // the 1x1 up convolution runs on scale * dy.
  void backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, Tensor<B>* dx) {
    const auto xd = dropped_input(b, x);
    const auto h = project_down(b, xd);
    auto dh = empty_like(b, h);
    const auto s = static_cast<float>(scale());
    // the adapter's dx goes through a temporary only where it is masked or the convolution assigns it
    const bool separate_dx = dx && (dropping() || conv);
    const auto dx_lora = separate_dx ? empty_like(b, x) : Tensor<B>();
    if (conv) {
      auto dt = empty_like(b, dy);
      b.scale(ptr(dt), ptr(dy), s, static_cast<std::size_t>(dt.numel()));
      b.conv2d_backward(ptr(dh), ptr(up.grad), nullptr, ptr(dt), ptr(h), ptr(up.value), up_dims(h));
      b.conv2d_backward(dx ? ptr(dx_lora) : nullptr, ptr(down.grad), nullptr, ptr(dh), ptr(xd), ptr(down.value), down_dims(x));
    } else {
      const auto N = rows(x);
      b.gemm(false, false, N, rank, out_features, s, ptr(dy), out_features, ptr(up.value), rank, 0.0f, ptr(dh), rank);  // dh[N, rank]
      if (ptr(up.grad))  // up.grad[out, rank] += scale * dy^T h
        b.gemm(true, false, out_features, rank, N, s, ptr(dy), out_features, ptr(h), rank, 1.0f, ptr(up.grad), rank);
      if (ptr(down.grad))  // down.grad[rank, in] += dh^T dropout(x)
        b.gemm(true, false, rank, in_features, N, 1.0f, ptr(dh), rank, ptr(xd), in_features, 1.0f, ptr(down.grad), in_features);
      if (dx)  // dx[N, in] += dh down, or the temporary = dh down
        b.gemm(false, false, N, in_features, rank, 1.0f, ptr(dh), rank, ptr(down.value), in_features, separate_dx ? 0.0f : 1.0f,
               separate_dx ? ptr(dx_lora) : ptr(*dx), in_features);
    }
    if (!separate_dx) return;
    const auto n = static_cast<std::size_t>(dx_lora.numel());
    if (dropping()) b.dropout(ptr(dx_lora), ptr(dx_lora), n, dropout_seed, dropout_offset, static_cast<float>(dropout));
    b.accumulate(ptr(*dx), ptr(dx_lora), n);
  }

 private:
  void check() const {
    DB_CHECK(rank > 0, "LoRA: the rank must be positive, not ", rank);
    DB_CHECK(std::isfinite(alpha) && alpha > 0, "LoRA: alpha must be a positive number, not ", alpha);
  }

  std::int64_t rows(const Tensor<B>& x) const { return x.numel() / in_features; }

  Conv2dDims down_dims(const Tensor<B>& x) const {
    DB_CHECK(x.shape().rank() == 4 && x.shape()[1] == in_features, "LoRA: input ", x.shape().str(), " has not ", in_features, " channels");
    const auto& g = geometry;
    return {x.shape()[0], in_features, x.shape()[2], x.shape()[3], rank,          g.kernel,     g.kernel,
            g.stride,     g.stride,    g.padding,    g.padding,    g.padding_end, g.padding_end};
  }
  // h[N, rank, P, Q] -> [N, out, P, Q], 1x1
  Conv2dDims up_dims(const Tensor<B>& h) const { return {h.shape()[0], rank, h.shape()[2], h.shape()[3], out_features, 1, 1, 1, 1, 0, 0, -1, -1}; }

  // dropout(x) while training with dropout, else x itself.
  Tensor<B> dropped_input(B& b, const Tensor<B>& x) const {
    if (!dropping()) return x;
    auto xd = empty_like(b, x);
    b.dropout(ptr(xd), ptr(x), static_cast<std::size_t>(x.numel()), dropout_seed, dropout_offset, static_cast<float>(dropout));
    return xd;
  }

  // h = down(x): [N, rank] on a Linear, [N, rank, P, Q] on a Conv2d
  Tensor<B> project_down(B& b, const Tensor<B>& x) const {
    if (conv) {
      const auto d = down_dims(x);
      auto h = Tensor<B>::empty(b, {d.batch, rank, d.out_height(), d.out_width()});
      b.conv2d_forward(ptr(h), ptr(x), ptr(down.value), nullptr, d);
      return h;
    }
    DB_CHECK(x.shape()[-1] == in_features, "LoRA: input ", x.shape().str(), " does not end in ", in_features);
    auto h = Tensor<B>::empty(b, {rows(x), rank});
    b.linear_forward(ptr(h), ptr(x), ptr(down.value), nullptr, LinearDims{rows(x), in_features, rank});
    return h;
  }
};

}  // namespace dreambooth::nn
