// UNet2DConditionModel<Backend>: the Stable Diffusion 1.x / 2.x denoising UNet, forward and backward.
//
// Parameter names are diffusers' (down_blocks.0.resnets.1.conv1.weight, ...). Parameters and their gradients
// live in two arenas allocated once (allocate()). forward() records what backward() needs in an Activations
// object; with gradient_checkpointing each ResNet and transformer block keeps only its input and recomputes the
// rest during backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "dreambooth/models/unet_blocks.hpp"
#include "dreambooth/models/unet_config.hpp"
#include "dreambooth/nn/parameters.hpp"

namespace dreambooth::models {

template <class B>
class UNet2DConditionModel {
 public:
  struct DownBlock {
    std::vector<ResnetBlock2D<B>> resnets;
    std::vector<Transformer2D<B>> attentions;
    std::optional<Downsample2D<B>> downsampler;
  };
  struct UpBlock {
    std::vector<ResnetBlock2D<B>> resnets;
    std::vector<Transformer2D<B>> attentions;
    std::optional<Upsample2D<B>> upsampler;
  };

  // Everything backward needs from one forward pass.
  struct Activations {
    Tensor<B> sample, context, timesteps;  // inputs: [N, Cin, H, W], [N, S, Dc], [N]
    Tensor<B> t_proj, temb_h, temb_h_act, temb, temb_act;
    std::vector<Tensor<B>> skips;                   // conv_in output, then every down resnet / attention / downsampler output
    std::vector<std::vector<std::size_t>> up_skip;  // [up block][resnet]: the index in `skips` that resnet joined
    std::vector<std::vector<typename ResnetBlock2D<B>::Cache>> down_resnets, up_resnets;
    std::vector<std::vector<typename Transformer2D<B>::Cache>> down_attentions, up_attentions;
    std::vector<Tensor<B>> down_inputs, up_inputs, up_upsampled;  // per block: downsampler input; upsampler input and 2x image
    typename ResnetBlock2D<B>::Cache mid_resnet0, mid_resnet1;
    typename Transformer2D<B>::Cache mid_attention;
    Tensor<B> final_in, final_act;  // conv_norm_out's input, silu(conv_norm_out(final_in))
    NormStats<B> final_stats;
  };

  struct InputGradients {
    Tensor<B> sample, context;  // [N, Cin, H, W], [N, S, Dc]
  };

  UNetConfig config;
  Linear<B> time_linear_1, time_linear_2;
  Conv2d<B> conv_in, conv_out;
  GroupNorm<B> conv_norm_out;
  std::vector<DownBlock> down_blocks;
  ResnetBlock2D<B> mid_resnet0, mid_resnet1;
  Transformer2D<B> mid_attention;
  std::vector<UpBlock> up_blocks;
  bool gradient_checkpointing = false;

