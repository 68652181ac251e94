// load_pipeline(): a diffusers folder, a .nemo (DreamBooth and Stable Diffusion layouts, Megatron CLIP) and an original
// single file each give a pipeline whose weights and images equal those of the diffusers folder they were made from.
#include <catch2/catch.hpp>
#include <filesystem>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using B = CpuBackend;

namespace {
const fs::path kFormats = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "checkpoints";

template <class Model>
std::map<std::string, std::vector<float>> values_of(Model& m) {
  std::map<std::string, std::vector<float>> out;
  m.visit([&](const std::string& n, auto& p) { out[n] = p.value.to_host(); });
  return out;
}

pipeline::GenerationResult sample(pipeline::TextToImagePipeline<B>& p) {
  pipeline::GenerationOptions g;
  g.prompt = "a photo of a thing";
  g.steps = 3;
  g.width = g.height = 32;
  g.seed = 11;
  g.scheduler = "ddim";
  return p.generate(g);
}
}  // namespace

TEST_CASE("a .nemo loads as the diffusers pipeline it was made from and samples the same images", "[load][nemo]") {
  B b;
  auto folder = pipeline::load_pipeline(b, kFormats / "nemo" / "model");
  REQUIRE(pipeline::model_kind(kFormats / "nemo" / "model") == pipeline::ModelKind::Diffusers);
  for (const char* file : {"dreambooth.nemo", "sd.nemo"}) {
    INFO(file);
    std::vector<std::string> notes;
    pipeline::LoadOptions o;
    o.note = [&](const std::string& n) { notes.push_back(n); };
    if (std::string(file) == "sd.nemo") {  // a Stable Diffusion .nemo names its tokenizer on Hugging Face; it carries no files
      REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, kFormats / "nemo" / file, o), Catch::Contains("carries no tokenizer files"));
      notes.clear();
      o.tokenizer = kFormats / "nemo" / "model" / "tokenizer";
    }
    REQUIRE(pipeline::model_kind(kFormats / "nemo" / file) == pipeline::ModelKind::Nemo);
    auto nemo = pipeline::load_pipeline(b, kFormats / "nemo" / file, o);
    REQUIRE(values_of(*nemo.unet) == values_of(*folder.unet));
    REQUIRE(values_of(*nemo.vae) == values_of(*folder.vae));
    REQUIRE(values_of(*nemo.text_encoder) == values_of(*folder.text_encoder));
    REQUIRE(nemo.unet->config.attention_heads == folder.unet->config.attention_heads);
    REQUIRE(nemo.text_encoder->config.num_attention_heads == folder.text_encoder->config.num_attention_heads);
    REQUIRE(nemo.scheduler_config.beta_schedule == "scaled_linear");
    // dreambooth.nemo names its CLIP .nemo (found beside it: its config and tokenizer); sd.nemo embeds the configuration
    REQUIRE(notes.size() == 1);
    CHECK_THAT(notes[0], Catch::Contains(std::string(file) == "sd.nemo" ? "embedded" : "clip.nemo"));
    folder.scheduler_config = nemo.scheduler_config;
    REQUIRE(sample(nemo).pixels == sample(folder).pixels);
  }
}

TEST_CASE("an original single file loads with its configurations and tokenizer from a folder, or refuses without", "[load][single]") {
  B b;
  auto folder = pipeline::load_pipeline(b, kFormats / "nemo" / "model");
  // write the NeMo model's weights as one original file, then read it the way a user would
  io::SafetensorsWriter w;
  const auto layout = io::Layout::original();
  io::write_parameters(*folder.unet, io::name_map(*folder.unet, layout), w);
  io::write_parameters(*folder.vae, io::name_map(*folder.vae, layout), w);
  io::write_parameters(*folder.text_encoder, io::name_map(*folder.text_encoder, layout), w);
  const auto file = fs::temp_directory_path() / ("dreambooth-load-" + std::to_string(::getpid()) + ".safetensors");
  w.write(file);
  REQUIRE(pipeline::model_kind(file) == pipeline::ModelKind::SingleFile);
  pipeline::LoadOptions o;
  o.configs = kFormats / "nemo" / "model";
  auto single = pipeline::load_pipeline(b, file, o);
  REQUIRE(values_of(*single.unet) == values_of(*folder.unet));
  REQUIRE(sample(single).pixels == sample(folder).pixels);
  REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, file), Catch::Contains("has shape") || Catch::Contains("carries no tokenizer"));
  o.ema = true;
  REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, file, o), Catch::Contains("holds no EMA copy"));
  REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, kFormats / "nowhere.nemo"), Catch::Contains("nowhere.nemo") && Catch::Contains("does not exist"));
  fs::remove(file);
}
