// The UNet's building blocks, with diffusers' parameter names: ResnetBlock2D, BasicTransformerBlock,
// Transformer2DModel (SpatialTransformer), Downsample2D, Upsample2D.
//
// ResnetBlock2D and the transformer blocks have forward(..., Cache&) and backward(..., Cache&): a Cache holds the
// block's input and what its backward needs. The resamplers' backward needs only their input (and Upsample2D's 2x
// image), which forward hands back and the caller keeps. Gradient checkpointing is one mechanism for every block (CheckpointedCache below): the
// caller keeps only the input (drop()) and the block's backward recomputes the rest first (recompute_if_dropped).
#pragma once

#include <string>
#include <vector>

#include "dreambooth/nn/modules.hpp"

namespace dreambooth::models {

// The part of a block's Cache that gradient checkpointing works on: the input, kept by drop(), and whether everything
// else backward needs is present. `Self` is the block's Cache, which adds its activations.
template <class B, class Self>
struct CheckpointedCache {
  Tensor<B> input;        // the block's input
  bool complete = false;  // the activations are present (false after drop(): backward recomputes them)
  // Keeps the input only.
  void drop() {
    Self kept;
    kept.input = std::move(input);
    static_cast<Self&>(*this) = std::move(kept);
  }
  // Before a backward: runs `forward` (which fills the cache again from `input`) when drop() emptied it.
  template <class Forward>
  void recompute_if_dropped(Forward&& forward) {
    if (!complete) forward(input);
  }
};

using nn::Attention;
using nn::Conv2d;
using nn::GroupNorm;
using nn::LayerNorm;
using nn::Linear;
using nn::NormStats;
using nn::ParamVisitor;
using nn::ptr;

// norm1 -> silu -> conv1 -> + time_emb_proj(silu(temb)) -> norm2 -> silu -> conv2, plus the (1x1-projected) input.
// Each norm -> silu pair is one fused op (GroupNorm::forward_silu): the normalised tensors are not kept.
// Without a time embedding (temb = 0: the VAE's blocks) the time_emb_proj step is absent.
template <class B>
struct ResnetBlock2D {
  GroupNorm<B> norm1, norm2;
  Conv2d<B> conv1, conv2, conv_shortcut;
  Linear<B> time_emb_proj;
  bool has_shortcut = false, has_time_embedding = true;

  struct Cache : CheckpointedCache<B, Cache> {  // input: x[N, Cin, H, W]
    NormStats<B> s1, s2;
    Tensor<B> a1, h1, a2;  // silu(norm1(x)), conv1 out + time bias, silu(norm2(h1))
  };

  ResnetBlock2D() = default;
  ResnetBlock2D(std::int64_t in, std::int64_t out, std::int64_t temb, std::int64_t groups, double eps)
      : norm1(groups, in, eps),
        norm2(groups, out, eps),
        conv1(in, out, 3, 1, 1),
        conv2(out, out, 3, 1, 1),
        conv_shortcut(in, out, 1),
        time_emb_proj(temb, out),
        has_shortcut(in != out),
        has_time_embedding(temb > 0) {}

  void visit(const std::string& p, const ParamVisitor<B>& f) {
    norm1.visit(p + "norm1.", f);
    conv1.visit(p + "conv1.", f);
    if (has_time_embedding) time_emb_proj.visit(p + "time_emb_proj.", f);
    norm2.visit(p + "norm2.", f);
    conv2.visit(p + "conv2.", f);
    if (has_shortcut) conv_shortcut.visit(p + "conv_shortcut.", f);
  }

