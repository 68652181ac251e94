// open_tensor_source(): the TensorSource for a weights file, chosen by its first bytes, not its name:
//   "PK\x03\x04"                  torch.save's zip format (.ckpt, .pt, .pth, .bin)
//   0x80 <protocol>               torch.save's legacy pickle format
//   a tar header / gzip stream    a .nemo archive: refused here with a pointer to NemoArchive (nemo_archive.hpp)
//   anything else                 safetensors (whose own validation explains what is wrong)
#pragma once

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/io/torch_checkpoint.hpp"

namespace dreambooth::io {

enum class WeightsFormat { Safetensors, TorchZip, TorchLegacy, Tar, Gzip, Unknown };

inline WeightsFormat sniff_weights_format(const std::filesystem::path& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return WeightsFormat::Unknown;
  unsigned char head[512] = {};
  const auto n = std::fread(head, 1, sizeof head, f);
  std::fclose(f);
  if (n >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) return WeightsFormat::TorchZip;
  if (n >= 2 && head[0] == 0x80 && head[1] <= 5) return WeightsFormat::TorchLegacy;
  if (n >= 2 && head[0] == 0x1f && head[1] == 0x8b) return WeightsFormat::Gzip;
  if (n >= 262 && std::string(reinterpret_cast<const char*>(head + 257), 5) == "ustar") return WeightsFormat::Tar;
  if (n >= 8) return WeightsFormat::Safetensors;
  return WeightsFormat::Unknown;
}

inline std::unique_ptr<TensorSource> open_tensor_source(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) fail("weights file ", path.string(), " does not exist");
  if (std::filesystem::is_directory(path)) fail("weights file ", path.string(), " is a directory");
  switch (sniff_weights_format(path)) {
    case WeightsFormat::TorchZip:
    case WeightsFormat::TorchLegacy: return std::make_unique<TorchCheckpoint>(path);
    case WeightsFormat::Tar:
    case WeightsFormat::Gzip:
      fail("weights file ", path.string(), " is a tar archive (a .nemo file?): give it where a model is expected (model.restore_from_path, --model)");
    default: return std::make_unique<SafetensorsFile>(path);
  }
}

}  // namespace dreambooth::io
