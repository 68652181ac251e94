// AutoencoderKL<Backend>: Stable Diffusion's VAE (diffusers' AutoencoderKL), forward only.
//
// encode(): image[N, 3, H, W] in [-1, 1] -> moments[N, 2 * latent, H/f, W/f] = [mean, logvar] (after quant_conv;
// logvar clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution does). sample(): mean + exp(logvar / 2) * eps
// with eps from the backend's counter-based RNG. decode(): latents[N, latent, h, w] -> image (post_quant_conv first).
// The scaling factor (0.18215 for SD 1.x) is read from the config and applied by the caller (trainer, pipeline).
// Blocks keep no activations: every block drops its cache as soon as it has run.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>
#include "dreambooth/io/json.hpp"

#include "dreambooth/models/unet_blocks.hpp"
#include "dreambooth/nn/parameters.hpp"

namespace dreambooth::models {

struct VAEConfig {
  std::int64_t in_channels = 3;
  std::int64_t out_channels = 3;
  std::int64_t latent_channels = 4;
  std::vector<std::int64_t> block_out_channels = {128, 256, 512, 512};
  std::int64_t layers_per_block = 2;
  std::int64_t norm_num_groups = 32;
  double scaling_factor = 0.18215;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  std::int64_t levels() const { return static_cast<std::int64_t>(block_out_channels.size()); }
  std::int64_t downscale() const { return std::int64_t{1} << (levels() - 1); }

  static VAEConfig sd() { return {}; }

  static VAEConfig from_json(const nlohmann::json& j, const std::string& origin) {
    const io::ConfigFields f(j, "VAE config", origin);
    VAEConfig c;
    f.get("in_channels", c.in_channels);
    f.get("out_channels", c.out_channels);
    f.get("latent_channels", c.latent_channels);
    f.get("block_out_channels", c.block_out_channels);
    f.get("layers_per_block", c.layers_per_block);
    f.get("norm_num_groups", c.norm_num_groups);
    f.get("scaling_factor", c.scaling_factor);
    f.get("use_quant_conv", c.use_quant_conv);
    f.get("use_post_quant_conv", c.use_post_quant_conv);
    f.get("mid_block_add_attention", c.mid_block_add_attention);
    using Blocks = std::pair<const char*, const char*>;
    for (const auto& [key, type] : {Blocks{"down_block_types", "DownEncoderBlock2D"}, Blocks{"up_block_types", "UpDecoderBlock2D"}}) {
      std::vector<std::string> types(c.block_out_channels.size(), type);
      f.get(key, types);
      if (types.size() != c.block_out_channels.size())
        f.bad_key(key, "has ", types.size(), " entries but block_out_channels has ", c.block_out_channels.size());
      for (const auto& t : types)
        if (t != type) f.bad_key(key, "entry \"", t, "\" is not supported (", type, ")");
    }
    std::string act_fn = "silu";
    f.get("act_fn", act_fn);
    if (act_fn != "silu") f.bad_key("act_fn", "\"", act_fn, "\" is not supported (silu)");
    for (const char* key : {"shift_factor", "latents_mean", "latents_std"})
      if (f.has(key)) f.bad_key(key, "is not supported (expected null)");
    c.validate(origin);
    return c;
  }

  // Every count positive and within what a model can be, channels dividing into the normalization groups.
  void validate(const std::string& origin) const {
    const auto bad = [&](const std::string& key, auto&&... parts) { fail("VAE config ", origin, ": key \"", key, "\" ", parts...); };
    constexpr std::int64_t kMaxChannels = 1 << 16;
    const auto count = [&](const char* key, std::int64_t v, std::int64_t max) {
      if (v < 1 || v > max) bad(key, "= ", v, " is not between 1 and ", max);
    };
    count("in_channels", in_channels, kMaxChannels);
    count("out_channels", out_channels, kMaxChannels);
    count("latent_channels", latent_channels, kMaxChannels);
    count("norm_num_groups", norm_num_groups, kMaxChannels);
    count("layers_per_block", layers_per_block, 64);
    if (block_out_channels.empty() || block_out_channels.size() > 8)
      bad("block_out_channels", "has ", block_out_channels.size(), " entries (1 to 8 levels)");
    for (std::size_t i = 0; i < block_out_channels.size(); ++i) {
      const auto ch = block_out_channels[i];
      if (ch < 1 || ch > kMaxChannels) bad("block_out_channels", "entry block_out_channels[", i, "] = ", ch, " is not between 1 and ", kMaxChannels);
      if (ch % norm_num_groups)
        bad("block_out_channels", "entry block_out_channels[", i, "] = ", ch, " is not a multiple of norm_num_groups ", norm_num_groups);
    }
    if (!(scaling_factor > 0) || !std::isfinite(scaling_factor)) bad("scaling_factor", "= ", scaling_factor, " is not a positive number");
  }
  static VAEConfig from_file(const std::filesystem::path& path) { return from_json(io::read_json(path, "VAE config"), path.string()); }

