// LatentCache<Backend>: the VAE's [mean, logvar] of every training image, kept in a cache folder in one of two formats.
//
//   safetensors (this project's, the default): <image name>.safetensors per image, holding "moments" [2C, h, w] (and,
//     for random flips, "moments_flipped": those of the mirrored picture, as kohya caches latents_flipped) and, in
//     its metadata, the image's content hash. Rebuilt when the folder holds a different number of entries than there are
//     images, and per entry when its recorded hash or size differs from its image's.
//   nemo (NeMo's DreamBoothDataset.cache_latents): <kind>_image_cache_<i>.pt per image i (torch.save of the moments
//     [2C, h, w] alone), in <image folder>_cached unless a folder is given. NeMo's rule: everything is encoded when the
//     folder holds fewer entries than there are images, otherwise the files are used as they are. Entry i belongs to
//     image i of the sorted image list (NeMo pairs them in its unsorted directory order; its training set is the same).
//   auto: nemo when the folder already holds NeMo's files, else safetensors.
// With aspect-ratio buckets each image is encoded at its bucket's size, and an entry of another size is encoded again.
// Each step draws a fresh sample from the moments (mean + exp(logvar / 2) * eps, logvar clamped to [-30, 20]) and
// multiplies by the VAE's scaling factor. Files are written atomically (temporary file, then rename).
// In a data-parallel run every process builds with its CacheShare: entry i is encoded by process i mod P only, and the
// processes meet (sync) after counting the folder, after rank 0 tidied it, and when every entry is written.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "dreambooth/core/fault.hpp"
#include "dreambooth/data/buckets.hpp"
#include "dreambooth/data/dataset.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/io/torch_checkpoint.hpp"
#include "dreambooth/io/torch_checkpoint_writer.hpp"
#include "dreambooth/models/vae.hpp"

namespace dreambooth::data {

// FNV-1a, 64 bits, over a file's bytes, as 16 hex digits.
inline std::string content_hash(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("content hash: cannot open ", path.string());
  std::uint64_t h = 0xcbf29ce484222325ull;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    for (std::streamsize i = 0; i < in.gcount(); ++i) h = (h ^ static_cast<unsigned char>(buffer[i])) * 0x100000001b3ull;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

enum class LatentCacheFormat { Safetensors, Nemo };

// NeMo's file name for entry i: instance_image_cache_<i>.pt or reg_image_cache_<i>.pt.
inline std::string nemo_cache_name(const std::string& kind, std::size_t i) { return kind + "_image_cache_" + std::to_string(i) + ".pt"; }

// Whether `folder` holds NeMo-written cache files.
inline bool holds_nemo_cache(const std::filesystem::path& folder) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(folder)) return false;
  for (const auto& e : fs::directory_iterator(folder)) {
    const auto name = e.path().filename().string();
    if (name.find("_image_cache_") != std::string::npos && e.path().extension() == ".pt") return true;
  }
  return false;
}

// The part of a cache build one process of a data-parallel run does: entries i with i mod size == rank; `sync` is a
// barrier across the processes (none in one process).
struct CacheShare {
  std::size_t rank = 0, size = 1;
  std::function<void()> sync;
  bool mine(std::size_t i) const { return i % size == rank; }
  void meet() const {
    if (sync) sync();
  }
};

template <class B>
class LatentCache {
 public:
  struct BuildReport {
    std::size_t encoded = 0, reused = 0;
    bool rebuilt_all = false;
  };

  // `kind` names NeMo's files ("instance" or "reg").
  LatentCache(std::filesystem::path folder, std::int64_t resolution, LatentCacheFormat format = LatentCacheFormat::Safetensors,
              std::string kind = "instance")
      : folder_(std::move(folder)), resolution_(resolution), format_(format), kind_(std::move(kind)) {}

  LatentCacheFormat format() const { return format_; }
  // Images larger than this many pixels are refused from their header (model.data.max_image_pixels).
  void set_max_image_pixels(std::int64_t max_pixels) { max_image_pixels_ = max_pixels; }
  // Aspect-ratio buckets: each image is encoded at its bucket's size (centre crop) instead of resolution x resolution.
  void set_buckets(const std::map<std::filesystem::path, BucketChoice>* choices) { buckets_ = choices; }
  // Random flips (model.data.random_flip): each entry also holds the moments of the mirrored picture (safetensors only).
  void set_flips(bool flips) {
    DB_CHECK(!flips || format_ == LatentCacheFormat::Safetensors, "latent cache ", folder_.string(), ": NeMo's format holds no flipped latents");
    flips_ = flips;
  }
  const std::filesystem::path& folder() const { return folder_; }

