// dreambooth inspect FILE: the tensors (name, dtype, shape, bytes), metadata and detected layout of a weights file
// (.safetensors, .ckpt / .pt / .bin) or a .nemo archive.
// dreambooth inspect FILE --compare OTHER [--tolerance T]: how far OTHER's tensors are from FILE's (relative L2 distance
// ||other - file|| / ||file|| per tensor, the largest and the whole); exit 1 when a tensor is missing, has another
// shape, or lies further than T.
#include <cmath>
#include <memory>

#include "command.hpp"
#include "dreambooth/io/nemo_archive.hpp"
#include "dreambooth/io/open_tensors.hpp"

namespace cli {

namespace {
struct Arguments {
  std::string file, compare;
  double tolerance = 0;
};

struct Opened {
  std::unique_ptr<dreambooth::io::NemoArchive> archive;  // a .nemo's, which its weights read from
  std::unique_ptr<dreambooth::io::TensorSource> source;
};

Opened open(const std::string& path, bool describe) {
  using namespace dreambooth;
  Opened o;
  if (pipeline::model_kind(path) == pipeline::ModelKind::Nemo) {
    o.archive = std::make_unique<io::NemoArchive>(path);
    if (describe) {
      std::printf(".nemo archive, model %s\n", o.archive->target().c_str());
      for (const auto& m : o.archive->members()) std::printf("member %s\n", m.c_str());
    }
    o.source = o.archive->weights();
  } else {
    o.source = io::open_tensor_source(path);
  }
  return o;
}

int compare(const Arguments& a) {
  const auto reference = open(a.file, false), other = open(a.compare, false);
  const auto& theirs = other.source->tensors();
  double worst = 0, difference = 0, norm = 0;
  std::string worst_name;
  int problems = 0;
  for (const auto& [name, info] : reference.source->tensors()) {
    const auto it = theirs.find(name);
    if (it == theirs.end() || !(it->second.shape == info.shape)) {
      std::printf("%s: %s\n", name.c_str(),
                  it == theirs.end() ? "missing" : ("shape " + it->second.shape.str() + " for " + info.shape.str()).c_str());
      ++problems;
      continue;
    }
    const auto x = reference.source->read_f32(name), y = other.source->read_f32(name);
    double d = 0, n = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double e = static_cast<double>(y[i]) - static_cast<double>(x[i]);
      d += e * e;
      n += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    }
    difference += d, norm += n;
    const double relative = n > 0 ? std::sqrt(d / n) : std::sqrt(d);
    if (relative > worst || worst_name.empty()) worst = relative, worst_name = name;
  }
  for (const auto& [name, info] : theirs)
    if (!reference.source->contains(name)) std::printf("%s: only in %s\n", name.c_str(), a.compare.c_str()), ++problems;
  const double whole = norm > 0 ? std::sqrt(difference / norm) : std::sqrt(difference);
  std::printf("%zu tensors compared; relative L2 distance: largest %.3e (%s), all tensors together %.3e\n", reference.source->tensors().size(), worst,
              worst_name.c_str(), whole);
  if (problems > 0 || worst > a.tolerance) {
    std::printf("differ: %d tensors missing or reshaped, largest distance %.3e against the tolerance %.3e\n", problems, worst, a.tolerance);
    return 1;
  }
  std::printf("within the tolerance %.3e\n", a.tolerance);
  return 0;
}

int inspect(const Arguments& a) {
  using namespace dreambooth;
  if (!a.compare.empty()) return compare(a);
  const auto opened = open(a.file, true);
  const auto& source = opened.source;
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
  auto [app, a] = add_command<Arguments>(root, run, "inspect",
                                         "list the tensors, metadata and checkpoint layout of a weights file (.safetensors, .ckpt, "
                                         ".pt, .bin) or a .nemo archive; or compare two files' tensors",
                                         inspect);
  app->add_option("file", a->file, "the weights file or .nemo")->required();
  app->add_option("--compare", a->compare, "another weights file: print how far its tensors are from FILE's (relative L2 distance)");
  app->add_option("--tolerance", a->tolerance, "with --compare: exit 1 when a tensor's relative distance is larger")->capture_default_str();
}

}  // namespace cli
