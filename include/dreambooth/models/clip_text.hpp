// CLIPTextModel<Backend>: the CLIP text transformer (transformers' CLIPTextModel), forward and backward.
//
// token + position embeddings -> pre-LayerNorm transformer layers (causal self-attention, MLP with quick_gelu
// or gelu) -> final_layer_norm. Parameter names are transformers' (text_model.encoder.layers.0.self_attn.q_proj.weight,
// ...). forward() returns last_hidden_state and keeps every layer's hidden state (hidden_state(i), as
// output_hidden_states: 0 = embeddings, i = after layer i) for clip-skip style conditioning.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>
#include "dreambooth/io/json.hpp"

#include "dreambooth/nn/modules.hpp"
#include "dreambooth/nn/parameters.hpp"

namespace dreambooth::models {

struct CLIPTextConfig {
  std::int64_t vocab_size = 49408;
  std::int64_t hidden_size = 768;
  std::int64_t intermediate_size = 3072;
  std::int64_t num_hidden_layers = 12;
  std::int64_t num_attention_heads = 12;
  std::int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;

  // CLIP ViT-L/14's text tower (Stable Diffusion 1.x).
  static CLIPTextConfig vit_l14() { return {}; }
  // OpenCLIP ViT-H/14's text tower as Stable Diffusion 2.x uses it (diffusers keeps 23 of its 24 layers).
  static CLIPTextConfig vit_h14() {
    CLIPTextConfig c;
    c.hidden_size = 1024;
    c.intermediate_size = 4096;
    c.num_hidden_layers = 23;
    c.num_attention_heads = 16;
    c.hidden_act = "gelu";
    return c;
  }

  static CLIPTextConfig from_json(const nlohmann::json& j, const std::string& origin) {
    const io::ConfigFields f(j, "CLIP text config", origin);
    CLIPTextConfig c;
    f.get("vocab_size", c.vocab_size);
    f.get("hidden_size", c.hidden_size);
    f.get("intermediate_size", c.intermediate_size);
    f.get("num_hidden_layers", c.num_hidden_layers);
    f.get("num_attention_heads", c.num_attention_heads);
    f.get("max_position_embeddings", c.max_position_embeddings);
    f.get("hidden_act", c.hidden_act);
    f.get("layer_norm_eps", c.layer_norm_eps);
    c.validate(origin);
    return c;
  }

  // Every size positive and within what a model can be, the width dividing into the heads.
  void validate(const std::string& origin) const {
    const auto bad = [&](const std::string& key, auto&&... parts) { fail("CLIP text config ", origin, ": key \"", key, "\" ", parts...); };
    const auto count = [&](const char* key, std::int64_t v, std::int64_t min, std::int64_t max) {
      if (v < min || v > max) bad(key, "= ", v, " is not between ", min, " and ", max);
    };
    count("vocab_size", vocab_size, 1, std::int64_t{1} << 24);
    count("hidden_size", hidden_size, 1, std::int64_t{1} << 16);
    count("intermediate_size", intermediate_size, 1, std::int64_t{1} << 18);
    count("num_hidden_layers", num_hidden_layers, 1, 256);
    count("num_attention_heads", num_attention_heads, 1, hidden_size);
    // the tokenizer pads every prompt to 77 tokens (CLIP's context), each of which needs a position
    count("max_position_embeddings", max_position_embeddings, 77, std::int64_t{1} << 16);
    if (hidden_act != "quick_gelu" && hidden_act != "gelu") bad("hidden_act", "\"", hidden_act, "\" is not supported (quick_gelu or gelu)");
    if (hidden_size % num_attention_heads)
      bad("num_attention_heads", "= ", num_attention_heads, ": hidden_size ", hidden_size, " does not split into them");
    if (!(layer_norm_eps > 0) || !std::isfinite(layer_norm_eps)) bad("layer_norm_eps", "= ", layer_norm_eps, " is not a positive number");
  }
  static CLIPTextConfig from_file(const std::filesystem::path& path) { return from_json(io::read_json(path, "CLIP text config"), path.string()); }

