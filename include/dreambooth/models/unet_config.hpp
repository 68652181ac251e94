// UNet2DConditionModel configuration, read from a diffusers config.json.
//
// Covers the fields the SD 1.x and 2.x families use. Anything that changes the architecture in a way this
// implementation does not provide (class embeddings, addition embeddings, other block types, ...) is refused
// with the field's name, rather than silently ignored.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/json.hpp"

namespace dreambooth::models {

struct UNetConfig {
  std::int64_t in_channels = 4;
  std::int64_t out_channels = 4;
  std::int64_t sample_size = 64;
  std::vector<std::int64_t> block_out_channels = {320, 640, 1280, 1280};
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  std::int64_t layers_per_block = 2;
  std::int64_t transformer_layers_per_block = 1;
  std::vector<std::int64_t> attention_heads = {8, 8, 8, 8};  // per down block (diffusers' attention_head_dim, legacy naming)
  std::int64_t cross_attention_dim = 768;
  std::int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::int64_t downsample_padding = 1;
  bool use_linear_projection = false;
  bool upcast_attention = false;  // only changes half-precision behaviour; fp32 computes the same

  std::int64_t levels() const { return static_cast<std::int64_t>(block_out_channels.size()); }
  std::int64_t time_embed_dim() const { return block_out_channels[0] * 4; }
  static bool has_cross_attention(const std::string& block_type) { return block_type.rfind("CrossAttn", 0) == 0; }

  // The Stable Diffusion 1.5 UNet.
  static UNetConfig sd15() { return UNetConfig{}; }
  // The Stable Diffusion 2.x UNet (768 px): heads of 64 channels, OpenCLIP's 1024-wide context, linear projections.
  static UNetConfig sd2() {
    UNetConfig c;
    c.sample_size = 96;
    c.attention_heads = {5, 10, 20, 20};
    c.cross_attention_dim = 1024;
    c.use_linear_projection = true;
    c.upcast_attention = true;
    return c;
  }

  static UNetConfig from_json(const nlohmann::json& j, const std::string& origin) {
    const io::ConfigFields f(j, "UNet config", origin);
    UNetConfig c;
    f.get("in_channels", c.in_channels);
    f.get("out_channels", c.out_channels);
    f.get("sample_size", c.sample_size);
    f.get("layers_per_block", c.layers_per_block);
    if (f.has("cross_attention_dim") && f.at("cross_attention_dim").is_array()) f.bad_key("cross_attention_dim", "as a list is not supported");
    f.get("cross_attention_dim", c.cross_attention_dim);
    f.get("norm_num_groups", c.norm_num_groups);
    f.get("downsample_padding", c.downsample_padding);
    f.get("block_out_channels", c.block_out_channels);
    f.get("down_block_types", c.down_block_types);
    f.get("up_block_types", c.up_block_types);
    f.get("norm_eps", c.norm_eps);
    f.get("flip_sin_to_cos", c.flip_sin_to_cos);
    f.get("freq_shift", c.freq_shift);
    f.get("use_linear_projection", c.use_linear_projection);
    f.get("upcast_attention", c.upcast_attention);
    if (f.has("transformer_layers_per_block") && f.at("transformer_layers_per_block").is_array())
      f.bad_key("transformer_layers_per_block", "as a list is not supported");
    f.get("transformer_layers_per_block", c.transformer_layers_per_block);
    // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (the historical naming: in SD 1.x / 2.x
    // configs attention_head_dim holds the number of heads).
    const char* heads_key = f.has("num_attention_heads") ? "num_attention_heads" : "attention_head_dim";
    if (f.has(heads_key)) {
      if (f.at(heads_key).is_array())
        c.attention_heads = f.convert<std::vector<std::int64_t>>(heads_key, f.at(heads_key));
      else
        c.attention_heads.assign(c.block_out_channels.size(), f.convert<std::int64_t>(heads_key, f.at(heads_key)));
      if (c.attention_heads.size() != c.block_out_channels.size())
        f.bad_key(heads_key, "has ", c.attention_heads.size(), " entries but block_out_channels has ", c.block_out_channels.size());
    } else {
      c.attention_heads.assign(c.block_out_channels.size(), 8);
    }
    // Fields that would change the architecture into something not implemented here.
    const auto require = [&](const char* key, const nlohmann::json& allowed) {
      if (j.contains(key) && !j[key].is_null() && j[key] != allowed)
        f.bad_key(key, "= ", io::json_detail::shown(j[key]), " is not supported (expected ", allowed.dump(), ")");
    };
    const auto require_null = [&](const char* key) {
      if (j.contains(key) && !j[key].is_null()) f.bad_key(key, "= ", io::json_detail::shown(j[key]), " is not supported (expected null)");
    };
    require("act_fn", "silu");
    require("center_input_sample", false);
    require("mid_block_type", "UNetMidBlock2DCrossAttn");
    require("mid_block_scale_factor", 1);
    require("resnet_time_scale_shift", "default");
    require("resnet_out_scale_factor", 1.0);
    require("resnet_skip_time_act", false);
    require("only_cross_attention", false);
    require("dual_cross_attention", false);
    require("time_embedding_type", "positional");
    require("conv_in_kernel", 3);
    require("conv_out_kernel", 3);
    require("attention_type", "default");
    for (const char* key :
         {"class_embed_type", "num_class_embeds", "addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim", "time_embedding_act_fn",
          "timestep_post_act", "time_embedding_dim", "cross_attention_norm", "projection_class_embeddings_input_dim"})
      require_null(key);
    c.validate(origin);
    return c;
  }

