// What a training run writes, checked without Python against what diffusers and transformers accepted: the run of
// tests/data/trained_folder/train.yaml (frozen and trained text encoder) writes a diffusers folder with the same files,
// the same configurations and the same safetensors metadata and tensors as the folder that
// tools/reference/check_trained_folder.py loaded in StableDiffusionPipeline.from_pretrained / CLIPTextModel with default
// arguments and sampled there (accepted.json). And every safetensors file the run writes (the folder, the single file,
// checkpoints, the latent cache) carries the {"format": "pt"} metadata transformers requires.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/core/rng.hpp"
#include "dreambooth/io/json.hpp"
#include "dreambooth/io/png.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/train/trainer.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR);

// A safetensors file's metadata and {name: [dtype, shape]}, as the reference script records them.
json safetensors_layout(const fs::path& file) {
  const io::SafetensorsFile f(file);
  json tensors = json::object();
  for (const auto& [name, info] : f.tensors())
    tensors[name] = {std::string(io::st_dtype_name(info.dtype)), std::vector<std::int64_t>(info.shape.begin(), info.shape.end())};
  return {{"metadata", f.metadata()}, {"tensors", tensors}};
}

// Trains train.yaml with `overrides` into a fresh folder; returns the run's folder.
fs::path train_run(const std::vector<std::string>& overrides, const std::string& name) {
  const auto work = fs::temp_directory_path() / ("dreambooth-trained-" + std::to_string(::getpid())) / name;
  fs::remove_all(work);
  fs::create_directories(work / "instance");
  for (int k = 0; k < 3; ++k) {  // three 32x32 instance photos
    std::vector<std::uint8_t> rgb(32 * 32 * 3);
    for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<std::uint8_t>(128 + 60 * rng::normal(5, static_cast<std::uint64_t>(k), i));
    io::write_png(work / "instance" / ("subject-0" + std::to_string(k) + ".png"), rgb.data(), 32, 32);
  }
  auto all = overrides;
  all.push_back("model.restore_from_path=" + (kData / "pipeline" / "model").string());
  all.push_back("model.data.instance_dir=" + (work / "instance").string());
  all.push_back("model.data.cached_instance_dir=" + (work / "cache").string());
  all.push_back("trainer.output_dir=" + (work / "out").string());
  CpuBackend b;
  train::Trainer<CpuBackend>(b, train::TrainingConfig::load(kData / "trained_folder" / "train.yaml", all)).run();
  return work;
}
}  // namespace

TEST_CASE("a trained folder is laid out as the one diffusers and transformers loaded, and every safetensors file says format pt",
          "[export][diffusers][training]") {
  const auto accepted = io::read_json(kData / "trained_folder" / "accepted.json", "test");
  REQUIRE(accepted.at("runs").size() == 2);
  for (const auto& [name, run] : accepted.at("runs").items()) {
    INFO(name);
    const auto work = train_run(run.at("overrides").get<std::vector<std::string>>(), name);
    const auto folder = work / "out" / "model";
    // the same files
    std::set<std::string> written, expected;
    for (const auto& e : fs::recursive_directory_iterator(folder))
      if (e.is_regular_file()) written.insert(fs::relative(e.path(), folder).generic_string());
    for (const auto& [file, _] : run.at("layout").items()) expected.insert(file);
    REQUIRE(written == expected);
    // each with what the loaders read: configurations, safetensors headers, sizes
    for (const auto& [file, want] : run.at("layout").items()) {
      INFO(file);
      if (want.contains("json"))
        REQUIRE(io::read_json(folder / file, "test") == want.at("json"));
      else if (want.contains("tensors"))
        REQUIRE(safetensors_layout(folder / file) == want);
      else
        REQUIRE(fs::file_size(folder / file) == want.at("bytes").get<std::uintmax_t>());
    }
    // every safetensors file the run wrote, whichever writer wrote it
    std::size_t checked = 0;
    for (const auto& e : fs::recursive_directory_iterator(work)) {
      if (e.path().extension() != ".safetensors") continue;
      INFO(e.path().string());
      REQUIRE(io::SafetensorsFile(e.path()).metadata().at("format") == "pt");
      ++checked;
    }
    REQUIRE(checked == 3 /* folder */ + 1 /* model.safetensors */ + 3 /* cache */ + 2 /* checkpoint: weights, moments */ +
                           (name == "trained_text_encoder" ? 1 : 0));
    REQUIRE(fs::exists(work / "out" / "model.ckpt"));
    fs::remove_all(work);
  }
}
