// Layers with parameters, over Tensor<Backend>: Linear, Conv2d, GroupNorm, LayerNorm, and multi-head Attention.
//
// Each layer names its parameters as diffusers / transformers do (weight, bias, to_q, to_out.0, ...) through
// visit(prefix, f), so that loading a checkpoint is a walk over the model, not a lookup table. Forward returns
// new tensors; backward takes what forward saved (the caller keeps the inputs), accumulates parameter gradients
// into Param::grad and returns the input gradient.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "dreambooth/backend.hpp"
#include "dreambooth/core/tensor.hpp"
#include "dreambooth/nn/lora.hpp"
#include "dreambooth/nn/param.hpp"

namespace dreambooth::nn {

template <class B>
struct Linear;

// Walks a model's Linear layers with their module names (the parameter names without ".weight": "...attn1.to_q"),
// where LoRA adapters go.
template <class B>
using LinearVisitor = std::function<void(const std::string& name, Linear<B>& layer)>;
template <class B>
struct Conv2d;
// The same for Conv2d layers ("...resnets.0.conv1"): kohya's LoCon adapters.
template <class B>
using Conv2dVisitor = std::function<void(const std::string& name, Conv2d<B>& layer)>;

// y = x + other (new tensor); used for residual connections.
template <class B>
Tensor<B> add(B& b, const Tensor<B>& x, const Tensor<B>& other) {
  DB_CHECK(x.shape() == other.shape(), "add: shapes ", x.shape().str(), " and ", other.shape().str());
  auto y = empty_like(b, x);
  b.add(ptr(y), ptr(x), ptr(other), static_cast<std::size_t>(x.numel()));
  return y;
}

// y += x in place (gradient accumulation).
template <class B>
void accumulate(B& b, Tensor<B>& y, const Tensor<B>& x) {
  DB_CHECK(y.shape() == x.shape(), "accumulate: shapes ", y.shape().str(), " and ", x.shape().str());
  b.accumulate(ptr(y), ptr(x), static_cast<std::size_t>(x.numel()));
}

template <class B>
Tensor<B> silu(B& b, const Tensor<B>& x) {
  auto y = empty_like(b, x);
  b.silu_forward(ptr(y), ptr(x), static_cast<std::size_t>(x.numel()));
  return y;
}
template <class B>
Tensor<B> silu_backward(B& b, const Tensor<B>& dy, const Tensor<B>& x) {
  auto dx = empty_like(b, x);
  b.silu_backward(ptr(dx), ptr(dy), ptr(x), static_cast<std::size_t>(x.numel()));
  return dx;
}

// [N, R, C] -> [N, C, R]
template <class B>
Tensor<B> transpose(B& b, const Tensor<B>& x, std::int64_t batch, std::int64_t rows, std::int64_t cols) {
  auto y = Tensor<B>::empty(b, {batch, cols, rows});
  b.transpose(ptr(y), ptr(x), batch, rows, cols);
  return y;
}

// y[..., out] = x[..., in] W^T + bias
template <class B>
struct Linear {
  std::int64_t in_features = 0, out_features = 0;
  bool has_bias = true;
  Param<B> weight, bias;
  LoraAdapter<B>* lora = nullptr;  // an adapter added to the output (owned by a LoRA network), or none