  explicit UNet2DConditionModel(UNetConfig cfg) : config(std::move(cfg)) {
    const auto& c = config;
    c.validate("(in memory)");
    const auto temb = c.time_embed_dim(), groups = c.norm_num_groups;
    const double eps = c.norm_eps;
    time_linear_1 = Linear<B>(c.block_out_channels[0], temb);
    time_linear_2 = Linear<B>(temb, temb);
    conv_in = Conv2d<B>(c.in_channels, c.block_out_channels[0], 3, 1, 1);
    const auto transformer = [&](std::int64_t ch, std::int64_t heads) {
      return Transformer2D<B>(ch, c.cross_attention_dim, heads, c.transformer_layers_per_block, groups, c.use_linear_projection);
    };
    std::int64_t out_ch = c.block_out_channels[0];
    for (std::int64_t i = 0; i < c.levels(); ++i) {
      const auto in_ch = out_ch;
      out_ch = c.block_out_channels[static_cast<std::size_t>(i)];
      DownBlock block;
      for (std::int64_t j = 0; j < c.layers_per_block; ++j) {
        block.resnets.emplace_back(j == 0 ? in_ch : out_ch, out_ch, temb, groups, eps);
        if (UNetConfig::has_cross_attention(c.down_block_types[static_cast<std::size_t>(i)]))
          block.attentions.push_back(transformer(out_ch, c.attention_heads[static_cast<std::size_t>(i)]));
      }
      if (i + 1 < c.levels()) block.downsampler.emplace(out_ch);
      down_blocks.push_back(std::move(block));
    }
    const auto top = c.block_out_channels.back();
    mid_resnet0 = ResnetBlock2D<B>(top, top, temb, groups, eps);
    mid_attention = transformer(top, c.attention_heads.back());
    mid_resnet1 = ResnetBlock2D<B>(top, top, temb, groups, eps);
    std::vector<std::int64_t> reversed(c.block_out_channels.rbegin(), c.block_out_channels.rend());
    std::vector<std::int64_t> reversed_heads(c.attention_heads.rbegin(), c.attention_heads.rend());
    out_ch = reversed[0];
    for (std::int64_t i = 0; i < c.levels(); ++i) {
      const auto prev_out = out_ch;
      out_ch = reversed[static_cast<std::size_t>(i)];
      const auto in_ch = reversed[static_cast<std::size_t>(std::min(i + 1, c.levels() - 1))];
      UpBlock block;
      for (std::int64_t j = 0; j <= c.layers_per_block; ++j) {
        const auto skip_ch = j == c.layers_per_block ? in_ch : out_ch;
        const auto res_in = j == 0 ? prev_out : out_ch;
        block.resnets.emplace_back(res_in + skip_ch, out_ch, temb, groups, eps);
        if (UNetConfig::has_cross_attention(c.up_block_types[static_cast<std::size_t>(i)]))
          block.attentions.push_back(transformer(out_ch, reversed_heads[static_cast<std::size_t>(i)]));
      }
      if (i + 1 < c.levels()) block.upsampler.emplace(out_ch);
      up_blocks.push_back(std::move(block));
    }
    conv_norm_out = GroupNorm<B>(groups, c.block_out_channels[0], eps);
    conv_out = Conv2d<B>(c.block_out_channels[0], c.out_channels, 3, 1, 1);
  }

  // Every parameter with its diffusers name, in a fixed order.
  void visit(const ParamVisitor<B>& f) {
    time_linear_1.visit("time_embedding.linear_1.", f);
    time_linear_2.visit("time_embedding.linear_2.", f);
    conv_in.visit("conv_in.", f);
    visit_blocks(down_blocks, "down_blocks.", &DownBlock::downsampler, "downsamplers.0.", f);
    mid_resnet0.visit("mid_block.resnets.0.", f);
    mid_attention.visit("mid_block.attentions.0.", f);
    mid_resnet1.visit("mid_block.resnets.1.", f);
    visit_blocks(up_blocks, "up_blocks.", &UpBlock::upsampler, "upsamplers.0.", f);
    conv_norm_out.visit("conv_norm_out.", f);
    conv_out.visit("conv_out.", f);
  }

  // Every Linear layer with its module name, where LoRA adapters go: first the transformer blocks' (Transformer2D's
  // proj_in / proj_out, every attention projection and feed-forward layer), then the resnet blocks' time_emb_proj and
  // the time embedding's linear_1 and linear_2.
  void visit_linear_layers(const nn::LinearVisitor<B>& f) {
    const auto stage = [&](auto& blocks, const std::string& name) {
      for (std::size_t i = 0; i < blocks.size(); ++i)
        for (std::size_t j = 0; j < blocks[i].attentions.size(); ++j)
          blocks[i].attentions[j].visit_linear_layers(name + std::to_string(i) + ".attentions." + std::to_string(j) + ".", f);
    };
    stage(down_blocks, "down_blocks.");
    mid_attention.visit_linear_layers("mid_block.attentions.0.", f);
    stage(up_blocks, "up_blocks.");
    visit_resnets([&](const std::string& p, ResnetBlock2D<B>& r) {
      if (r.has_time_embedding) f(p + "time_emb_proj", r.time_emb_proj);
    });
    f("time_embedding.linear_1", time_linear_1);
    f("time_embedding.linear_2", time_linear_2);
  }

