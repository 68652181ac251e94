// LatentSource: the scaled latents x0 [n, C, h, w] of each training batch, drawn from the latent caches
// (model.use_cached_latents: the VAE's moments stored once per image, a new sample each step; one cache per image folder;
// with random flips both orientations, as kohya caches latents_flipped) or from the VAE run on the batch's pixels
// (always with random crops, which change the pixels every step: the caches hold centre crops). Each sample draws from
// the counter-based stream (seed, kLatentStream + batch index * 64 + k), so a resumed run draws exactly what an
// uninterrupted one would.
#pragma once

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dreambooth/data/dataset.hpp"
#include "dreambooth/data/latent_cache.hpp"
#include "dreambooth/pipeline/text_to_image.hpp"
#include "dreambooth/train/communicator.hpp"
#include "dreambooth/train/config.hpp"

namespace dreambooth::train {

template <class B>
class LatentSource {
 public:
  static constexpr std::uint64_t kLatentStream = 3ull << 32;
  using Log = std::function<void(const std::string&)>;

  // Builds the caches (with model.use_cached_latents) for every concept's instance and class images; concepts that share
  // a folder share its cache.
  // `buckets`: with aspect-ratio buckets, every image's bucket (the caches hold each image at its bucket's size).
  // `comm`: in a data-parallel run, the processes that share the encoding (entry i by process i mod P; all construct it).
  LatentSource(B& b, const TrainingConfig& c, pipeline::TextToImagePipeline<B>& pipe, const std::vector<data::ConceptImages>& images, const Log& log,
               const std::map<std::filesystem::path, data::BucketChoice>* buckets = nullptr, Communicator& comm = single_process())
      : b_(&b), c_(&c), pipe_(&pipe), buckets_(buckets), comm_(&comm) {
    if (!c.use_cached_latents) return;
    if (!c.center_crop) {
      log("note: model.data.center_crop=false: the crops change every step, so the latents are encoded each step instead of cached "
          "(model.use_cached_latents is ignored; the caches hold centre crops)");
      return;
    }
    for (std::size_t i = 0; i < images.size(); ++i) {
      const auto& k = c.concepts.at(i);
      const std::string prefix = images.size() == 1 ? "" : k.where + " ";
      add_cache(make_cache(k.cached_instance_dir, k.instance_dir, "instance"), images[i].instance, prefix + "instance", log);
      if (!images[i].classes.empty())
        add_cache(make_cache(k.cached_reg_dir, k.regularization_dir, "reg"), images[i].classes, prefix + "regularization", log);
    }
  }

