// LoRA adapters on a UNet and, optionally, a CLIP text encoder: which Linear and Conv2d layers get one, their names,
// their initialisation, and their parameters (what LoRA training optimises and saves).
//
// A layer is a target when its module name equals a target or ends in "." + target (peft's target_modules rule): the
// UNet's Linear layers are the transformer blocks' ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
// "proj_in", "proj_out"), the resnet blocks' "time_emb_proj" and "time_embedding.linear_1" / "linear_2"; its Conv2d
// layers the resnet blocks' "conv1", "conv2", "conv_shortcut", the resamplers' "downsamplers.0.conv" /
// "upsamplers.0.conv", "conv_in" and "conv_out"; the text encoder's "q_proj", "k_proj", "v_proj", "out_proj", "fc1",
// "fc2". A 3x3 convolution's adapter has conv_rank / conv_alpha where set, else rank / alpha.
// conv_rank (kohya's conv_dim, its LoCon) also adds the layers kohya's networks/lora.py adapts with it: those of every
// ResnetBlock2D, Downsample2D and Upsample2D, their 3x3 convolutions at conv_rank / conv_alpha and their Linear and 1x1
// layers (time_emb_proj, conv_shortcut) at rank / alpha. Each adapter is
// named as kohya's sd-scripts (networks/lora.py) names it, which A1111, ComfyUI, diffusers and stable-diffusion.cpp
// all read: "lora_unet_" or "lora_te_" + the module name with "." replaced by "_", then ".lora_down.weight",
// ".lora_up.weight" and ".alpha".
// Initialisation, as peft's: down from `init` (kaiming_uniform: U(-1/sqrt(in), 1/sqrt(in)), peft's default and
// kohya's; gaussian: N(0, 1/rank), diffusers' train_dreambooth_lora.py; xavier: N(0, sqrt(2 / (in + rank))), NeMo's
// sdlora), up zero, so that the adapted model starts equal to the base; on a convolution the fan-in is in * k * k.
// Dropout (peft's lora_dropout) on every adapter's input while training; each micro-batch draws its own masks
// (set_training), adapter k of micro-batch i from the stream (seed, kDropoutStream + i * adapters + k).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/models/unet.hpp"
#include "dreambooth/nn/lora.hpp"
#include "dreambooth/nn/parameters.hpp"

namespace dreambooth::models {

struct LoraConfig {
  std::int64_t rank = 4;
  std::optional<double> alpha;  // none: the rank (scale 1)
  // the text encoder's adapters: their own rank and alpha (none: the UNet's rank; alpha: the UNet's alpha, else the rank)
  std::optional<std::int64_t> text_encoder_rank;
  std::optional<double> text_encoder_alpha;
  std::vector<std::string> unet_targets = {"to_q", "to_k", "to_v", "to_out.0"};
  std::vector<std::string> text_encoder_targets = {"q_proj", "k_proj", "v_proj", "out_proj"};
  // kohya's LoCon: the 3x3 convolutions' rank and alpha (none: no LoCon layers added; alpha none: conv_rank)
  std::optional<std::int64_t> conv_rank;
  std::optional<double> conv_alpha;
  double dropout = 0;                    // peft's lora_dropout, in [0, 1)
  std::string init = "kaiming_uniform";  // or gaussian, xavier
  std::uint64_t seed = 0, stream = 0;    // the initialisation's random stream: adapter k draws from (seed, stream + k)