  static UNetConfig from_file(const std::filesystem::path& path) { return from_json(io::read_json(path, "UNet config"), path.string()); }

  // diffusers' UNet2DConditionModel config.json for this configuration.
  nlohmann::json to_json() const {
    nlohmann::json j;
    j["_class_name"] = "UNet2DConditionModel";
    j["_diffusers_version"] = "0.31.0";
    j["act_fn"] = "silu";
    const bool same_heads = std::all_of(attention_heads.begin(), attention_heads.end(), [&](auto h) { return h == attention_heads[0]; });
    j["attention_head_dim"] = same_heads ? nlohmann::json(attention_heads[0]) : nlohmann::json(attention_heads);
    j["block_out_channels"] = block_out_channels;
    j["center_input_sample"] = false;
    j["cross_attention_dim"] = cross_attention_dim;
    j["down_block_types"] = down_block_types;
    j["downsample_padding"] = downsample_padding;
    j["flip_sin_to_cos"] = flip_sin_to_cos;
    j["freq_shift"] = freq_shift;
    j["in_channels"] = in_channels;
    j["layers_per_block"] = layers_per_block;
    j["mid_block_scale_factor"] = 1;
    j["norm_eps"] = norm_eps;
    j["norm_num_groups"] = norm_num_groups;
    j["out_channels"] = out_channels;
    j["sample_size"] = sample_size;
    j["transformer_layers_per_block"] = transformer_layers_per_block;
    j["up_block_types"] = up_block_types;
    j["upcast_attention"] = upcast_attention;
    j["use_linear_projection"] = use_linear_projection;
    return j;
  }

  // Every count positive and within what a model can be, list lengths consistent, channels dividing into groups and heads.
  void validate(const std::string& origin) const {
    const auto bad = [&](const std::string& key, auto&&... parts) { fail("UNet config ", origin, ": key \"", key, "\" ", parts...); };
    const auto count = [&](const char* key, std::int64_t v, std::int64_t max) {
      if (v < 1 || v > max) bad(key, "= ", v, " is not between 1 and ", max);
    };
    count("in_channels", in_channels, kMaxChannels);
    count("out_channels", out_channels, kMaxChannels);
    count("sample_size", sample_size, 1 << 16);
    count("cross_attention_dim", cross_attention_dim, kMaxChannels);
    count("norm_num_groups", norm_num_groups, kMaxChannels);
    count("layers_per_block", layers_per_block, 64);
    count("transformer_layers_per_block", transformer_layers_per_block, 64);
    if (!(norm_eps > 0) || !std::isfinite(norm_eps)) bad("norm_eps", "= ", norm_eps, " is not a positive number");
    if (!std::isfinite(freq_shift)) bad("freq_shift", "is not a finite number");
    const auto n = block_out_channels.size();
    if (n == 0 || n > 8) bad("block_out_channels", "has ", n, " entries (1 to 8 levels)");
    if (down_block_types.size() != n) bad("down_block_types", "has ", down_block_types.size(), " entries but block_out_channels has ", n);
    if (up_block_types.size() != n) bad("up_block_types", "has ", up_block_types.size(), " entries but block_out_channels has ", n);
    if (attention_heads.size() != n) bad("attention_head_dim", "has ", attention_heads.size(), " entries but block_out_channels has ", n);
    for (std::size_t i = 0; i < n; ++i) {
      if (down_block_types[i] != "CrossAttnDownBlock2D" && down_block_types[i] != "DownBlock2D")
        bad("down_block_types", "entry \"", down_block_types[i], "\" is not supported (CrossAttnDownBlock2D or DownBlock2D)");
      if (up_block_types[i] != "CrossAttnUpBlock2D" && up_block_types[i] != "UpBlock2D")
        bad("up_block_types", "entry \"", up_block_types[i], "\" is not supported (CrossAttnUpBlock2D or UpBlock2D)");
    }
    for (std::size_t i = 0; i < n; ++i) {
      const auto ch = block_out_channels[i];
      if (ch < 1 || ch > kMaxChannels) bad("block_out_channels", "entry block_out_channels[", i, "] = ", ch, " is not between 1 and ", kMaxChannels);
      if (ch % norm_num_groups)
        bad("block_out_channels", "entry block_out_channels[", i, "] = ", ch, " is not a multiple of norm_num_groups ", norm_num_groups);
      if (attention_heads[i] < 1 || attention_heads[i] > kMaxChannels)
        bad("attention_head_dim", "entry ", i, " = ", attention_heads[i], " is not a positive number of heads");
      // heads matter where a level has attention: its down block, its mirrored up block, and the mid block (last level)
      const bool attends = has_cross_attention(down_block_types[i]) || has_cross_attention(up_block_types[n - 1 - i]) || i + 1 == n;
      if (attends && ch % attention_heads[i])
        bad("attention_head_dim", "entry ", i, ": block_out_channels[", i, "] = ", ch, " does not split into ", attention_heads[i], " heads");
    }
    if (downsample_padding != 1) bad("downsample_padding", "= ", downsample_padding, " is not supported (1)");
  }
  static constexpr std::int64_t kMaxChannels = 1 << 16;
};

}  // namespace dreambooth::models
