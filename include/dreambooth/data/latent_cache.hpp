// LatentCache<Backend>: the VAE's [mean, logvar] of every training image, stored as safetensors in a cache folder
// (one file per image: <image name>.safetensors with the moments and, in its metadata, the image's content hash).
//
// As NeMo: with use_cached_latents the cache is (re)built before training when it holds a different number of files than
// there are images. Beyond NeMo, an entry whose recorded hash differs from its image's is rebuilt too. Each step draws a
// fresh sample from the moments (mean + exp(logvar / 2) * eps) and multiplies by the VAE's scaling factor. Files are
// written atomically (temporary file, then rename).
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "dreambooth/data/dataset.hpp"
#include "dreambooth/io/safetensors.hpp"
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

template <class B>
class LatentCache {
 public:
  struct BuildReport {
    std::size_t encoded = 0, reused = 0;
    bool rebuilt_all = false;
  };

  LatentCache(std::filesystem::path folder, std::int64_t resolution) : folder_(std::move(folder)), resolution_(resolution) {}

  std::filesystem::path entry(const std::filesystem::path& image) const { return folder_ / (image.filename().string() + ".safetensors"); }

  // Makes the cache match `images`; `progress(done, total)` after each encoded image.
  BuildReport build(B& b, const models::AutoencoderKL<B>& vae, const std::vector<std::filesystem::path>& images,
                    const std::function<void(std::size_t, std::size_t)>& progress = {}) {
    namespace fs = std::filesystem;
    fs::create_directories(folder_);
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(folder_))
      if (e.is_regular_file() && e.path().extension() == ".safetensors") ++files;
    BuildReport report;
    report.rebuilt_all = files != images.size();
    if (report.rebuilt_all)  // NeMo's rule: a count mismatch means the cache is stale as a whole
      for (const auto& e : fs::directory_iterator(folder_))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") fs::remove(e.path());
    for (std::size_t i = 0; i < images.size(); ++i) {
      const auto hash = content_hash(images[i]);
      const auto file = entry(images[i]);
      if (!report.rebuilt_all && fs::exists(file)) {
        try {
          const io::SafetensorsFile cached(file);
          if (cached.metadata().count("content_hash") && cached.metadata().at("content_hash") == hash && cached.contains("moments") &&
              cached.info("moments").shape[1] == resolution_ / vae.config.downscale()) {
            ++report.reused;
            continue;
          }
        } catch (const Error&) {
          // unreadable entry: encode it again
        }
      }
      const auto pixels = preprocess(load_image(images[i]), resolution_, true);
      const auto moments = vae.encode(b, Tensor<B>::from_host(b, {1, 3, resolution_, resolution_}, pixels));
      io::SafetensorsWriter writer;
      writer.set_metadata("source", images[i].string());
      writer.set_metadata("content_hash", hash);
      writer.set_metadata("resolution", std::to_string(resolution_));
      writer.add("moments", moments.reshape({moments.shape()[1], moments.shape()[2], moments.shape()[3]}));
      writer.write(file);
      ++report.encoded;
      if (progress) progress(report.encoded, images.size());
    }
    return report;
  }

  // Scaled latents [1, C, h, w] drawn from an image's cached moments (stream (seed, offset)).
  Tensor<B> sample(B& b, const models::AutoencoderKL<B>& vae, const std::filesystem::path& image, std::uint64_t seed, std::uint64_t offset) const {
    const io::SafetensorsFile cached(entry(image));
    const auto& s = cached.info("moments").shape;
    const auto moments = Tensor<B>::from_host(b, {1, s[0], s[1], s[2]}, cached.read_f32("moments"));
    auto latents = vae.sample(b, moments, seed, offset);
    b.scale(nn::ptr(latents), nn::ptr(latents), static_cast<float>(vae.config.scaling_factor), static_cast<std::size_t>(latents.numel()));
    return latents;
  }

 private:
  std::filesystem::path folder_;
  std::int64_t resolution_;
};

}  // namespace dreambooth::data
