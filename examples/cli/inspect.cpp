// dreambooth inspect FILE: the tensors (name, dtype, shape, bytes), metadata and detected layout of a weights file
// (.safetensors, .ckpt / .pt / .bin) or a .nemo archive.
#include <memory>

#include "command.hpp"
#include "dreambooth/io/nemo_archive.hpp"
#include "dreambooth/io/open_tensors.hpp"

namespace cli {

namespace {
int inspect(const std::string& path) {
  using namespace dreambooth;
  std::unique_ptr<io::NemoArchive> archive;
  std::unique_ptr<io::TensorSource> source;
  if (pipeline::model_kind(path) == pipeline::ModelKind::Nemo) {
    archive = std::make_unique<io::NemoArchive>(path);
    std::printf(".nemo archive, model %s\n", archive->target().c_str());
    for (const auto& m : archive->members()) std::printf("member %s\n", m.c_str());
    source = archive->weights();
  } else {
    source = io::open_tensor_source(path);
  }
  std::printf("format %s\n", std::string(source->format()).c_str());
  if (const auto layout = io::detect_layout(*source))
    std::printf("layout %s (UNet %s, VAE %s, text encoder %s)%s\n", layout->name.c_str(),
                layout->unet_prefix.empty() ? "-" : layout->unet_prefix.c_str(), layout->vae_prefix.empty() ? "-" : layout->vae_prefix.c_str(),
                layout->text_prefix.empty() ? "-" : layout->text_prefix.c_str(), io::has_unet_ema(*source) ? ", with a UNet EMA copy" : "");
  std::uint64_t total = 0;
  for (const auto& [key, value] : source->metadata()) std::printf("metadata %s = %s\n", key.c_str(), value.c_str());
  for (const auto& [name, info] : source->tensors()) {
    std::printf("%-60s %-5s %-22s %12llu bytes\n", name.c_str(), std::string(io::st_dtype_name(info.dtype)).c_str(), info.shape.str().c_str(),
                static_cast<unsigned long long>(info.bytes()));
    total += info.bytes();
  }
  std::printf("%zu tensors, %llu bytes of data\n", source->tensors().size(), static_cast<unsigned long long>(total));
  return 0;
}
}  // namespace

void add_inspect(CLI::App& root, Run& run) {
  auto [app, file] = add_command<std::string>(root, run, "inspect",
                                              "list the tensors, metadata and checkpoint layout of a weights file (.safetensors, .ckpt, "
                                              ".pt, .bin) or a .nemo archive",
                                              inspect);
  app->add_option("file", *file, "the weights file or .nemo")->required();
}

}  // namespace cli