  // transformers' CLIPTextModel config.json (the token ids are SD 1.x's, which the text model does not use).
  nlohmann::json to_json() const {
    return {{"architectures", {"CLIPTextModel"}},
            {"model_type", "clip_text_model"},
            {"attention_dropout", 0.0},
            {"dropout", 0.0},
            {"bos_token_id", 0},
            {"eos_token_id", 2},
            {"pad_token_id", 1},
            {"hidden_act", hidden_act},
            {"hidden_size", hidden_size},
            {"initializer_factor", 1.0},
            {"initializer_range", 0.02},
            {"intermediate_size", intermediate_size},
            {"layer_norm_eps", layer_norm_eps},
            {"max_position_embeddings", max_position_embeddings},
            {"num_attention_heads", num_attention_heads},
            {"num_hidden_layers", num_hidden_layers},
            {"projection_dim", hidden_size},
            {"torch_dtype", "float32"},
            {"vocab_size", vocab_size}};
  }
};

template <class B>
class CLIPTextModel {
 public:
  struct Layer {
    nn::LayerNorm<B> layer_norm1, layer_norm2;
    nn::Attention<B> self_attn;
    nn::Linear<B> fc1, fc2;
  };
  struct LayerCache {
    nn::NormStats<B> s1, s2;
    Tensor<B> n1, x1, n2, h, g;  // ln1 out, after attention, ln2 out, fc1 out, activation out
    typename nn::Attention<B>::Cache attn;
  };
  struct Activations {
    Tensor<B> ids;                  // [N, T] int32
    std::vector<Tensor<B>> hidden;  // hidden[0] = embeddings, hidden[i] = after layer i: [N, T, D]
    std::vector<LayerCache> layers;
    nn::NormStats<B> final_stats;
  };

  CLIPTextConfig config;
  nn::Param<B> token_embedding, position_embedding;
  std::vector<Layer> layers;
  nn::LayerNorm<B> final_layer_norm;

  explicit CLIPTextModel(CLIPTextConfig cfg) : config(std::move(cfg)) {
    const auto D = config.hidden_size;
    token_embedding.shape = {config.vocab_size, D};
    position_embedding.shape = {config.max_position_embeddings, D};
    for (std::int64_t i = 0; i < config.num_hidden_layers; ++i)
      layers.push_back({nn::LayerNorm<B>(D, config.layer_norm_eps), nn::LayerNorm<B>(D, config.layer_norm_eps),
                        nn::Attention<B>(D, D, config.num_attention_heads, /*qkv_bias=*/true, nn::AttentionNames::clip(), /*causal=*/true),
                        nn::Linear<B>(D, config.intermediate_size), nn::Linear<B>(config.intermediate_size, D)});
    final_layer_norm = nn::LayerNorm<B>(D, config.layer_norm_eps);
  }

  void visit(const nn::ParamVisitor<B>& f) {
    f("text_model.embeddings.token_embedding.weight", token_embedding);
    f("text_model.embeddings.position_embedding.weight", position_embedding);
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto p = "text_model.encoder.layers." + std::to_string(i) + ".";
      layers[i].self_attn.visit(p + "self_attn.", f);
      layers[i].layer_norm1.visit(p + "layer_norm1.", f);
      layers[i].fc1.visit(p + "mlp.fc1.", f);
      layers[i].fc2.visit(p + "mlp.fc2.", f);
      layers[i].layer_norm2.visit(p + "layer_norm2.", f);
    }
    final_layer_norm.visit("text_model.final_layer_norm.", f);
  }