  // diffusers' AutoencoderKL config.json for this configuration.
  nlohmann::json to_json() const {
    nlohmann::json j;
    j["_class_name"] = "AutoencoderKL";
    j["_diffusers_version"] = "0.31.0";
    j["act_fn"] = "silu";
    j["block_out_channels"] = block_out_channels;
    j["down_block_types"] = std::vector<std::string>(block_out_channels.size(), "DownEncoderBlock2D");
    j["up_block_types"] = std::vector<std::string>(block_out_channels.size(), "UpDecoderBlock2D");
    j["in_channels"] = in_channels;
    j["out_channels"] = out_channels;
    j["latent_channels"] = latent_channels;
    j["layers_per_block"] = layers_per_block;
    j["norm_num_groups"] = norm_num_groups;
    j["scaling_factor"] = scaling_factor;
    j["use_quant_conv"] = use_quant_conv;
    j["use_post_quant_conv"] = use_post_quant_conv;
    j["mid_block_add_attention"] = mid_block_add_attention;
    return j;
  }
};

// The VAE's mid-block attention: GroupNorm -> one head of self-attention over the pixels (q / k / v / out
// projections with bias) -> + input.
template <class B>
struct VAEAttention {
  GroupNorm<B> group_norm;
  Attention<B> attention;

  VAEAttention() = default;
  VAEAttention(std::int64_t channels, std::int64_t groups)
      : group_norm(groups, channels, 1e-6), attention(channels, channels, 1, /*qkv_bias=*/true) {}
  void visit(const std::string& p, const ParamVisitor<B>& f) {
    group_norm.visit(p + "group_norm.", f);
    attention.visit(p, f);
  }
  Tensor<B> forward(B& b, const Tensor<B>& x) const {
    const auto N = x.shape()[0], C = x.shape()[1], HW = x.shape()[2] * x.shape()[3];
    NormStats<B> stats;
    const auto tokens = nn::transpose(b, group_norm.forward(b, x, stats).reshape({N, C, HW}), N, C, HW);
    typename Attention<B>::Cache cache;
    auto out = nn::transpose(b, attention.forward(b, tokens, tokens, cache), N, HW, C).reshape(x.shape());
    nn::accumulate(b, out, x);
    return out;
  }
};

template <class B>
struct VAEMidBlock {
  ResnetBlock2D<B> resnet0, resnet1;
  std::optional<VAEAttention<B>> attention;
  VAEMidBlock() = default;
  VAEMidBlock(std::int64_t channels, std::int64_t groups, bool with_attention)
      : resnet0(channels, channels, 0, groups, 1e-6), resnet1(channels, channels, 0, groups, 1e-6) {
    if (with_attention) attention.emplace(channels, groups);
  }
  void visit(const std::string& p, const ParamVisitor<B>& f) {
    resnet0.visit(p + "resnets.0.", f);
    if (attention) attention->visit(p + "attentions.0.", f);
    resnet1.visit(p + "resnets.1.", f);
  }
};

template <class B>
class AutoencoderKL {
 public:
  struct Level {
    std::vector<ResnetBlock2D<B>> resnets;
    std::optional<Conv2d<B>> resample;  // encoder: stride-2 conv padded (0, 1, 0, 1); decoder: conv after nearest 2x
  };

  VAEConfig config;
  // encoder
  Conv2d<B> encoder_conv_in, encoder_conv_out, quant_conv;
  std::vector<Level> encoder_levels;
  VAEMidBlock<B> encoder_mid;
  GroupNorm<B> encoder_norm_out;
  // decoder
  Conv2d<B> post_quant_conv, decoder_conv_in, decoder_conv_out;
  VAEMidBlock<B> decoder_mid;
  std::vector<Level> decoder_levels;
  GroupNorm<B> decoder_norm_out;