  // temb_act = silu(time embedding)[N, temb] (ignored without a time embedding)
  Tensor<B> forward(B& b, const Tensor<B>& x, const Tensor<B>& temb_act, Cache& c) const {
    c.input = x;
    c.a1 = norm1.forward_silu(b, x, c.s1);
    auto h = conv1.forward(b, c.a1);
    if (has_time_embedding) {
      const auto shift = time_emb_proj.forward(b, temb_act);  // [N, Cout]
      c.h1 = nn::empty_like(b, h);
      b.add_channel_bias(ptr(c.h1), ptr(h), ptr(shift), h.shape()[0], h.shape()[1], h.shape()[2] * h.shape()[3]);
    } else {
      c.h1 = h;
    }
    c.a2 = norm2.forward_silu(b, c.h1, c.s2);
    auto out = conv2.forward(b, c.a2);
    nn::accumulate(b, out, has_shortcut ? conv_shortcut.forward(b, x) : x);
    c.complete = true;
    return out;
  }

  // Returns dx; adds into dtemb_act[N, temb] (undefined: the time embedding's gradient is not wanted).
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& temb_act, Cache& c, Tensor<B>& dtemb_act) {
    c.recompute_if_dropped([&](const Tensor<B>& x) { forward(b, x, temb_act, c); });
    auto da2 = conv2.backward(b, dy, c.a2);
    auto dh1 = norm2.backward_silu(b, da2, c.h1, c.s2);
    if (has_time_embedding) {
      auto dshift = Tensor<B>::empty(b, {dh1.shape()[0], dh1.shape()[1]});
      b.channel_sum(ptr(dshift), ptr(dh1), dh1.shape()[0], dh1.shape()[1], dh1.shape()[2] * dh1.shape()[3]);
      if (dtemb_act.defined())
        nn::accumulate(b, dtemb_act, time_emb_proj.backward(b, dshift, temb_act));
      else
        time_emb_proj.backward(b, dshift, temb_act, /*need_dx=*/false);
    }
    auto da1 = conv1.backward(b, dh1, c.a1);
    auto dx = norm1.backward_silu(b, da1, c.input, c.s1);
    nn::accumulate(b, dx, has_shortcut ? conv_shortcut.backward(b, dy, c.input) : dy);
    c.drop();
    return dx;
  }
};

// x + attn1(norm1(x)); + attn2(norm2(.), context); + ff(norm3(.)) with ff = Linear(4D) . GEGLU . Linear(8D).
template <class B>
struct BasicTransformerBlock {
  LayerNorm<B> norm1, norm2, norm3;
  Attention<B> attn1, attn2;
  Linear<B> ff_proj, ff_out;  // ff.net.0.proj [8D, D], ff.net.2 [D, 4D]

  struct Cache {
    NormStats<B> s1, s2, s3;
    Tensor<B> x1, x2;  // after attn1, after attn2 (the input x0 is the caller's)
    Tensor<B> n1, n2, n3, h, g;
    typename Attention<B>::Cache a1, a2;
  };

  BasicTransformerBlock() = default;
  BasicTransformerBlock(std::int64_t dim, std::int64_t context_dim, std::int64_t heads)
      : norm1(dim, 1e-5),
        norm2(dim, 1e-5),
        norm3(dim, 1e-5),
        attn1(dim, dim, heads),
        attn2(dim, context_dim, heads),
        ff_proj(dim, 8 * dim),
        ff_out(4 * dim, dim) {}

  void visit(const std::string& p, const ParamVisitor<B>& f) {
    norm1.visit(p + "norm1.", f);
    attn1.visit(p + "attn1.", f);
    norm2.visit(p + "norm2.", f);
    attn2.visit(p + "attn2.", f);
    norm3.visit(p + "norm3.", f);
    ff_proj.visit(p + "ff.net.0.proj.", f);
    ff_out.visit(p + "ff.net.2.", f);
  }
  void visit_linear_layers(const std::string& p, const nn::LinearVisitor<B>& f) {
    attn1.visit_linear_layers(p + "attn1.", f);
    attn2.visit_linear_layers(p + "attn2.", f);
    f(p + "ff.net.0.proj", ff_proj);
    f(p + "ff.net.2", ff_out);
  }