  // Every Conv2d layer with its module name (kohya's LoCon adapters): the resnet blocks' conv1, conv2 and
  // conv_shortcut, the downsamplers' and upsamplers' conv, then conv_in and conv_out.
  void visit_conv_layers(const nn::Conv2dVisitor<B>& f) {
    visit_resnets([&](const std::string& p, ResnetBlock2D<B>& r) {
      f(p + "conv1", r.conv1);
      f(p + "conv2", r.conv2);
      if (r.has_shortcut) f(p + "conv_shortcut", r.conv_shortcut);
    });
    for (std::size_t i = 0; i < down_blocks.size(); ++i)
      if (down_blocks[i].downsampler) f("down_blocks." + std::to_string(i) + ".downsamplers.0.conv", down_blocks[i].downsampler->conv);
    for (std::size_t i = 0; i < up_blocks.size(); ++i)
      if (up_blocks[i].upsampler) f("up_blocks." + std::to_string(i) + ".upsamplers.0.conv", up_blocks[i].upsampler->conv);
    f("conv_in", conv_in);
    f("conv_out", conv_out);
  }

  // Every resnet block with its module name and a trailing "." ("down_blocks.0.resnets.1."), in the order of visit().
  void visit_resnets(const std::function<void(const std::string&, ResnetBlock2D<B>&)>& f) {
    const auto stage = [&](auto& blocks, const std::string& name) {
      for (std::size_t i = 0; i < blocks.size(); ++i)
        for (std::size_t j = 0; j < blocks[i].resnets.size(); ++j)
          f(name + std::to_string(i) + ".resnets." + std::to_string(j) + ".", blocks[i].resnets[j]);
    };
    stage(down_blocks, "down_blocks.");
    f("mid_block.resnets.0.", mid_resnet0);
    f("mid_block.resnets.1.", mid_resnet1);
    stage(up_blocks, "up_blocks.");
  }

  std::int64_t parameter_count() { return nn::parameter_count<B>(*this); }

  // Allocates the parameter and (unless frozen from the start) gradient arenas, gradients zeroed. Values are
  // uninitialised until loaded.
  void allocate(B& b, bool with_gradients = true) { storage_.allocate(b, *this, "UNet", with_gradients); }
  std::size_t parameter_bytes() const { return storage_.bytes(); }
  void zero_grad() { nn::zero_gradients<B>(*this); }
  // Frees the gradients: backward then computes none for the weights (LoRA training), only what its input and the
  // LoRA adapters attached to its layers need.
  void freeze() { storage_.release_gradients(*this); }

  // Inference (sampling): the forward pass keeping nothing for a backward, each block only its input while it runs
  // (the gradient-checkpointing path without its recomputation). The model's own setting is restored on every exit.
  Tensor<B> infer(B& b, const Tensor<B>& sample, const std::vector<float>& timesteps, const Tensor<B>& context) {
    struct Restore {
      bool& flag;
      bool value;
      ~Restore() { flag = value; }
    } restore{gradient_checkpointing, gradient_checkpointing};
    gradient_checkpointing = true;
    Activations unused;
    return forward(b, sample, timesteps, context, unused);
  }