  // Every Linear layer (self_attn.{q,k,v,out}_proj, mlp.fc1, mlp.fc2 of each layer) with its module name: where LoRA
  // adapters go.
  void visit_linear_layers(const nn::LinearVisitor<B>& f) {
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto p = "text_model.encoder.layers." + std::to_string(i) + ".";
      layers[i].self_attn.visit_linear_layers(p + "self_attn.", f);
      f(p + "mlp.fc1", layers[i].fc1);
      f(p + "mlp.fc2", layers[i].fc2);
    }
  }

  std::int64_t parameter_count() { return nn::parameter_count<B>(*this); }
  void allocate(B& b, bool with_gradients = true) { storage_.allocate(b, *this, "CLIP text", with_gradients); }
  void zero_grad() { nn::zero_gradients<B>(*this); }
  // Frees the gradients (LoRA training: backward computes only what the attached adapters need).
  void freeze() { storage_.release_gradients(*this); }

  // ids[N * T] (row-major [N, T]) -> last_hidden_state[N, T, D]
  Tensor<B> forward(B& b, const std::vector<std::int32_t>& ids, std::int64_t batch, std::int64_t seq, Activations& a) const {
    DB_CHECK(static_cast<std::int64_t>(ids.size()) == batch * seq, "CLIP text: ", ids.size(), " token ids for [", batch, ", ", seq, "]");
    DB_CHECK(seq <= config.max_position_embeddings, "CLIP text: ", seq, " tokens exceed max_position_embeddings ", config.max_position_embeddings);
    for (std::size_t i = 0; i < ids.size(); ++i)
      DB_CHECK(ids[i] >= 0 && ids[i] < config.vocab_size, "CLIP text: token id ", ids[i], " at position ", i, " is outside the vocabulary of ",
               config.vocab_size);
    const auto D = config.hidden_size;
    a = Activations{};
    a.ids = Tensor<B>::empty(b, {batch, seq}, DType::I32);
    b.copy_to_device(a.ids.raw(), ids.data(), ids.size() * sizeof(std::int32_t));
    auto x = Tensor<B>::empty(b, {batch, seq, D});
    b.embedding_forward(nn::ptr(x), a.ids.template data<std::int32_t>(), nn::ptr(token_embedding.value), nn::ptr(position_embedding.value), batch,
                        seq, config.vocab_size, D);
    a.hidden.push_back(x);
    a.layers.resize(layers.size());
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto& L = layers[i];
      auto& c = a.layers[i];
      c.n1 = L.layer_norm1.forward(b, x, c.s1);
      c.x1 = nn::add(b, x, L.self_attn.forward(b, c.n1, c.n1, c.attn));
      c.n2 = L.layer_norm2.forward(b, c.x1, c.s2);
      c.h = L.fc1.forward(b, c.n2);
      c.g = activation(b, c.h);
      x = nn::add(b, c.x1, L.fc2.forward(b, c.g));
      a.hidden.push_back(x);
    }
    return final_layer_norm.forward(b, x, a.final_stats);
  }

  // Accumulates every parameter's gradient from the gradient of last_hidden_state[N, T, D].
  // ready: told each parameter once its gradient is complete, a module at a time in the order the pass finishes them.
  void backward(B& b, const Tensor<B>& dout, Activations& a, const nn::GradientReadyHook<B>& ready = {}) {
    auto dx = final_layer_norm.backward(b, dout, a.hidden.back(), a.final_stats);
    nn::report_gradients_ready(ready, final_layer_norm);
    for (std::size_t i = layers.size(); i-- > 0;) {
      auto& L = layers[i];
      const auto& c = a.layers[i];
      auto dg = L.fc2.backward(b, dx, c.g);
      auto dh = activation_backward(b, dg, c.h);
      auto dx1 = L.layer_norm2.backward(b, L.fc1.backward(b, dh, c.n2), c.x1, c.s2);
      nn::accumulate(b, dx1, dx);
      auto dx0 = L.layer_norm1.backward(b, L.self_attn.backward(b, dx1, c.n1, c.n1, c.attn, nullptr), a.hidden[i], c.s1);
      nn::accumulate(b, dx0, dx1);
      dx = dx0;
      nn::report_gradients_ready(ready, L.fc2);
      nn::report_gradients_ready(ready, L.fc1);
      nn::report_gradients_ready(ready, L.layer_norm2);
      nn::report_gradients_ready(ready, L.self_attn);
      nn::report_gradients_ready(ready, L.layer_norm1);
    }
    const auto& s = dx.shape();
    b.embedding_backward(nn::ptr(token_embedding.grad), nn::ptr(position_embedding.grad), nn::ptr(dx), a.ids.template data<std::int32_t>(), s[0],
                         s[1], config.vocab_size, config.hidden_size);
    if (ready) {
      ready(position_embedding);
      ready(token_embedding);
    }
  }

 private:
  Tensor<B> activation(B& b, const Tensor<B>& h) const {
    auto g = nn::empty_like(b, h);
    const auto n = static_cast<std::size_t>(h.numel());
    if (config.hidden_act == "quick_gelu")
      b.quick_gelu_forward(nn::ptr(g), nn::ptr(h), n);
    else
      b.gelu_forward(nn::ptr(g), nn::ptr(h), n);
    return g;
  }
  Tensor<B> activation_backward(B& b, const Tensor<B>& dg, const Tensor<B>& h) const {
    auto dh = nn::empty_like(b, h);
    const auto n = static_cast<std::size_t>(h.numel());
    if (config.hidden_act == "quick_gelu")
      b.quick_gelu_backward(nn::ptr(dh), nn::ptr(dg), nn::ptr(h), n);
    else
      b.gelu_backward(nn::ptr(dh), nn::ptr(dg), nn::ptr(h), n);
    return dh;
  }

  nn::ParameterStorage<B> storage_;
};

}  // namespace dreambooth::models