  double effective_alpha() const { return alpha.value_or(static_cast<double>(rank)); }
  std::int64_t effective_conv_rank() const { return conv_rank.value_or(rank); }
  double effective_conv_alpha() const {
    if (conv_alpha) return *conv_alpha;
    return conv_rank ? static_cast<double>(*conv_rank) : effective_alpha();
  }
  std::int64_t effective_text_encoder_rank() const { return text_encoder_rank.value_or(rank); }
  double effective_text_encoder_alpha() const {
    if (text_encoder_alpha) return *text_encoder_alpha;
    return text_encoder_rank ? static_cast<double>(*text_encoder_rank) : effective_alpha();
  }
};

inline bool lora_target_matches(const std::string& module, const std::vector<std::string>& targets) {
  for (const auto& t : targets)
    if (module == t || (module.size() > t.size() && module.ends_with("." + t))) return true;
  return false;
}

// kohya's key stem of a module: lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.
inline std::string kohya_lora_stem(const std::string& prefix, const std::string& module) {
  std::string s = prefix + "_" + module;
  for (auto& c : s)
    if (c == '.') c = '_';
  return s;
}

template <class B>
class LoraNetwork {
 public:
  struct Module {
    std::string stem;    // kohya's key stem
    std::string module;  // the module's name in its model (diffusers / transformers)
    bool text_encoder = false;
    bool conv1x1 = false;                 // a Linear whose weight is stored as a 1x1 convolution [out, in, 1, 1] (kohya stores the adapter so too)
    nn::Linear<B>* layer = nullptr;       // the adapted layer: a Linear,
    nn::Conv2d<B>* conv_layer = nullptr;  // or a Conv2d (adapter.conv)
    nn::LoraAdapter<B> adapter;

    // The adapter's down and up as a file stores them: [r, in] and [out, r], 4-D for a 1x1 or k x k convolution.
    Shape down_shape() const { return conv1x1 ? Shape{adapter.rank, adapter.in_features, 1, 1} : adapter.down.shape; }
    Shape up_shape() const { return conv1x1 ? Shape{adapter.out_features, adapter.rank, 1, 1} : adapter.up.shape; }
  };

  static constexpr std::uint64_t kDropoutStream = 1ull << 48;

  // Adds an adapter to every target layer of `unet` and, when given, of `text_encoder`; allocates and initialises them.
  // The network must outlive the models' use of the adapters (or detach() first).
  LoraNetwork(B& b, UNet2DConditionModel<B>& unet, CLIPTextModel<B>* text_encoder, LoraConfig config) : config_(std::move(config)) {
    DB_CHECK(config_.rank > 0 && config_.effective_text_encoder_rank() > 0, "LoRA: the rank must be positive, not ",
             std::min(config_.rank, config_.effective_text_encoder_rank()));
    DB_CHECK(config_.effective_conv_rank() > 0, "LoRA: the convolutions' rank must be positive, not ", config_.effective_conv_rank());
    DB_CHECK(config_.dropout >= 0 && config_.dropout < 1, "LoRA: dropout must be in [0, 1), not ", config_.dropout);
    const bool locon = config_.conv_rank.has_value();
    const auto add = [&](const std::string& prefix, bool text, const std::vector<std::string>& targets) {
      return [&, prefix, text](const std::string& name, nn::Linear<B>& layer) {
        if (!lora_target_matches(name, targets) && !(locon && !text && name.ends_with(".time_emb_proj"))) return;
        Module m;
        m.stem = kohya_lora_stem(prefix, name);
        m.module = name;
        m.text_encoder = text;
        m.conv1x1 = layer.weight.shape.rank() == 4;
        m.layer = &layer;
        m.adapter = text ? nn::LoraAdapter<B>(layer.in_features, layer.out_features, config_.effective_text_encoder_rank(),
                                              config_.effective_text_encoder_alpha())
                         : nn::LoraAdapter<B>(layer.in_features, layer.out_features, config_.rank, config_.effective_alpha());
        modules_.push_back(std::make_unique<Module>(std::move(m)));
      };
    };
    unet.visit_linear_layers(add("lora_unet", false, config_.unet_targets));
    unet.visit_conv_layers([&](const std::string& name, nn::Conv2d<B>& layer) {
      const bool kohya_locon =
          locon && (name.find(".resnets.") != std::string::npos || name.ends_with(".downsamplers.0.conv") || name.ends_with(".upsamplers.0.conv"));
      if (!lora_target_matches(name, config_.unet_targets) && !kohya_locon) return;
      const bool square = layer.kernel > 1;
      Module m;
      m.stem = kohya_lora_stem("lora_unet", name);
      m.module = name;
      m.conv_layer = &layer;
      m.adapter = nn::LoraAdapter<B>(layer.in_channels, layer.out_channels, square ? config_.effective_conv_rank() : config_.rank,
                                     square ? config_.effective_conv_alpha() : config_.effective_alpha(),
                                     nn::LoraConvGeometry{layer.kernel, layer.stride, layer.padding, layer.padding_end});
      modules_.push_back(std::make_unique<Module>(std::move(m)));
    });
    if (text_encoder) text_encoder->visit_linear_layers(add("lora_te", true, config_.text_encoder_targets));
    for (auto& m : modules_) m->adapter.dropout = config_.dropout;
    DB_CHECK(!modules_.empty(), "LoRA: no layer matches the target modules");
    storage_.allocate(b, *this, "LoRA", /*with_gradients=*/true);
    initialize(b);
    for (auto& m : modules_) {
      if (m->layer) m->layer->lora = &m->adapter;
      if (m->conv_layer) m->conv_layer->lora = &m->adapter;
    }
  }
  LoraNetwork(const LoraNetwork&) = delete;
  LoraNetwork& operator=(const LoraNetwork&) = delete;
  ~LoraNetwork() { detach(); }