  // sample[N, Cin, H, W], timesteps (one per sample), context[N, S, cross_attention_dim] -> [N, Cout, H, W].
  Tensor<B> forward(B& b, const Tensor<B>& sample, const std::vector<float>& timesteps, const Tensor<B>& context, Activations& a) {
    const auto& s = sample.shape();
    const auto N = s[0];
    const std::int64_t factor = std::int64_t{1} << (config.levels() - 1);
    DB_CHECK(s.rank() == 4 && s[1] == config.in_channels, "UNet: sample ", s.str(), " needs shape [N, ", config.in_channels, ", H, W]");
    DB_CHECK(s[2] % factor == 0 && s[3] % factor == 0, "UNet: sample height and width ", s[2], "x", s[3], " must be multiples of ", factor);
    DB_CHECK(context.shape().rank() == 3 && context.shape()[0] == N && context.shape()[2] == config.cross_attention_dim,
             "UNet: encoder_hidden_states ", context.shape().str(), " needs shape [", N, ", S, ", config.cross_attention_dim, "]");
    DB_CHECK(static_cast<std::int64_t>(timesteps.size()) == N || timesteps.size() == 1, "UNet: ", timesteps.size(), " timesteps for a batch of ", N);
    a = Activations{};
    a.sample = sample;
    a.context = context;
    std::vector<float> t(static_cast<std::size_t>(N));
    for (std::int64_t n = 0; n < N; ++n)
      t[static_cast<std::size_t>(n)] = timesteps.size() == 1 ? timesteps[0] : timesteps[static_cast<std::size_t>(n)];
    a.timesteps = Tensor<B>::from_host(b, {N}, t);

    // time embedding: sinusoidal -> linear_1 -> silu -> linear_2; every ResNet uses silu(temb)
    const auto ch0 = config.block_out_channels[0];
    a.t_proj = Tensor<B>::empty(b, {N, ch0});
    b.timestep_embedding_forward(ptr(a.t_proj), ptr(a.timesteps),
                                 nn::TimestepEmbeddingDims{N, ch0, config.flip_sin_to_cos, config.freq_shift, 1.0, 10000.0});
    a.temb_h = time_linear_1.forward(b, a.t_proj);
    a.temb_h_act = nn::silu(b, a.temb_h);
    a.temb = time_linear_2.forward(b, a.temb_h_act);
    a.temb_act = nn::silu(b, a.temb);

    auto h = conv_in.forward(b, sample);
    a.skips.push_back(h);
    a.down_resnets.resize(down_blocks.size());
    a.down_attentions.resize(down_blocks.size());
    a.down_inputs.resize(down_blocks.size());
    for (std::size_t i = 0; i < down_blocks.size(); ++i) {
      auto& block = down_blocks[i];
      a.down_resnets[i].resize(block.resnets.size());
      a.down_attentions[i].resize(block.attentions.size());
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        h = run(block.resnets[j].forward(b, h, a.temb_act, a.down_resnets[i][j]), a.down_resnets[i][j]);
        if (!block.attentions.empty()) h = run(block.attentions[j].forward(b, h, context, a.down_attentions[i][j]), a.down_attentions[i][j]);
        a.skips.push_back(h);
      }
      if (block.downsampler) {
        a.down_inputs[i] = h;
        h = block.downsampler->forward(b, h);
        a.skips.push_back(h);
      }
    }
    h = run(mid_resnet0.forward(b, h, a.temb_act, a.mid_resnet0), a.mid_resnet0);
    h = run(mid_attention.forward(b, h, context, a.mid_attention), a.mid_attention);
    h = run(mid_resnet1.forward(b, h, a.temb_act, a.mid_resnet1), a.mid_resnet1);

