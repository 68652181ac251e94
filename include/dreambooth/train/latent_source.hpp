// LatentSource: the scaled latents x0 [n, C, h, w] of each training batch, drawn from the latent caches
// (model.use_cached_latents: the VAE's moments stored once per image, a new sample each step) or from the VAE run on the
// batch's pixels (always, when random crops or flips change the pixels every step: the caches hold one centre crop). Each
// sample draws from the counter-based stream (seed, kLatentStream + batch index * 64 + k), so a
// resumed run draws exactly what an uninterrupted one would.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "dreambooth/data/dataset.hpp"
#include "dreambooth/data/latent_cache.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"
#include "dreambooth/train/config.hpp"

namespace dreambooth::train {

template <class B>
class LatentSource {
 public:
  static constexpr std::uint64_t kLatentStream = 3ull << 32;
  using Log = std::function<void(const std::string&)>;

  // Builds the caches (with model.use_cached_latents) for the instance and class images.
  LatentSource(B& b, const TrainingConfig& c, pipeline::TextToImagePipeline<B>& pipe, const std::vector<std::filesystem::path>& instance_images,
               const std::vector<std::filesystem::path>& class_images, const Log& log)
      : b_(&b), c_(&c), pipe_(&pipe) {
    if (!c.use_cached_latents) return;
    if (!c.center_crop || c.random_flip) {
      log(std::string("note: ") + (!c.center_crop ? "model.data.center_crop=false" : "model.data.random_flip=true") +
          ": the pictures change every step, so their latents are encoded each step instead of cached (model.use_cached_latents is " +
          "ignored; the caches hold centre crops)");
      return;
    }
    instance_cache_.emplace(make_cache(c.cached_instance_dir, c.instance_dir, "instance"));
    const auto r = instance_cache_->build(b, *pipe.vae, instance_images);
    log("instance latent cache (" + format_name(*instance_cache_) + ", " + instance_cache_->folder().string() + "): " + std::to_string(r.encoded) +
        " encoded, " + std::to_string(r.reused) + " reused" + (r.rebuilt_all ? " (rebuilt)" : ""));
    if (class_images.empty()) return;
    class_cache_.emplace(make_cache(c.cached_reg_dir, c.regularization_dir, "reg"));
    const auto rc = class_cache_->build(b, *pipe.vae, class_images);
    log("regularization latent cache (" + format_name(*class_cache_) + ", " + class_cache_->folder().string() + "): " + std::to_string(rc.encoded) +
        " encoded, " + std::to_string(rc.reused) + " reused" + (rc.rebuilt_all ? " (rebuilt)" : ""));
  }

  // x0 for batch number `index` (counting micro-batches from the start of training); the first `instances` entries of
  // `batch` are instance images, the rest class images.
  Tensor<B> latents(const data::DreamBoothDataset::Batch& batch, std::uint64_t index, std::size_t instances) const {
    B& b = *b_;
    const auto& vae = *pipe_->vae;
    const std::int64_t R = c_->resolution, h = R / vae.config.downscale();
    const auto n = static_cast<std::int64_t>(batch.sources.size());
    const auto seed = static_cast<std::uint64_t>(c_->seed);
    std::vector<float> all;
    for (std::size_t k = 0; k < batch.sources.size(); ++k) {
      const auto stream = kLatentStream + index * 64 + k;
      Tensor<B> z;
      if (instance_cache_) {
        const auto& cache = k < instances || !class_cache_ ? *instance_cache_ : *class_cache_;
        z = cache.sample(b, vae, batch.sources[k], seed, stream);
      } else {
        const auto per = static_cast<std::size_t>(3 * R * R);
        const std::vector<float> px(batch.pixels.begin() + static_cast<std::ptrdiff_t>(k * per),
                                    batch.pixels.begin() + static_cast<std::ptrdiff_t>((k + 1) * per));
        z = vae.sample(b, vae.encode(b, Tensor<B>::from_host(b, {1, 3, R, R}, px)), seed, stream);
        b.scale(nn::ptr(z), nn::ptr(z), static_cast<float>(vae.config.scaling_factor), static_cast<std::size_t>(z.numel()));
      }
      const auto v = z.to_host();
      all.insert(all.end(), v.begin(), v.end());
    }
    return Tensor<B>::from_host(b, {n, pipe_->unet->config.in_channels, h, h}, all);
  }

 private:
  // A cache for `images_dir`: its format (model.data.cache_format; auto: NeMo's where NeMo's files are) and folder (the
  // configured one, else <images>_cached for NeMo's format and <images>_latents for ours).
  data::LatentCache<B> make_cache(const std::string& configured, const std::string& images_dir, const std::string& kind) const {
    namespace fs = std::filesystem;
    const auto sibling = [&](const char* suffix) { return fs::path(images_dir).parent_path() / (fs::path(images_dir).filename().string() + suffix); };
    auto format = data::LatentCacheFormat::Safetensors;
    if (c_->cache_format == "nemo" ||
        (c_->cache_format == "auto" && data::holds_nemo_cache(configured.empty() ? sibling("_cached") : fs::path(configured))))
      format = data::LatentCacheFormat::Nemo;
    const fs::path folder = !configured.empty() ? fs::path(configured) : sibling(format == data::LatentCacheFormat::Nemo ? "_cached" : "_latents");
    data::LatentCache<B> cache(folder, c_->resolution, format, kind);
    cache.set_max_image_pixels(c_->max_image_pixels);
    return cache;
  }
  static std::string format_name(const data::LatentCache<B>& c) { return c.format() == data::LatentCacheFormat::Nemo ? "NeMo .pt" : "safetensors"; }

  B* b_;
  const TrainingConfig* c_;
  pipeline::TextToImagePipeline<B>* pipe_;
  std::optional<data::LatentCache<B>> instance_cache_, class_cache_;
};

}  // namespace dreambooth::train