  explicit AutoencoderKL(VAEConfig cfg) : config(std::move(cfg)) {
    const auto& c = config;
    const auto groups = c.norm_num_groups, top = c.block_out_channels.back(), latent = c.latent_channels;
    encoder_conv_in = Conv2d<B>(c.in_channels, c.block_out_channels[0], 3, 1, 1);
    std::int64_t out = c.block_out_channels[0];
    for (std::int64_t i = 0; i < c.levels(); ++i) {
      const auto in = out;
      out = c.block_out_channels[static_cast<std::size_t>(i)];
      Level level;
      for (std::int64_t j = 0; j < c.layers_per_block; ++j) level.resnets.emplace_back(j == 0 ? in : out, out, 0, groups, 1e-6);
      if (i + 1 < c.levels()) level.resample.emplace(out, out, 3, 2, 0, 1);
      encoder_levels.push_back(std::move(level));
    }
    encoder_mid = VAEMidBlock<B>(top, groups, c.mid_block_add_attention);
    encoder_norm_out = GroupNorm<B>(groups, top, 1e-6);
    encoder_conv_out = Conv2d<B>(top, 2 * latent, 3, 1, 1);
    quant_conv = Conv2d<B>(2 * latent, 2 * latent, 1);

    post_quant_conv = Conv2d<B>(latent, latent, 1);
    decoder_conv_in = Conv2d<B>(latent, top, 3, 1, 1);
    decoder_mid = VAEMidBlock<B>(top, groups, c.mid_block_add_attention);
    out = top;
    for (std::int64_t i = 0; i < c.levels(); ++i) {
      const auto in = out;
      out = c.block_out_channels[static_cast<std::size_t>(c.levels() - 1 - i)];
      Level level;
      for (std::int64_t j = 0; j <= c.layers_per_block; ++j) level.resnets.emplace_back(j == 0 ? in : out, out, 0, groups, 1e-6);
      if (i + 1 < c.levels()) level.resample.emplace(out, out, 3, 1, 1);
      decoder_levels.push_back(std::move(level));
    }
    decoder_norm_out = GroupNorm<B>(groups, c.block_out_channels[0], 1e-6);
    decoder_conv_out = Conv2d<B>(c.block_out_channels[0], c.out_channels, 3, 1, 1);
  }

  void visit(const ParamVisitor<B>& f) {
    encoder_conv_in.visit("encoder.conv_in.", f);
    for (std::size_t i = 0; i < encoder_levels.size(); ++i) {
      const auto p = "encoder.down_blocks." + std::to_string(i) + ".";
      for (std::size_t j = 0; j < encoder_levels[i].resnets.size(); ++j)
        encoder_levels[i].resnets[j].visit(p + "resnets." + std::to_string(j) + ".", f);
      if (encoder_levels[i].resample) encoder_levels[i].resample->visit(p + "downsamplers.0.conv.", f);
    }
    encoder_mid.visit("encoder.mid_block.", f);
    encoder_norm_out.visit("encoder.conv_norm_out.", f);
    encoder_conv_out.visit("encoder.conv_out.", f);
    if (config.use_quant_conv) quant_conv.visit("quant_conv.", f);
    if (config.use_post_quant_conv) post_quant_conv.visit("post_quant_conv.", f);
    decoder_conv_in.visit("decoder.conv_in.", f);
    decoder_mid.visit("decoder.mid_block.", f);
    for (std::size_t i = 0; i < decoder_levels.size(); ++i) {
      const auto p = "decoder.up_blocks." + std::to_string(i) + ".";
      for (std::size_t j = 0; j < decoder_levels[i].resnets.size(); ++j)
        decoder_levels[i].resnets[j].visit(p + "resnets." + std::to_string(j) + ".", f);
      if (decoder_levels[i].resample) decoder_levels[i].resample->visit(p + "upsamplers.0.conv.", f);
    }
    decoder_norm_out.visit("decoder.conv_norm_out.", f);
    decoder_conv_out.visit("decoder.conv_out.", f);
  }

  std::int64_t parameter_count() { return nn::parameter_count<B>(*this); }

  // Allocates the parameters (no gradients: the VAE is frozen in DreamBooth).
  void allocate(B& b) { storage_.allocate(b, *this, "VAE", /*with_gradients=*/false); }