  Linear() = default;
  Linear(std::int64_t in, std::int64_t out, bool with_bias = true) : in_features(in), out_features(out), has_bias(with_bias) {
    weight.shape = {out, in};
    bias.shape = {out};
  }
  void visit(const std::string& prefix, const ParamVisitor<B>& f) {
    f(prefix + "weight", weight);
    if (has_bias) f(prefix + "bias", bias);
  }
  LinearDims dims(const Tensor<B>& x) const {
    DB_CHECK(x.shape()[-1] == in_features, "Linear: input ", x.shape().str(), " does not end in ", in_features);
    return {x.numel() / in_features, in_features, out_features};
  }
  Tensor<B> forward(B& b, const Tensor<B>& x) const {
    Shape out_shape = x.shape();
    out_shape[-1] = out_features;
    auto y = Tensor<B>::empty(b, out_shape);
    b.linear_forward(ptr(y), ptr(x), ptr(weight.value), has_bias ? ptr(bias.value) : nullptr, dims(x));
    if (lora) lora->add_forward(b, y, x);
    return y;
  }
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, bool need_dx = true) {
    auto dx = need_dx ? empty_like(b, x) : Tensor<B>();
    b.linear_backward(need_dx ? ptr(dx) : nullptr, ptr(weight.grad), has_bias ? ptr(bias.grad) : nullptr, ptr(dy), ptr(x), ptr(weight.value),
                      dims(x));
    if (lora) lora->backward(b, dy, x, need_dx ? &dx : nullptr);
    return dx;
  }
};

// y[N, K, P, Q] = conv(x[N, C, H, W]) + bias
template <class B>
struct Conv2d {
  std::int64_t in_channels = 0, out_channels = 0, kernel = 1, stride = 1, padding = 0;
  std::int64_t padding_end = -1;  // bottom / right padding when it differs from the top / left (< 0: the same)
  Param<B> weight, bias;
  LoraAdapter<B>* lora = nullptr;  // an adapter added to the output (owned by a LoRA network), or none

  Conv2d() = default;
  Conv2d(std::int64_t in, std::int64_t out, std::int64_t k, std::int64_t s = 1, std::int64_t p = 0, std::int64_t p_end = -1)
      : in_channels(in), out_channels(out), kernel(k), stride(s), padding(p), padding_end(p_end) {
    weight.shape = {out, in, k, k};
    bias.shape = {out};
  }
  void visit(const std::string& prefix, const ParamVisitor<B>& f) { visit_weight_and_bias(prefix, f, weight, bias); }
  Conv2dDims dims(const Tensor<B>& x) const {
    DB_CHECK(x.shape().rank() == 4 && x.shape()[1] == in_channels, "Conv2d: input ", x.shape().str(), " has not ", in_channels, " channels");
    return {x.shape()[0], in_channels, x.shape()[2], x.shape()[3], out_channels, kernel,     kernel,
            stride,       stride,      padding,      padding,      padding_end,  padding_end};
  }
  Tensor<B> forward(B& b, const Tensor<B>& x) const {
    const auto d = dims(x);
    auto y = Tensor<B>::empty(b, {d.batch, out_channels, d.out_height(), d.out_width()});
    b.conv2d_forward(ptr(y), ptr(x), ptr(weight.value), ptr(bias.value), d);
    if (lora) lora->add_forward(b, y, x);
    return y;
  }
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, bool need_dx = true) {
    auto dx = need_dx ? empty_like(b, x) : Tensor<B>();
    b.conv2d_backward(need_dx ? ptr(dx) : nullptr, ptr(weight.grad), ptr(bias.grad), ptr(dy), ptr(x), ptr(weight.value), dims(x));
    if (lora) lora->backward(b, dy, x, need_dx ? &dx : nullptr);
    return dx;
  }
};

// Statistics a normalisation saves for its backward.
template <class B>
struct NormStats {
  Tensor<B> mean, rstd;
};

template <class B>
struct GroupNorm {
  std::int64_t groups = 1, channels = 0;
  double eps = 1e-5;
  Param<B> weight, bias;