  std::filesystem::path entry(const std::filesystem::path& image) const {
    if (format_ == LatentCacheFormat::Safetensors) return folder_ / (image.filename().string() + ".safetensors");
    const auto it = index_.find(image.string());
    if (it == index_.end()) fail("latent cache ", folder_.string(), ": ", image.string(), " is not one of the cached images");
    return folder_ / nemo_cache_name(kind_, it->second);
  }

  // Makes the cache match `images`; `progress(done, total)` after each encoded image. The report counts this process's
  // share (`share`: in a data-parallel run, the entries this process looks after).
  BuildReport build(B& b, const models::AutoencoderKL<B>& vae, const std::vector<std::filesystem::path>& images,
                    const std::function<void(std::size_t, std::size_t)>& progress = {}, const CacheShare& share = {}) {
    namespace fs = std::filesystem;
    if (share.rank == 0) fs::create_directories(folder_);
    share.meet();
    index_.clear();
    for (std::size_t i = 0; i < images.size(); ++i) index_[images[i].string()] = i;
    return format_ == LatentCacheFormat::Nemo ? build_nemo(b, vae, images, progress, share) : build_safetensors(b, vae, images, progress, share);
  }

  // Scaled latents [1, C, h, w] drawn from an image's cached moments (stream (seed, offset)); `flipped`: those of the
  // mirrored picture (set_flips).
  Tensor<B> sample(B& b, const models::AutoencoderKL<B>& vae, const std::filesystem::path& image, std::uint64_t seed, std::uint64_t offset,
                   bool flipped = false) const {
    DB_CHECK(!flipped || flips_, "latent cache ", folder_.string(), ": no flipped latents (set_flips)");
    const char* name = flipped ? "moments_flipped" : "moments";
    const auto file = entry(image);
    std::vector<float> values;
    Shape s;
    if (format_ == LatentCacheFormat::Safetensors) {
      const io::SafetensorsFile cached(file);
      if (!cached.contains(name)) fail("latent cache entry ", file.string(), " holds no \"", name, "\" (delete the cache to rebuild it)");
      s = cached.info(name).shape;
      values = cached.read_f32(name);
    } else {
      const io::TorchCheckpoint cached(file);
      if (!cached.contains("")) fail("latent cache entry ", file.string(), ": not a tensor saved alone (NeMo's cache_latents format)");
      s = cached.info("").shape;
      values = cached.read_f32("");
    }
    const auto size = picture_size(image);
    const auto h = size.height / vae.config.downscale(), w = size.width / vae.config.downscale();
    if (s.rank() != 3 || s[0] != 2 * vae.config.latent_channels || s[1] != h || s[2] != w)
      fail("latent cache entry ", file.string(), " holds moments ", s.str(), ", but this VAE at ", size.str(), " pixels gives [",
           2 * vae.config.latent_channels, ", ", h, ", ", w, "] (delete the cache to rebuild it)");
    const auto moments = Tensor<B>::from_host(b, {1, s[0], s[1], s[2]}, values);
    auto latents = vae.sample(b, moments, seed, offset);
    b.scale(nn::ptr(latents), nn::ptr(latents), static_cast<float>(vae.config.scaling_factor), static_cast<std::size_t>(latents.numel()));
    return latents;
  }

 private:
  // The picture size an image is encoded at: its bucket, or resolution x resolution.
  Size2 picture_size(const std::filesystem::path& image) const {
    if (!buckets_) return {resolution_, resolution_};
    const auto it = buckets_->find(image);
    if (it == buckets_->end()) fail("latent cache ", folder_.string(), ": ", image.string(), " has no bucket");
    return it->second.bucket;
  }

  Tensor<B> encode(B& b, const models::AutoencoderKL<B>& vae, const std::filesystem::path& image, bool flipped = false) const {
    const auto decoded = load_image(image, max_image_pixels_);
    const auto size = picture_size(image);
    auto pixels = buckets_ ? preprocess_to_bucket(decoded, buckets_->at(image), true, 0.5) : preprocess(decoded, resolution_, true);
    if (flipped)
      for (std::int64_t row = 0; row < 3 * size.height; ++row)
        std::reverse(pixels.begin() + row * size.width, pixels.begin() + (row + 1) * size.width);
    const auto moments = vae.encode(b, Tensor<B>::from_host(b, {1, 3, size.height, size.width}, pixels));
    return moments.reshape({moments.shape()[1], moments.shape()[2], moments.shape()[3]});
  }