  // image[N, in_channels, H, W] -> moments[N, 2 * latent, H / f, W / f]: [mean, logvar], logvar clamped to [-30, 20].
  Tensor<B> encode(B& b, const Tensor<B>& image) const {
    const auto& s = image.shape();
    DB_CHECK(s.rank() == 4 && s[1] == config.in_channels, "VAE encode: image ", s.str(), " needs shape [N, ", config.in_channels, ", H, W]");
    DB_CHECK(s[2] % config.downscale() == 0 && s[3] % config.downscale() == 0, "VAE encode: image size ", s[2], "x", s[3], " must be a multiple of ",
             config.downscale());
    auto h = encoder_conv_in.forward(b, image);
    for (const auto& level : encoder_levels) {
      for (const auto& r : level.resnets) h = resnet(b, r, h);
      if (level.resample) h = level.resample->forward(b, h);
    }
    h = mid(b, encoder_mid, h);
    h = encoder_conv_out.forward(b, silu_norm(b, encoder_norm_out, h));
    if (config.use_quant_conv) h = quant_conv.forward(b, h);
    // clamp logvar (the second half of the channels of each image) to [-30, 20], in place
    const auto N = h.shape()[0], C = h.shape()[1], S = h.shape()[2] * h.shape()[3];
    for (std::int64_t n = 0; n < N; ++n) {
      auto* logvar = nn::ptr(h) + (n * C + C / 2) * S;
      b.clamp(logvar, logvar, -30.0f, 20.0f, static_cast<std::size_t>((C - C / 2) * S));
    }
    return h;
  }

  // latents[N, latent, h, w] = mean + exp(logvar / 2) * eps, eps ~ N(0, 1) from stream (seed, offset). Unscaled.
  Tensor<B> sample(B& b, const Tensor<B>& moments, std::uint64_t seed, std::uint64_t offset) const {
    const auto& s = moments.shape();
    const auto N = s[0], C = s[1] / 2, S = s[2] * s[3];
    auto eps = Tensor<B>::empty(b, {N, C, s[2], s[3]});
    b.fill_normal(nn::ptr(eps), static_cast<std::size_t>(eps.numel()), seed, offset, 0.0f, 1.0f);
    // moments from elsewhere (NeMo's cached latents) hold the raw logvar: clamped as DiagonalGaussianDistribution does
    b.diagonal_gaussian_sample(nn::ptr(eps), nn::ptr(moments), nn::ptr(eps), N, C, S);
    return eps;
  }

  // latents[N, latent, h, w] (unscaled) -> image[N, out_channels, h * f, w * f]
  Tensor<B> decode(B& b, const Tensor<B>& latents) const {
    const auto& s = latents.shape();
    DB_CHECK(s.rank() == 4 && s[1] == config.latent_channels, "VAE decode: latents ", s.str(), " need shape [N, ", config.latent_channels, ", h, w]");
    auto h = config.use_post_quant_conv ? post_quant_conv.forward(b, latents) : latents;
    h = decoder_conv_in.forward(b, h);
    h = mid(b, decoder_mid, h);
    for (const auto& level : decoder_levels) {
      for (const auto& r : level.resnets) h = resnet(b, r, h);
      if (level.resample) {
        const auto& hs = h.shape();
        auto up = Tensor<B>::empty(b, {hs[0], hs[1], 2 * hs[2], 2 * hs[3]});
        b.upsample_nearest2x_forward(nn::ptr(up), nn::ptr(h), hs[0] * hs[1], hs[2], hs[3]);
        h = level.resample->forward(b, up);
      }
    }
    return decoder_conv_out.forward(b, silu_norm(b, decoder_norm_out, h));
  }

 private:
  static Tensor<B> resnet(B& b, const ResnetBlock2D<B>& r, const Tensor<B>& x) {
    typename ResnetBlock2D<B>::Cache cache;
    return r.forward(b, x, Tensor<B>(), cache);  // the cache goes out of scope: nothing kept
  }
  static Tensor<B> mid(B& b, const VAEMidBlock<B>& m, Tensor<B> h) {
    h = resnet(b, m.resnet0, h);
    if (m.attention) h = m.attention->forward(b, h);
    return resnet(b, m.resnet1, h);
  }
  static Tensor<B> silu_norm(B& b, const GroupNorm<B>& norm, const Tensor<B>& x) {
    NormStats<B> stats;
    return norm.forward_silu(b, x, stats);
  }

  nn::ParameterStorage<B> storage_;
};

}  // namespace dreambooth::models