  GroupNorm() = default;
  GroupNorm(std::int64_t g, std::int64_t c, double e) : groups(g), channels(c), eps(e) {
    DB_CHECK(g > 0 && c % g == 0, "GroupNorm: ", c, " channels do not split into ", g, " groups");
    weight.shape = {c};
    bias.shape = {c};
  }
  void visit(const std::string& prefix, const ParamVisitor<B>& f) { visit_weight_and_bias(prefix, f, weight, bias); }
  GroupNormDims dims(const Tensor<B>& x) const {
    DB_CHECK(x.shape().rank() >= 2 && x.shape()[1] == channels, "GroupNorm: input ", x.shape().str(), " has not ", channels, " channels");
    return {x.shape()[0], channels, x.numel() / (x.shape()[0] * channels), groups, eps};
  }
  Tensor<B> forward(B& b, const Tensor<B>& x, NormStats<B>& stats) const { return normalize(b, x, stats, false); }
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, const NormStats<B>& stats) {
    auto dx = empty_like(b, x);
    b.group_norm_backward(ptr(dx), ptr(weight.grad), ptr(bias.grad), ptr(dy), ptr(x), ptr(stats.mean), ptr(stats.rstd), ptr(weight.value), dims(x));
    return dx;
  }
  // silu(group_norm(x)), fused: the normalised tensor is not kept; backward recomputes it from x and the statistics.
  Tensor<B> forward_silu(B& b, const Tensor<B>& x, NormStats<B>& stats) const { return normalize(b, x, stats, true); }
  Tensor<B> backward_silu(B& b, const Tensor<B>& dy, const Tensor<B>& x, const NormStats<B>& stats) {
    auto dx = empty_like(b, x);
    b.group_norm_silu_backward(ptr(dx), ptr(weight.grad), ptr(bias.grad), ptr(dy), ptr(x), ptr(stats.mean), ptr(stats.rstd), ptr(weight.value),
                               ptr(bias.value), dims(x));
    return dx;
  }

 private:
  Tensor<B> normalize(B& b, const Tensor<B>& x, NormStats<B>& stats, bool silu) const {
    const auto d = dims(x);
    auto y = empty_like(b, x);
    stats.mean = Tensor<B>::empty(b, {d.batch, groups});
    stats.rstd = Tensor<B>::empty(b, {d.batch, groups});
    if (silu)
      b.group_norm_silu_forward(ptr(y), ptr(stats.mean), ptr(stats.rstd), ptr(x), ptr(weight.value), ptr(bias.value), d);
    else
      b.group_norm_forward(ptr(y), ptr(stats.mean), ptr(stats.rstd), ptr(x), ptr(weight.value), ptr(bias.value), d);
    return y;
  }
};

template <class B>
struct LayerNorm {
  std::int64_t dim = 0;
  double eps = 1e-5;
  Param<B> weight, bias;

  LayerNorm() = default;
  LayerNorm(std::int64_t d, double e) : dim(d), eps(e) {
    weight.shape = {d};
    bias.shape = {d};
  }
  void visit(const std::string& prefix, const ParamVisitor<B>& f) { visit_weight_and_bias(prefix, f, weight, bias); }
  LayerNormDims dims(const Tensor<B>& x) const {
    DB_CHECK(x.shape()[-1] == dim, "LayerNorm: input ", x.shape().str(), " does not end in ", dim);
    return {x.numel() / dim, dim, eps};
  }
  Tensor<B> forward(B& b, const Tensor<B>& x, NormStats<B>& stats) const {
    const auto d = dims(x);
    auto y = empty_like(b, x);
    stats.mean = Tensor<B>::empty(b, {d.rows});
    stats.rstd = Tensor<B>::empty(b, {d.rows});
    b.layer_norm_forward(ptr(y), ptr(stats.mean), ptr(stats.rstd), ptr(x), ptr(weight.value), ptr(bias.value), d);
    return y;
  }
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, const NormStats<B>& stats) {
    auto dx = empty_like(b, x);
    b.layer_norm_backward(ptr(dx), ptr(weight.grad), ptr(bias.grad), ptr(dy), ptr(x), ptr(stats.mean), ptr(stats.rstd), ptr(weight.value), dims(x));
    return dx;
  }
};

// Parameter names of an attention layer's four projections.
struct AttentionNames {
  std::string q = "to_q.", k = "to_k.", v = "to_v.", out = "to_out.0.";                    // diffusers
  static AttentionNames clip() { return {"q_proj.", "k_proj.", "v_proj.", "out_proj."}; }  // transformers' CLIP
};

