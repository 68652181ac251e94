// One pipeline loader (pipeline/load_pipeline.hpp's PipelineSpec and load_pipeline(b, spec)) for training and generate:
// the description training fills in from NeMo's keys (train/model_assembly.hpp) and the one generate's options give
// (pipeline::describe_pipeline) load the same pipeline, parameter for parameter; a single original file whose
// architecture is not SD 1.5's loads in both, with the component configurations each takes (NeMo's unet_config /
// first_stage_config sections, generate's --unet-config / --vae-config / --text-encoder-config).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/pipeline/export.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/train/model_assembly.hpp"
#include "pipeline_checks.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using B = CpuBackend;

using test::values_of;

namespace {
// the tiny NeMo-shaped pipeline (groups of 32: NeMo's keys can describe it), and its weights as one original file
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "checkpoints" / "nemo";
const fs::path kModel = kData / "model";

fs::path single_file() {
  static const fs::path file = [] {
    B b;
    auto folder = pipeline::load_pipeline(b, kModel);
    const auto path = fs::temp_directory_path() / ("dreambooth-pipeline-loading-" + std::to_string(::getpid()) + ".safetensors");
    pipeline::export_single_file(folder, path, pipeline::ExportFormat::Safetensors);
    return path;
  }();
  return file;
}

// A training configuration: `model` holds the model.* keys besides the data keys every run needs.
train::TrainingConfig training_config(YAML::Node model) {
  YAML::Node root;
  model["with_prior_preservation"] = false;
  model["data"]["instance_dir"] = "d";
  model["data"]["instance_prompt"] = "a photo of sks thing";
  root["model"] = model;
  return train::TrainingConfig::from_text(YAML::Dump(root), "test");
}

// NeMo's unet_config / first_stage_config sections describing the tiny pipeline's UNet and VAE.
YAML::Node nemo_unet_section() {
  auto y = io::nemo_unet_config(models::UNetConfig::from_file(kModel / "unet" / "config.json"));
  y["from_NeMo"] = false;
  return y;
}
YAML::Node nemo_vae_section() { return io::nemo_first_stage_config(models::VAEConfig::from_file(kModel / "vae" / "config.json")); }

pipeline::GenerationResult sample(pipeline::TextToImagePipeline<B>& p) { return test::sample(p, 5); }

// The two pipelines hold the same parameters bit for bit, the same tokenizer files and schedule, and sample the same image.
void require_same(pipeline::TextToImagePipeline<B>& a, pipeline::TextToImagePipeline<B>& b) {
  REQUIRE(values_of(*a.unet) == values_of(*b.unet));
  REQUIRE(values_of(*a.vae) == values_of(*b.vae));
  REQUIRE(values_of(*a.text_encoder) == values_of(*b.text_encoder));
  REQUIRE(a.unet->config.block_out_channels == b.unet->config.block_out_channels);
  REQUIRE(a.vae->config.scaling_factor == b.vae->config.scaling_factor);
  REQUIRE(a.tokenizer_files->vocab_json == b.tokenizer_files->vocab_json);
  REQUIRE(a.scheduler_config.beta_schedule == b.scheduler_config.beta_schedule);
  REQUIRE(a.scheduler_config.beta_end == b.scheduler_config.beta_end);
  REQUIRE(sample(a).pixels == sample(b).pixels);
}
}  // namespace