  // x[N, T, D], context[N, S, Dc]
  Tensor<B> forward(B& b, const Tensor<B>& x, const Tensor<B>& context, Cache& c) const {
    c.n1 = norm1.forward(b, x, c.s1);
    c.x1 = nn::add(b, x, attn1.forward(b, c.n1, c.n1, c.a1));
    c.n2 = norm2.forward(b, c.x1, c.s2);
    c.x2 = nn::add(b, c.x1, attn2.forward(b, c.n2, context, c.a2));
    c.n3 = norm3.forward(b, c.x2, c.s3);
    c.h = ff_proj.forward(b, c.n3);
    Shape g_shape = c.h.shape();
    g_shape[-1] /= 2;
    c.g = Tensor<B>::empty(b, g_shape);
    b.geglu_forward(ptr(c.g), ptr(c.h), c.g.numel() / g_shape[-1], g_shape[-1]);
    return nn::add(b, c.x2, ff_out.forward(b, c.g));
  }

  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, const Tensor<B>& context, const Cache& c, Tensor<B>& dcontext) {
    auto dg = ff_out.backward(b, dy, c.g);
    auto dh = nn::empty_like(b, c.h);
    b.geglu_backward(ptr(dh), ptr(dg), ptr(c.h), c.g.numel() / c.g.shape()[-1], c.g.shape()[-1]);
    auto dx2 = norm3.backward(b, ff_proj.backward(b, dh, c.n3), c.x2, c.s3);
    nn::accumulate(b, dx2, dy);
    auto dx1 = norm2.backward(b, attn2.backward(b, dx2, c.n2, context, c.a2, &dcontext), c.x1, c.s2);
    nn::accumulate(b, dx1, dx2);
    auto dx0 = norm1.backward(b, attn1.backward(b, dx1, c.n1, c.n1, c.a1, nullptr), x, c.s1);
    nn::accumulate(b, dx0, dx1);
    return dx0;
  }
};

// Transformer2DModel (the "SpatialTransformer"): GroupNorm(eps 1e-6) -> proj_in -> transformer blocks -> proj_out, plus
// the input. proj_in / proj_out are 1x1 convolutions (SD 1.x) or Linear layers (use_linear_projection, SD 2.x); both
// run here as Linear layers over tokens [N, H*W, C], since a 1x1 convolution is exactly that.
template <class B>
struct Transformer2D {
  GroupNorm<B> norm;
  Linear<B> proj_in, proj_out;
  std::vector<BasicTransformerBlock<B>> blocks;
  bool linear_projection = false;

  struct Cache : CheckpointedCache<B, Cache> {  // input: x[N, C, H, W]
    NormStats<B> s;
    Tensor<B> tokens_in;                  // normalised input as tokens [N, HW, C]
    std::vector<Tensor<B>> block_inputs;  // [N, HW, C] each, then the last block's output
    std::vector<typename BasicTransformerBlock<B>::Cache> blocks;
  };

  Transformer2D() = default;
  Transformer2D(std::int64_t channels, std::int64_t context_dim, std::int64_t heads, std::int64_t layers, std::int64_t groups, bool linear)
      : norm(groups, channels, 1e-6), proj_in(channels, channels), proj_out(channels, channels), linear_projection(linear) {
    for (std::int64_t i = 0; i < layers; ++i) blocks.emplace_back(channels, context_dim, heads);
    if (!linear) {  // stored as 1x1 convolution weights [C, C, 1, 1]
      proj_in.weight.shape = {channels, channels, 1, 1};
      proj_out.weight.shape = {channels, channels, 1, 1};
    }
  }

  void visit(const std::string& p, const ParamVisitor<B>& f) {
    norm.visit(p + "norm.", f);
    proj_in.visit(p + "proj_in.", f);
    for (std::size_t i = 0; i < blocks.size(); ++i) blocks[i].visit(p + "transformer_blocks." + std::to_string(i) + ".", f);
    proj_out.visit(p + "proj_out.", f);
  }
  void visit_linear_layers(const std::string& p, const nn::LinearVisitor<B>& f) {
    f(p + "proj_in", proj_in);
    for (std::size_t i = 0; i < blocks.size(); ++i) blocks[i].visit_linear_layers(p + "transformer_blocks." + std::to_string(i) + ".", f);
    f(p + "proj_out", proj_out);
  }

