// LoRA adapters on a UNet and, optionally, a CLIP text encoder: which Linear layers get one, their names, their
// initialisation, and their parameters (what LoRA training optimises and saves).
//
// A layer is a target when its module name equals a target or ends in "." + target (peft's target_modules rule): the
// UNet's are the transformer blocks' layers ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
// "proj_in", "proj_out"), the text encoder's "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2". Each adapter is
// named as kohya's sd-scripts (networks/lora.py) names it, which A1111, ComfyUI, diffusers and stable-diffusion.cpp
// all read: "lora_unet_" or "lora_te_" + the module name with "." replaced by "_", then ".lora_down.weight",
// ".lora_up.weight" and ".alpha".
// Initialisation, as peft's: down from `init` (kaiming_uniform: U(-1/sqrt(in), 1/sqrt(in)), peft's default and
// kohya's; gaussian: N(0, 1/rank), diffusers' train_dreambooth_lora.py; xavier: N(0, sqrt(2 / (in + rank))), NeMo's
// sdlora), up zero, so that the adapted model starts equal to the base.
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
  std::string init = "kaiming_uniform";  // or gaussian, xavier
  std::uint64_t seed = 0, stream = 0;    // the initialisation's random stream: adapter k draws from (seed, stream + k)

  double effective_alpha() const { return alpha.value_or(static_cast<double>(rank)); }
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
    bool conv1x1 = false;  // the base weight is stored as a 1x1 convolution [out, in, 1, 1] (kohya stores the adapter so too)
    nn::Linear<B>* layer = nullptr;
    nn::LoraAdapter<B> adapter;
  };

  // Adds an adapter to every target layer of `unet` and, when given, of `text_encoder`; allocates and initialises them.
  // The network must outlive the models' use of the adapters (or detach() first).
  LoraNetwork(B& b, UNet2DConditionModel<B>& unet, CLIPTextModel<B>* text_encoder, LoraConfig config) : config_(std::move(config)) {
    DB_CHECK(config_.rank > 0 && config_.effective_text_encoder_rank() > 0, "LoRA: the rank must be positive, not ",
             std::min(config_.rank, config_.effective_text_encoder_rank()));
    const auto add = [&](const std::string& prefix, bool text, const std::vector<std::string>& targets) {
      return [&, prefix, text](const std::string& name, nn::Linear<B>& layer) {
        if (!lora_target_matches(name, targets)) return;
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
    if (text_encoder) text_encoder->visit_linear_layers(add("lora_te", true, config_.text_encoder_targets));
    DB_CHECK(!modules_.empty(), "LoRA: no layer matches the target modules");
    storage_.allocate(b, *this, "LoRA", /*with_gradients=*/true);
    initialize(b);
    for (auto& m : modules_) m->layer->lora = &m->adapter;
  }
  LoraNetwork(const LoraNetwork&) = delete;
  LoraNetwork& operator=(const LoraNetwork&) = delete;
  ~LoraNetwork() { detach(); }

  // Removes the adapters from the models' layers.
  void detach() {
    for (auto& m : modules_)
      if (m->layer && m->layer->lora == &m->adapter) m->layer->lora = nullptr;
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
      const double in = static_cast<double>(a.in_features), rank = static_cast<double>(a.rank);
      if (config_.init == "kaiming_uniform") {
        const float bound = static_cast<float>(1.0 / std::sqrt(in));
        b.fill_uniform(nn::ptr(a.down.value), n, config_.seed, offset, -bound, bound);
      } else if (config_.init == "gaussian") {
        b.fill_normal(nn::ptr(a.down.value), n, config_.seed, offset, 0.0f, static_cast<float>(1.0 / rank));
      } else if (config_.init == "xavier") {
        b.fill_normal(nn::ptr(a.down.value), n, config_.seed, offset, 0.0f, static_cast<float>(std::sqrt(2.0 / (in + rank))));
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