TEST_CASE("training and generate load the same pipeline from a single original file with non-default component configs", "[load][single][train]") {
  B b;
  const auto kSingle = single_file();
  auto folder = pipeline::load_pipeline(b, kModel);
  std::vector<std::string> notes;
  const auto note = [&](const std::string& n) { notes.push_back(n); };

  // training: the single file as the base, NeMo's sections give its UNet's and VAE's architecture, the text encoder
  // from a transformers folder (cond_stage_config.version), the tokenizer from model.tokenizer_path
  YAML::Node model;
  model["restore_from_path"] = kSingle.string();
  model["tokenizer_path"] = (kModel / "tokenizer").string();
  model["unet_config"] = nemo_unet_section();
  model["first_stage_config"] = nemo_vae_section();
  model["cond_stage_config"]["_target_"] = "nemo.collections.multimodal.modules.stable_diffusion.encoders.modules.FrozenCLIPEmbedder";
  model["cond_stage_config"]["version"] = (kModel / "text_encoder").string();
  const auto config = training_config(model);
  auto trained = train::assemble_training_pipeline(b, config, note);
  CHECK_THAT(notes.at(0), Catch::Contains("model.unet_config gives the architecture of") && Catch::Contains(kSingle.string()));

  // generate: --model FILE --unet-config --vae-config --text-encoder FOLDER --tokenizer
  pipeline::LoadOptions o;
  o.tokenizer = kModel / "tokenizer";
  o.note = note;
  pipeline::ComponentFiles files;
  files.unet_config = kModel / "unet" / "config.json";
  files.vae_config = kModel / "vae" / "config.json";
  files.text_encoder = kModel / "text_encoder";
  auto generated = pipeline::load_pipeline(b, pipeline::describe_pipeline(kSingle, o, files));
  require_same(trained, generated);
  // the same weights as the diffusers folder the file was made from
  REQUIRE(values_of(*generated.unet) == values_of(*folder.unet));
  REQUIRE(values_of(*generated.vae) == values_of(*folder.vae));

  // the single file's own text encoder, its architecture from generate's --text-encoder-config and from training's
  // model.text_encoder_config (NeMo's cond_stage_config has no architecture keys)
  files.text_encoder.clear();
  files.text_encoder_config = kModel / "text_encoder" / "config.json";
  auto whole = pipeline::load_pipeline(b, pipeline::describe_pipeline(kSingle, o, files));
  REQUIRE(values_of(*whole.text_encoder) == values_of(*folder.text_encoder));
  model.remove("cond_stage_config");
  model["text_encoder_config"] = YAML::Load(io::read_json(files.text_encoder_config, "test").dump());
  notes.clear();
  auto trained_whole = train::assemble_training_pipeline(b, training_config(model), note);
  require_same(trained_whole, whole);
  CHECK(std::count_if(notes.begin(), notes.end(),
                      [](const std::string& n) { return n.starts_with("model.text_encoder_config gives the architecture"); }) == 1);
  // a broken architecture is refused with the key named; without one, SD 1.5's does not fit the file
  model["text_encoder_config"]["hidden_size"] = -8;
  REQUIRE_THROWS_WITH(train::assemble_training_pipeline(b, training_config(model), note),
                      Catch::Contains("model.text_encoder_config") && Catch::Contains("hidden_size"));
  model.remove("text_encoder_config");
  REQUIRE_THROWS_WITH(train::assemble_training_pipeline(b, training_config(model), note), Catch::Contains(kSingle.string()));

  // without the configurations, SD 1.5's do not fit the file: the error names it
  REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, kSingle, o), Catch::Contains(kSingle.string()) && Catch::Contains("has shape"));
  model.remove("unet_config");
  REQUIRE_THROWS_WITH(train::assemble_training_pipeline(b, training_config(model), note),
                      Catch::Contains(kSingle.string()) && Catch::Contains("has shape"));
}

TEST_CASE("training and generate load the same pipeline with components from bare weights files", "[load][components][train]") {
  B b;
  const auto kSingle = single_file();
  const auto note = [](const std::string&) {};
  // training: the diffusers folder as the base, its UNet and VAE from the single file read as bare weights
  YAML::Node model;
  model["restore_from_path"] = kModel.string();
  model["unet_config"] = nemo_unet_section();
  model["unet_config"]["from_pretrained"] = kSingle.string();
  model["first_stage_config"] = nemo_vae_section();
  model["first_stage_config"]["from_pretrained"] = kSingle.string();
  model["scale_factor"] = 0.5;
  auto trained = train::assemble_training_pipeline(b, training_config(model), note);
  REQUIRE(trained.vae->config.scaling_factor == 0.5);

  // the description training fills in loads the same pipeline again
  auto again = pipeline::load_pipeline(b, train::training_pipeline_spec(training_config(model), note));
  require_same(trained, again);

  // generate: --unet FILE --unet-config, --vae FILE --vae-config (the VAE config's scaling factor set as the YAML's)
  pipeline::ComponentFiles files;
  files.unet = files.vae = kSingle;
  files.unet_config = kModel / "unet" / "config.json";
  files.vae_config = kModel / "vae" / "config.json";
  auto spec = pipeline::describe_pipeline(kModel, {}, files);
  spec.scale_factor = 0.5;
  auto generated = pipeline::load_pipeline(b, spec);
  require_same(trained, generated);

  // bare weights without an architecture: refused, naming the option or the key
  files.unet_config.clear();
  REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, pipeline::describe_pipeline(kModel, {}, files)),
                      Catch::Contains("--unet") && Catch::Contains("carries no configuration and --unet-config gives none"));
  model.remove("unet_config");
  model["unet_config"]["from_pretrained"] = kSingle.string();  // a section without the architecture keys
  REQUIRE_THROWS_WITH(train::assemble_training_pipeline(b, training_config(model), note),
                      Catch::Contains("model.unet_config") && Catch::Contains("num_heads"));
  files.unet = kData / "nowhere.safetensors";
  REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, pipeline::describe_pipeline(kModel, {}, files)),
                      Catch::Contains("--unet") && Catch::Contains("nowhere.safetensors") && Catch::Contains("does not exist"));
}