  // Removes the adapters from the models' layers.
  void detach() {
    for (auto& m : modules_) {
      if (m->layer && m->layer->lora == &m->adapter) m->layer->lora = nullptr;
      if (m->conv_layer && m->conv_layer->lora == &m->adapter) m->conv_layer->lora = nullptr;
    }
  }

  // Training (dropout on, with micro-batch `micro_batch`'s masks) or evaluation (dropout off: validation, sampling).
  void set_training(bool training, std::uint64_t micro_batch = 0) {
    const auto count = static_cast<std::uint64_t>(modules_.size());
    for (std::uint64_t k = 0; k < count; ++k) {
      auto& a = modules_[k]->adapter;
      a.training = training;
      a.dropout_seed = config_.seed;
      a.dropout_offset = kDropoutStream + micro_batch * count + k;
    }
  }

  // Every adapter parameter under kohya's names (<stem>.lora_down.weight, <stem>.lora_up.weight).
  void visit(const nn::ParamVisitor<B>& f) {
    for (auto& m : modules_) m->adapter.visit(m->stem + ".", f);
  }
  bool is_text_encoder_parameter(const nn::Param<B>* p) const {
    for (const auto& m : modules_)
      if (p == &m->adapter.down || p == &m->adapter.up) return m->text_encoder;
    return false;
  }
  // The parameters of the UNet's adapters, then (with `text_encoder`) the text encoder's.
  std::vector<nn::Param<B>*> parameters(bool text_encoder) {
    std::vector<nn::Param<B>*> params;
    for (auto& m : modules_)
      if (!m->text_encoder || text_encoder) {
        params.push_back(&m->adapter.down);
        params.push_back(&m->adapter.up);
      }
    return params;
  }
  void zero_grad() { nn::zero_gradients<B>(*this); }

  const std::vector<std::unique_ptr<Module>>& modules() const { return modules_; }
  const LoraConfig& config() const { return config_; }
  std::size_t parameter_bytes() const { return storage_.bytes(); }

 private:
  void initialize(B& b) {
    std::uint64_t offset = config_.stream;
    for (auto& m : modules_) {
      auto& a = m->adapter;
      const auto n = static_cast<std::size_t>(a.down.shape.numel());
      const double in = static_cast<double>(a.fan_in()), rank = static_cast<double>(a.rank);
      const double receptive = static_cast<double>(a.fan_in() / a.in_features);  // k * k on a convolution
      if (config_.init == "kaiming_uniform") {
        const float bound = static_cast<float>(1.0 / std::sqrt(in));
        b.fill_uniform(nn::ptr(a.down.value), n, config_.seed, offset, -bound, bound);
      } else if (config_.init == "gaussian") {
        b.fill_normal(nn::ptr(a.down.value), n, config_.seed, offset, 0.0f, static_cast<float>(1.0 / rank));
      } else if (config_.init == "xavier") {
        b.fill_normal(nn::ptr(a.down.value), n, config_.seed, offset, 0.0f, static_cast<float>(std::sqrt(2.0 / (in + rank * receptive))));
      } else {
        fail("LoRA: unknown initialisation \"", config_.init, "\" (kaiming_uniform, gaussian or xavier)");
      }
      a.up.value.set_zero();
      ++offset;
    }
  }

  LoraConfig config_;
  std::vector<std::unique_ptr<Module>> modules_;
  nn::ParameterStorage<B> storage_;
};

}  // namespace dreambooth::models