// Multi-head attention: q / k / v projections (bias optional), an output projection (with bias), `heads` heads of
// dim / heads. Self-attention when the context is the input itself; cross-attention on a context[N, S, context_dim].
// Named as diffusers' Attention by default (to_q, to_k, to_v, to_out.0).
template <class B>
struct Attention {
  std::int64_t dim = 0, context_dim = 0, heads = 1;
  bool causal = false;
  Linear<B> to_q, to_k, to_v, to_out;
  AttentionNames names;

  struct Cache {
    Tensor<B> q, k, v, attended, lse;  // q[N, T, D], k / v[N, S, D], attended[N, T, D], lse[N, heads, T]
  };

  Attention() = default;
  Attention(std::int64_t d, std::int64_t ctx_dim, std::int64_t h, bool qkv_bias = false, AttentionNames n = {}, bool is_causal = false)
      : dim(d),
        context_dim(ctx_dim),
        heads(h),
        causal(is_causal),
        to_q(d, d, qkv_bias),
        to_k(ctx_dim, d, qkv_bias),
        to_v(ctx_dim, d, qkv_bias),
        to_out(d, d),
        names(std::move(n)) {
    DB_CHECK(h > 0 && d % h == 0, "Attention: width ", d, " does not split into ", h, " heads");
  }
  void visit(const std::string& prefix, const ParamVisitor<B>& f) {
    to_q.visit(prefix + names.q, f);
    to_k.visit(prefix + names.k, f);
    to_v.visit(prefix + names.v, f);
    to_out.visit(prefix + names.out, f);
  }
  void visit_linear_layers(const std::string& prefix, const LinearVisitor<B>& f) {
    for (auto [layer, name] : {std::pair{&to_q, &names.q}, std::pair{&to_k, &names.k}, std::pair{&to_v, &names.v}, std::pair{&to_out, &names.out}})
      f(prefix + name->substr(0, name->size() - 1), *layer);  // the names end in "."
  }
  AttentionDims dims(const Tensor<B>& x, const Tensor<B>& context) const {
    return {x.shape()[0], heads, x.shape()[1], context.shape()[1], dim / heads, causal, 0.0};
  }
  // x[N, T, dim], context[N, S, context_dim] -> [N, T, dim]
  Tensor<B> forward(B& b, const Tensor<B>& x, const Tensor<B>& context, Cache& c) const {
    c.q = to_q.forward(b, x);
    c.k = to_k.forward(b, context);
    c.v = to_v.forward(b, context);
    const auto d = dims(x, context);
    c.attended = empty_like(b, c.q);
    c.lse = Tensor<B>::empty(b, {d.batch, heads, d.q_len});
    b.attention_forward(ptr(c.attended), ptr(c.lse), ptr(c.q), ptr(c.k), ptr(c.v), d);
    return to_out.forward(b, c.attended);
  }
  // Returns dx; adds the context's gradient into dcontext when given (cross-attention), or into dx (self-attention,
  // pass dcontext = nullptr and context = x). An undefined *dcontext: the context's gradient is not wanted (a frozen
  // text encoder), so to_k and to_v compute only their weights' and adapters' gradients.
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, const Tensor<B>& context, const Cache& c, Tensor<B>* dcontext) {
    const auto d = dims(x, context);
    auto dattended = to_out.backward(b, dy, c.attended);
    auto dq = empty_like(b, c.q), dk = empty_like(b, c.k), dv = empty_like(b, c.v);
    b.attention_backward(ptr(dq), ptr(dk), ptr(dv), ptr(dattended), ptr(c.q), ptr(c.k), ptr(c.v), ptr(c.attended), ptr(c.lse), d);
    auto dx = to_q.backward(b, dq, x);
    if (dcontext && !dcontext->defined()) {
      to_k.backward(b, dk, context, /*need_dx=*/false);
      to_v.backward(b, dv, context, /*need_dx=*/false);
      return dx;
    }
    Tensor<B>& dctx = dcontext ? *dcontext : dx;
    accumulate(b, dctx, to_k.backward(b, dk, context));
    accumulate(b, dctx, to_v.backward(b, dv, context));
    return dx;
  }
};

}  // namespace dreambooth::nn