  Tensor<B> forward(B& b, const Tensor<B>& x, const Tensor<B>& context, Cache& c) const {
    const auto N = x.shape()[0], C = x.shape()[1], HW = x.shape()[2] * x.shape()[3];
    c.input = x;
    c.tokens_in = nn::transpose(b, norm.forward(b, x, c.s).reshape({N, C, HW}), N, C, HW);  // [N, HW, C]
    c.block_inputs.assign(1, proj_in.forward(b, c.tokens_in));
    c.blocks.resize(blocks.size());
    for (std::size_t i = 0; i < blocks.size(); ++i) c.block_inputs.push_back(blocks[i].forward(b, c.block_inputs[i], context, c.blocks[i]));
    auto out = nn::transpose(b, proj_out.forward(b, c.block_inputs.back()), N, HW, C).reshape(x.shape());
    nn::accumulate(b, out, x);
    c.complete = true;
    return out;
  }

  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& context, Cache& c, Tensor<B>& dcontext) {
    c.recompute_if_dropped([&](const Tensor<B>& x) { forward(b, x, context, c); });
    const auto N = dy.shape()[0], C = dy.shape()[1], HW = dy.shape()[2] * dy.shape()[3];
    auto dt = proj_out.backward(b, nn::transpose(b, dy.reshape({N, C, HW}), N, C, HW), c.block_inputs.back());
    for (std::size_t i = blocks.size(); i-- > 0;) dt = blocks[i].backward(b, dt, c.block_inputs[i], context, c.blocks[i], dcontext);
    auto dn = nn::transpose(b, proj_in.backward(b, dt, c.tokens_in), N, HW, C).reshape(dy.shape());
    auto dx = norm.backward(b, dn, c.input, c.s);
    nn::accumulate(b, dx, dy);
    c.drop();
    return dx;
  }
};

// 3x3 convolution with stride 2 (padding 1).
template <class B>
struct Downsample2D {
  Conv2d<B> conv;
  Downsample2D() = default;
  explicit Downsample2D(std::int64_t channels) : conv(channels, channels, 3, 2, 1) {}
  void visit(const std::string& p, const ParamVisitor<B>& f) { conv.visit(p + "conv.", f); }
  // x[N, C, H, W] -> [N, C, H / 2, W / 2] (a 3x3 convolution of stride 2, padding 1)
  Tensor<B> forward(B& b, const Tensor<B>& x) const { return conv.forward(b, x); }
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x) { return conv.backward(b, dy, x); }
};

// Nearest 2x upsampling, then a 3x3 convolution.
template <class B>
struct Upsample2D {
  Conv2d<B> conv;
  Upsample2D() = default;
  explicit Upsample2D(std::int64_t channels) : conv(channels, channels, 3, 1, 1) {}
  void visit(const std::string& p, const ParamVisitor<B>& f) { conv.visit(p + "conv.", f); }
  // x[N, C, H, W] -> up[N, C, 2H, 2W] (returned through `up` for backward) -> conv
  Tensor<B> forward(B& b, const Tensor<B>& x, Tensor<B>& up) const {
    const auto& s = x.shape();
    up = Tensor<B>::empty(b, {s[0], s[1], 2 * s[2], 2 * s[3]});
    b.upsample_nearest2x_forward(ptr(up), ptr(x), s[0] * s[1], s[2], s[3]);
    return conv.forward(b, up);
  }
  Tensor<B> backward(B& b, const Tensor<B>& dy, const Tensor<B>& x, const Tensor<B>& up) {
    auto dup = conv.backward(b, dy, up);
    auto dx = nn::empty_like(b, x);
    const auto& s = x.shape();
    b.upsample_nearest2x_backward(ptr(dx), ptr(dup), s[0] * s[1], s[2], s[3]);
    return dx;
  }
};

}  // namespace dreambooth::models