    a.up_resnets.resize(up_blocks.size());
    a.up_attentions.resize(up_blocks.size());
    a.up_inputs.resize(up_blocks.size());
    a.up_upsampled.resize(up_blocks.size());
    a.up_skip.assign(up_blocks.size(), {});
    std::size_t next_skip = a.skips.size();  // the up path takes the skips from the back
    for (std::size_t i = 0; i < up_blocks.size(); ++i) {
      auto& block = up_blocks[i];
      a.up_resnets[i].resize(block.resnets.size());
      a.up_attentions[i].resize(block.attentions.size());
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        a.up_skip[i].push_back(--next_skip);
        const auto& skip = a.skips[next_skip];
        auto joined = Tensor<B>::empty(b, {N, h.shape()[1] + skip.shape()[1], h.shape()[2], h.shape()[3]});
        b.concat_channels(ptr(joined), ptr(h), ptr(skip), N, h.shape()[1], skip.shape()[1], h.shape()[2] * h.shape()[3]);
        h = run(block.resnets[j].forward(b, joined, a.temb_act, a.up_resnets[i][j]), a.up_resnets[i][j]);
        if (!block.attentions.empty()) h = run(block.attentions[j].forward(b, h, context, a.up_attentions[i][j]), a.up_attentions[i][j]);
      }
      if (block.upsampler) {
        a.up_inputs[i] = h;
        h = block.upsampler->forward(b, h, a.up_upsampled[i]);
      }
    }
    DB_CHECK(next_skip == 0, "UNet: skip connections do not pair up (", next_skip, " left)");
    a.final_in = h;
    a.final_act = conv_norm_out.forward_silu(b, h, a.final_stats);
    return conv_out.forward(b, a.final_act);
  }

  // Accumulates every parameter's gradient; returns the gradients of the sample and the context.
  // need_input_gradients false: no gradient for the sample or the context (both left undefined; a frozen text encoder
  // needs none), so the cross-attentions' to_k / to_v and conv_in compute only weight and adapter gradients. The time
  // embedding's backward runs only when its layers train (gradients or adapters), and the modules at the start of the
  // down path before the first that learns are left out (frozen_down_path_modules: in LoRA on the attention
  // projections, conv_in and the first resnet).
  // ready: told each parameter once its gradient is complete, a module at a time in the order the pass finishes them.
  InputGradients backward(B& b, const Tensor<B>& dout, Activations& a, bool need_input_gradients = true, const nn::GradientReadyHook<B>& ready = {}) {
    const auto N = a.sample.shape()[0];
    auto dh = conv_norm_out.backward_silu(b, conv_out.backward(b, dout, a.final_act), a.final_in, a.final_stats);
    nn::report_gradients_ready(ready, conv_out);
    nn::report_gradients_ready(ready, conv_norm_out);
    const bool time_embedding_trains = nn::ptr(time_linear_1.weight.grad) || nn::ptr(time_linear_2.weight.grad) || time_linear_1.lora ||
                                       time_linear_2.lora || nn::ptr(time_linear_1.bias.grad) || nn::ptr(time_linear_2.bias.grad);
    auto dtemb_act = time_embedding_trains ? Tensor<B>::zeros(b, a.temb_act.shape()) : Tensor<B>();
    auto dcontext = need_input_gradients ? Tensor<B>::zeros(b, a.context.shape()) : Tensor<B>();
    std::vector<Tensor<B>> dskips(a.skips.size());

    const auto& skip_of = a.up_skip;  // recorded by forward
    for (std::size_t i = up_blocks.size(); i-- > 0;) {
      auto& block = up_blocks[i];
      if (block.upsampler) {
        dh = block.upsampler->backward(b, dh, a.up_inputs[i], a.up_upsampled[i]);
        nn::report_gradients_ready(ready, *block.upsampler);
      }
      for (std::size_t j = block.resnets.size(); j-- > 0;) {
        if (!block.attentions.empty()) {
          dh = block.attentions[j].backward(b, dh, a.context, a.up_attentions[i][j], dcontext);
          nn::report_gradients_ready(ready, block.attentions[j]);
        }
        auto djoined = block.resnets[j].backward(b, dh, a.temb_act, a.up_resnets[i][j], dtemb_act);
        nn::report_gradients_ready(ready, block.resnets[j]);
        const auto& skip = a.skips[skip_of[i][j]];
        const auto skip_ch = skip.shape()[1], h_ch = djoined.shape()[1] - skip_ch;
        dh = Tensor<B>::empty(b, {N, h_ch, skip.shape()[2], skip.shape()[3]});
        dskips[skip_of[i][j]] = Tensor<B>::empty(b, skip.shape());
        b.split_channels(ptr(dh), ptr(dskips[skip_of[i][j]]), ptr(djoined), N, h_ch, skip_ch, skip.shape()[2] * skip.shape()[3]);
      }
    }
    dh = mid_resnet1.backward(b, dh, a.temb_act, a.mid_resnet1, dtemb_act);
    nn::report_gradients_ready(ready, mid_resnet1);
    dh = mid_attention.backward(b, dh, a.context, a.mid_attention, dcontext);
    nn::report_gradients_ready(ready, mid_attention);
    dh = mid_resnet0.backward(b, dh, a.temb_act, a.mid_resnet0, dtemb_act);
    nn::report_gradients_ready(ready, mid_resnet0);

    // the down path backward, in reverse of its forward order (conv_in at position 0); the first `frozen` positions
    // are left out
    const auto frozen = need_input_gradients || time_embedding_trains ? 0 : frozen_down_path_modules();
    std::size_t position = down_path_modules(), k = a.skips.size();
    for (std::size_t i = down_blocks.size(); i-- > 0;) {
      auto& block = down_blocks[i];
      if (block.downsampler) {
        const auto skip = --k;
        if (--position >= frozen) {
          nn::accumulate(b, dh, dskips[skip]);
          dh = block.downsampler->backward(b, dh, a.down_inputs[i]);
        }
        nn::report_gradients_ready(ready, *block.downsampler);
      }
      for (std::size_t j = block.resnets.size(); j-- > 0;) {
        const auto skip = --k;
        if (position > frozen) nn::accumulate(b, dh, dskips[skip]);  // the pair's next module backward (at position - 1) runs
        if (!block.attentions.empty()) {
          if (--position >= frozen) dh = block.attentions[j].backward(b, dh, a.context, a.down_attentions[i][j], dcontext);
          nn::report_gradients_ready(ready, block.attentions[j]);
        }
        if (--position >= frozen) dh = block.resnets[j].backward(b, dh, a.temb_act, a.down_resnets[i][j], dtemb_act);
        nn::report_gradients_ready(ready, block.resnets[j]);
      }
    }
    InputGradients grads;
    if (frozen == 0) {
      nn::accumulate(b, dh, dskips[--k]);
      grads.sample = conv_in.backward(b, dh, a.sample, need_input_gradients);
    }
    nn::report_gradients_ready(ready, conv_in);
    grads.context = dcontext;

    if (time_embedding_trains) {
      auto dtemb_h_act = time_linear_2.backward(b, nn::silu_backward(b, dtemb_act, a.temb), a.temb_h_act);
      time_linear_1.backward(b, nn::silu_backward(b, dtemb_h_act, a.temb_h), a.t_proj, /*need_dx=*/false);
    }
    nn::report_gradients_ready(ready, time_linear_2);
    nn::report_gradients_ready(ready, time_linear_1);
    return grads;
  }

 private:
  // The modules of the down path: conv_in, then each down block's resnets and attentions and its downsampler.
  std::size_t down_path_modules() const {
    std::size_t n = 1;
    for (const auto& block : down_blocks) n += block.resnets.size() + block.attentions.size() + (block.downsampler ? 1 : 0);
    return n;
  }
  // How many modules at the start of the down path (in forward order: conv_in, then each down block's resnet and
  // attention pairs and its downsampler) come before the first that learns: one of its parameters keeps a gradient, or
  // one of its layers has an adapter. Their backward computes nothing anyone uses when no input gradient is wanted and
  // the time embedding (which feeds every resnet) does not learn.
  std::size_t frozen_down_path_modules() {
    std::vector<std::string> learning;  // parameters with gradients and adapted layers, by name ("." after a layer's)
    visit([&](const std::string& name, nn::Param<B>& p) {
      if (nn::ptr(p.grad)) learning.push_back(name);
    });
    visit_linear_layers([&](const std::string& name, Linear<B>& layer) {
      if (layer.lora) learning.push_back(name + ".");
    });
    visit_conv_layers([&](const std::string& name, Conv2d<B>& layer) {
      if (layer.lora) learning.push_back(name + ".");
    });
    const auto learns = [&](const std::string& module) {
      return std::any_of(learning.begin(), learning.end(), [&](const std::string& name) { return name.starts_with(module); });
    };
    if (learns("conv_in.")) return 0;
    std::size_t position = 1;
    for (std::size_t i = 0; i < down_blocks.size(); ++i) {
      const auto p = "down_blocks." + std::to_string(i) + ".";
      for (std::size_t j = 0; j < down_blocks[i].resnets.size(); ++j) {
        if (learns(p + "resnets." + std::to_string(j) + ".")) return position;
        ++position;
        if (j < down_blocks[i].attentions.size()) {
          if (learns(p + "attentions." + std::to_string(j) + ".")) return position;
          ++position;
        }
      }
      if (down_blocks[i].downsampler) {
        if (learns(p + "downsamplers.0.")) return position;
        ++position;
      }
    }
    return position;
  }

  // The down or up blocks under `stage`I.: each block's resnets.J., attentions.J. and its resampler (the block's
  // member `resampler`, named `resampler_name`) where it has one.
  template <class Block, class Resampler>
  static void visit_blocks(std::vector<Block>& blocks, const std::string& stage, std::optional<Resampler> Block::*resampler,
                           const std::string& resampler_name, const ParamVisitor<B>& f) {
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      Block& block = blocks[i];
      const auto p = stage + std::to_string(i) + ".";
      for (std::size_t j = 0; j < block.resnets.size(); ++j) block.resnets[j].visit(p + "resnets." + std::to_string(j) + ".", f);
      for (std::size_t j = 0; j < block.attentions.size(); ++j) block.attentions[j].visit(p + "attentions." + std::to_string(j) + ".", f);
      if (block.*resampler) (block.*resampler)->visit(p + resampler_name, f);
    }
  }
  // With gradient checkpointing, a block keeps only its input after forward.
  template <class Cache>
  Tensor<B> run(Tensor<B> out, Cache& cache) const {
    if (gradient_checkpointing) cache.drop();
    return out;
  }

  nn::ParameterStorage<B> storage_;
};

}  // namespace dreambooth::models