  // x0 [end - begin, C, h, w] of images [begin, end) of batch number `index` (counting micro-batches from the start of
  // training); the images share one picture size (the batch's instance part or its class part).
  Tensor<B> latents(const data::DreamBoothDataset::Batch& batch, std::uint64_t index, std::size_t begin, std::size_t end) const {
    B& b = *b_;
    const auto& vae = *pipe_->vae;
    DB_CHECK(
        begin < end && end <= batch.sources.size() && (end <= batch.instances || begin >= batch.instances || batch.instance_size == batch.class_size),
        "latents: images [", begin, ", ", end, ") of a batch of ", batch.sources.size(), " with ", batch.instances, " instance images");
    const auto size = begin < batch.instances ? batch.instance_size : batch.class_size;
    const std::int64_t H = size.height, W = size.width, h = H / vae.config.downscale(), w = W / vae.config.downscale();
    const auto per = static_cast<std::size_t>(3 * H * W);
    const auto first_pixel = begin < batch.instances
                                 ? begin * per
                                 : batch.instances * static_cast<std::size_t>(3 * batch.instance_size.height * batch.instance_size.width) +
                                       (begin - batch.instances) * per;
    const auto seed = static_cast<std::uint64_t>(c_->seed);
    std::vector<float> all;
    for (std::size_t k = begin; k < end; ++k) {
      const auto stream = kLatentStream + index * 64 + k;
      Tensor<B> z;
      if (!cache_of_.empty()) {
        const auto cache = cache_of_.find(batch.sources[k]);
        if (cache == cache_of_.end()) fail("latent caches: ", batch.sources[k].string(), " is not one of the cached images");
        z = cache->second->sample(b, vae, batch.sources[k], seed, stream, !batch.flipped.empty() && batch.flipped[k]);
      } else {
        const auto at = batch.pixels.begin() + static_cast<std::ptrdiff_t>(first_pixel + (k - begin) * per);
        const std::vector<float> px(at, at + static_cast<std::ptrdiff_t>(per));
        z = vae.sample(b, vae.encode(b, Tensor<B>::from_host(b, {1, 3, H, W}, px)), seed, stream);
        b.scale(nn::ptr(z), nn::ptr(z), static_cast<float>(vae.config.scaling_factor), static_cast<std::size_t>(z.numel()));
      }
      const auto v = z.to_host();
      all.insert(all.end(), v.begin(), v.end());
    }
    return Tensor<B>::from_host(b, {static_cast<std::int64_t>(end - begin), pipe_->unet->config.in_channels, h, w}, all);
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
    if (c_->random_flip && format == data::LatentCacheFormat::Nemo)
      fail("latent cache ", folder.string(), ": NeMo's cache format holds no flipped latents (model.data.random_flip); give ",
           "model.data.cache_format=safetensors or another cache folder, or model.use_cached_latents=false");
    if (buckets_ && format == data::LatentCacheFormat::Nemo)
      fail("latent cache ", folder.string(), ": NeMo's cache format holds resolution x resolution latents only, not aspect-ratio buckets ",
           "(model.data.enable_bucket); give model.data.cache_format=safetensors or another cache folder");
    data::LatentCache<B> cache(folder, c_->resolution, format, kind);
    cache.set_max_image_pixels(c_->max_image_pixels);
    cache.set_buckets(buckets_);
    cache.set_flips(c_->random_flip);  // both orientations cached, as kohya's flip_aug with cache_latents
    return cache;
  }
  static std::string format_name(const data::LatentCache<B>& c) { return c.format() == data::LatentCacheFormat::Nemo ? "NeMo .pt" : "safetensors"; }

  // Builds `cache` for `images`, or uses the one already built for its folder (a class folder two concepts share).
  void add_cache(data::LatentCache<B> cache, const std::vector<std::filesystem::path>& images, const std::string& what, const Log& log) {
    const auto same = std::find_if(caches_.begin(), caches_.end(), [&](const auto& built) { return built->folder() == cache.folder(); });
    const data::LatentCache<B>* into = same != caches_.end() ? same->get() : nullptr;
    if (!into) {
      auto& built = *caches_.emplace_back(std::make_unique<data::LatentCache<B>>(std::move(cache)));
      const data::CacheShare share{static_cast<std::size_t>(comm_->rank()), static_cast<std::size_t>(comm_->size()), [this] { comm_->barrier(); }};
      const auto r = built.build(*b_, *pipe_->vae, images, {}, share);
      auto encoded = static_cast<double>(r.encoded), reused = static_cast<double>(r.reused);
      if (comm_->size() > 1 && built.format() == data::LatentCacheFormat::Safetensors) {  // every process's share counted
        const double mine[2] = {encoded, reused};
        encoded = reused = 0;
        const auto all = comm_->all_gather(mine);
        for (std::size_t q = 0; q < all.size(); q += 2) encoded += all[q], reused += all[q + 1];
      } else if (comm_->size() > 1) {
        const double mine = encoded;
        encoded = 0;
        for (const double e : comm_->all_gather(std::span<const double>(&mine, 1))) encoded += e;
      }
      log(what + " latent cache (" + format_name(built) + ", " + built.folder().string() + "): " + std::to_string(static_cast<std::size_t>(encoded)) +
          " encoded, " + std::to_string(static_cast<std::size_t>(reused)) + " reused" + (r.rebuilt_all ? " (rebuilt)" : "") +
          (comm_->size() > 1 ? " by " + std::to_string(comm_->size()) + " processes" : ""));
      into = &built;
    }
    for (const auto& image : images) cache_of_.emplace(image, into);
  }

  B* b_;
  const TrainingConfig* c_;
  pipeline::TextToImagePipeline<B>* pipe_;
  const std::map<std::filesystem::path, data::BucketChoice>* buckets_;
  Communicator* comm_;
  std::vector<std::unique_ptr<data::LatentCache<B>>> caches_;
  std::map<std::filesystem::path, const data::LatentCache<B>*> cache_of_;  // each cached image's cache
};

}  // namespace dreambooth::train