  BuildReport build_safetensors(B& b, const models::AutoencoderKL<B>& vae, const std::vector<std::filesystem::path>& images,
                                const std::function<void(std::size_t, std::size_t)>& progress, const CacheShare& share) {
    namespace fs = std::filesystem;
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(folder_))
      if (e.is_regular_file() && e.path().extension() == ".safetensors") ++files;
    BuildReport report;
    report.rebuilt_all = files != images.size();
    share.meet();                               // counted by every process before rank 0 tidies
    if (report.rebuilt_all && share.rank == 0)  // a count mismatch means the cache is stale as a whole
      for (const auto& e : fs::directory_iterator(folder_))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") fs::remove(e.path());
    share.meet();
    for (std::size_t i = 0; i < images.size(); ++i) {
      if (!share.mine(i)) continue;
      const auto hash = content_hash(images[i]);
      const auto file = entry(images[i]);
      if (!report.rebuilt_all && fs::exists(file)) {
        try {
          const io::SafetensorsFile cached(file);
          const auto size = picture_size(images[i]);
          if (cached.metadata().count("content_hash") && cached.metadata().at("content_hash") == hash && cached.contains("moments") &&
              cached.info("moments").shape.rank() == 3 && cached.info("moments").shape[1] == size.height / vae.config.downscale() &&
              cached.info("moments").shape[2] == size.width / vae.config.downscale() && (!flips_ || cached.contains("moments_flipped"))) {
            ++report.reused;
            continue;
          }
        } catch (const Error&) {
          // unreadable entry: encode it again
        }
      }
      io::SafetensorsWriter writer;
      writer.set_metadata("source", images[i].string());
      writer.set_metadata("content_hash", hash);
      writer.set_metadata("resolution", std::to_string(resolution_));
      if (buckets_) writer.set_metadata("bucket", picture_size(images[i]).str());
      writer.add("moments", encode(b, vae, images[i]));
      if (flips_) writer.add("moments_flipped", encode(b, vae, images[i], true));
      writer.write(file);
      fault::point("cache-latent");
      ++report.encoded;
      if (progress) progress(report.encoded, images.size());
    }
    share.meet();  // every process's entries written before any reads them (a process that fails stops the run instead)
    return report;
  }

  BuildReport build_nemo(B& b, const models::AutoencoderKL<B>& vae, const std::vector<std::filesystem::path>& images,
                         const std::function<void(std::size_t, std::size_t)>& progress, const CacheShare& share) {
    namespace fs = std::filesystem;
    std::size_t entries = 0;  // NeMo counts every entry of the folder (os.listdir)
    for (const auto& e : fs::directory_iterator(folder_))
      if (e.path().filename().string().find(".tmp-") == std::string::npos) ++entries;
    BuildReport report;
    share.meet();  // counted by every process before any writes
    if (entries >= images.size()) {
      for (std::size_t i = 0; i < images.size(); ++i)
        if (!fs::exists(folder_ / nemo_cache_name(kind_, i)))
          fail("latent cache ", folder_.string(), " holds ", entries, " entries but no ", nemo_cache_name(kind_, i),
               " (NeMo's cache names entries by index)");
      report.reused = images.size();
      return report;
    }
    report.rebuilt_all = true;
    for (std::size_t i = 0; i < images.size(); ++i) {
      if (!share.mine(i)) continue;
      auto writer = io::TorchCheckpointWriter::bare_tensor();
      writer.add("moments", encode(b, vae, images[i]));
      writer.write(folder_ / nemo_cache_name(kind_, i));
      fault::point("cache-latent");
      ++report.encoded;
      if (progress) progress(report.encoded, images.size());
    }
    share.meet();  // every process's entries written before any reads them
    return report;
  }

  std::filesystem::path folder_;
  std::int64_t resolution_;
  LatentCacheFormat format_;
  std::string kind_;
  std::int64_t max_image_pixels_ = kDefaultMaxImagePixels;
  std::map<std::string, std::size_t> index_;
  const std::map<std::filesystem::path, BucketChoice>* buckets_ = nullptr;
  bool flips_ = false;
};

}  // namespace dreambooth::data
