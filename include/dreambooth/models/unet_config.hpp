// UNet2DConditionModel configuration, read from a diffusers config.json.
//
// Covers the fields the SD 1.x and 2.x families use. Anything that changes the architecture in a way this
// implementation does not provide (class embeddings, addition embeddings, other block types, ...) is refused
// with the field's name, rather than silently ignored.
#pragma once

#include <algorithm>
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
    const auto bad = [&](auto&&... parts) { fail("UNet config ", origin, ": ", parts...); };
    UNetConfig c;
    try {
      const auto get_int = [&](const char* key, std::int64_t& out) {
        if (j.contains(key) && !j[key].is_null()) out = j[key].get<std::int64_t>();
      };
      get_int("in_channels", c.in_channels);
      get_int("out_channels", c.out_channels);
      get_int("sample_size", c.sample_size);
      get_int("layers_per_block", c.layers_per_block);
      get_int("cross_attention_dim", c.cross_attention_dim);
      get_int("norm_num_groups", c.norm_num_groups);
      get_int("downsample_padding", c.downsample_padding);
      if (j.contains("block_out_channels")) c.block_out_channels = j["block_out_channels"].get<std::vector<std::int64_t>>();
      if (j.contains("down_block_types")) c.down_block_types = j["down_block_types"].get<std::vector<std::string>>();
      if (j.contains("up_block_types")) c.up_block_types = j["up_block_types"].get<std::vector<std::string>>();
      if (j.contains("norm_eps")) c.norm_eps = j["norm_eps"].get<double>();
      if (j.contains("flip_sin_to_cos")) c.flip_sin_to_cos = j["flip_sin_to_cos"].get<bool>();
      if (j.contains("freq_shift")) c.freq_shift = j["freq_shift"].get<double>();
      if (j.contains("use_linear_projection")) c.use_linear_projection = j["use_linear_projection"].get<bool>();
      if (j.contains("upcast_attention") && !j["upcast_attention"].is_null()) c.upcast_attention = j["upcast_attention"].get<bool>();
      if (j.contains("transformer_layers_per_block")) {
        if (!j["transformer_layers_per_block"].is_number_integer()) bad("transformer_layers_per_block as a list is not supported");
        c.transformer_layers_per_block = j["transformer_layers_per_block"].get<std::int64_t>();
      }
      // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (the historical naming: in SD 1.x / 2.x
      // configs attention_head_dim holds the number of heads).
      const char* heads_key = j.contains("num_attention_heads") && !j["num_attention_heads"].is_null() ? "num_attention_heads" : "attention_head_dim";
      if (j.contains(heads_key)) {
        if (j[heads_key].is_array())
          c.attention_heads = j[heads_key].get<std::vector<std::int64_t>>();
        else
          c.attention_heads.assign(c.block_out_channels.size(), j[heads_key].get<std::int64_t>());
      } else {
        c.attention_heads.assign(c.block_out_channels.size(), 8);
      }
      if (j.contains("cross_attention_dim") && j["cross_attention_dim"].is_array()) bad("cross_attention_dim as a list is not supported");
    } catch (const nlohmann::json::exception& e) {
      bad("a field has the wrong type: ", e.what());
    }
    // Fields that would change the architecture into something not implemented here.
    const auto require = [&](const char* key, const nlohmann::json& allowed) {
      if (j.contains(key) && !j[key].is_null() && j[key] != allowed)
        bad("\"", key, "\" = ", j[key].dump(), " is not supported (expected ", allowed.dump(), ")");
    };
    const auto require_null = [&](const char* key) {
      if (j.contains(key) && !j[key].is_null()) bad("\"", key, "\" = ", j[key].dump(), " is not supported (expected null)");
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

  void validate(const std::string& origin) const {
    const auto bad = [&](auto&&... parts) { fail("UNet config ", origin, ": ", parts...); };
    const auto n = block_out_channels.size();
    if (n == 0) bad("block_out_channels is empty");
    if (down_block_types.size() != n || up_block_types.size() != n) bad("down_block_types and up_block_types need ", n, " entries");
    if (attention_heads.size() != n) bad("attention_head_dim needs ", n, " entries");
    for (const auto& t : down_block_types)
      if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D") bad("down block type \"", t, "\" is not supported");
    for (const auto& t : up_block_types)
      if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D") bad("up block type \"", t, "\" is not supported");
    for (std::size_t i = 0; i < n; ++i) {
      if (block_out_channels[i] % norm_num_groups)
        bad("block_out_channels[", i, "] = ", block_out_channels[i], " is not a multiple of norm_num_groups ", norm_num_groups);
      // heads matter where a level has attention: its down block, its mirrored up block, and the mid block (last level)
      const bool attends = has_cross_attention(down_block_types[i]) || has_cross_attention(up_block_types[n - 1 - i]) || i + 1 == n;
      if (attends && (attention_heads[i] < 1 || block_out_channels[i] % attention_heads[i]))
        bad("block_out_channels[", i, "] = ", block_out_channels[i], " does not split into ", attention_heads[i], " heads");
    }
    if (layers_per_block < 1 || transformer_layers_per_block < 1) bad("layers_per_block and transformer_layers_per_block must be >= 1");
    if (downsample_padding != 1) bad("downsample_padding ", downsample_padding, " is not supported");
  }
};

}  // namespace dreambooth::models
