// Model files, whole: load_pipeline() gives a diffusers folder, a .nemo (DreamBooth and Stable Diffusion layouts,
// Megatron CLIP) and an original single file as the weights and images of the diffusers folder they were made from, and
// every export format (diffusers folder, original .safetensors and .ckpt, .nemo) in fp32, fp16 and bf16 is read back and
// compared with the weights it came from; the files hold what the reference loaders look for.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <limits>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/tar.hpp"
#include "dreambooth/pipeline/export.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "pipeline_checks.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using B = CpuBackend;

using test::values_of;

namespace {
const fs::path kFormats = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "checkpoints";

fs::path scratch(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("dreambooth-export-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}

pipeline::GenerationResult sample(pipeline::TextToImagePipeline<B>& p) { return test::sample(p, 11); }
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
  const auto file = fs::temp_directory_path() / ("dreambooth-load-" + std::to_string(::getpid()) + ".safetensors");
  pipeline::export_single_file(folder, file, pipeline::ExportFormat::Safetensors);
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

TEST_CASE("every export format reads back equal, in fp32, fp16 and bf16", "[export]") {
  B b;
  for (const char* model : {"nemo/model", "sd2/model"}) {
    auto source = [&] {
      if (std::string(model) == "nemo/model") return pipeline::load_pipeline(b, kFormats / model);
      // the SD 2.x fixture is weights only: borrow the NeMo model's tokenizer and scheduler
      auto p = pipeline::TextToImagePipeline<B>(b);
      p.unet = io::load_unet(b, kFormats / model / "unet");
      p.vae = io::load_vae(b, kFormats / model / "vae");
      p.text_encoder = io::load_clip_text(b, kFormats / model / "text_encoder");
      p.tokenizer_files = pipeline::TokenizerFiles::from_folder(kFormats / "nemo" / "model" / "tokenizer");
      return p;
    }();
    for (const auto format :
         {pipeline::ExportFormat::Diffusers, pipeline::ExportFormat::Safetensors, pipeline::ExportFormat::Ckpt, pipeline::ExportFormat::Nemo}) {
      for (const auto dtype : {DType::F32, DType::F16, DType::BF16}) {
        const auto name = pipeline::export_format_name(format);
        INFO(model << " as " << name << " in " << dtype_name(dtype));
        const auto path = scratch(std::string(model == std::string("nemo/model") ? "nemo-" : "sd2-") + name + "-" + std::string(dtype_name(dtype)) +
                                  (format == pipeline::ExportFormat::Diffusers ? "" : "." + name));
        if (format == pipeline::ExportFormat::Nemo && source.vae->config.norm_num_groups != 32) {
          // NeMo's UNet and VAE normalise in groups of 32: a model that does not cannot be a NeMo model, and is refused
          REQUIRE_THROWS_WITH(pipeline::export_pipeline(source, path, format, dtype), Catch::Contains("groups of 32"));
          REQUIRE_FALSE(fs::exists(path));
          continue;
        }
        pipeline::export_pipeline(source, path, format, dtype);
        REQUIRE_FALSE(fs::exists(path.string() + ".tmp-" + std::to_string(::getpid())));
        pipeline::LoadOptions o;
        if (format == pipeline::ExportFormat::Safetensors || format == pipeline::ExportFormat::Ckpt) {
          // a single file carries no configuration: give the source's (a diffusers folder written by the export itself)
          o.configs = scratch("configs-" + std::string(dtype_name(dtype)));
          pipeline::export_diffusers(source, o.configs);
        }
        auto back = pipeline::load_pipeline(b, path, o);
        REQUIRE(values_of(*back.unet) == values_of(*source.unet, dtype));
        REQUIRE(values_of(*back.vae) == values_of(*source.vae, dtype));
        REQUIRE(values_of(*back.text_encoder) == values_of(*source.text_encoder, dtype));
        REQUIRE(back.text_encoder->config.num_hidden_layers == source.text_encoder->config.num_hidden_layers);
        REQUIRE(back.tokenizer_files->vocab_json == source.tokenizer_files->vocab_json);
      }
    }
  }
}

TEST_CASE("a model with a NaN or infinite weight is never exported", "[export]") {
  B b;
  auto p = pipeline::load_pipeline(b, kFormats / "nemo" / "model");
  bool damaged = false;
  p.vae->visit([&](const std::string& name, auto& param) {
    if (damaged || name.find("weight") == std::string::npos) return;
    auto v = param.value.to_host();
    v[v.size() / 2] = std::numeric_limits<float>::quiet_NaN();
    param.value.copy_from_host(v);  // in place: the value is a view into the model's arena
    damaged = true;
  });
  REQUIRE(damaged);
  for (const auto format : {pipeline::ExportFormat::Diffusers, pipeline::ExportFormat::Safetensors}) {
    const auto path = scratch(format == pipeline::ExportFormat::Diffusers ? "nan-folder" : "nan.safetensors");
    REQUIRE_THROWS_WITH(pipeline::export_pipeline(p, path, format), Catch::Contains("the VAE") && Catch::Contains("1 non-finite values"));
    REQUIRE_FALSE(fs::exists(path));
  }
}

TEST_CASE("the diffusers folder holds what diffusers and transformers look for", "[export][diffusers]") {
  B b;
  auto p = pipeline::load_pipeline(b, kFormats / "nemo" / "model");
  const auto folder = scratch("layout");
  pipeline::export_diffusers(p, folder);
  for (const char* f :
       {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"})
    REQUIRE(fs::exists(folder / f));
  // transformers refuses a safetensors file without {"format": "pt"} (issue #21); every file we write has it
  for (const char* f : {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"})
    REQUIRE(io::SafetensorsFile(folder / f).metadata().at("format") == "pt");
  const auto index = io::read_json(folder / "model_index.json", "test");
  REQUIRE(index["unet"] == nlohmann::json({"diffusers", "UNet2DConditionModel"}));
  REQUIRE(index["text_encoder"] == nlohmann::json({"transformers", "CLIPTextModel"}));
  // the configs read back as the same models
  REQUIRE(models::UNetConfig::from_file(folder / "unet" / "config.json").attention_heads == p.unet->config.attention_heads);
  REQUIRE(models::CLIPTextConfig::from_file(folder / "text_encoder" / "config.json").hidden_size == p.text_encoder->config.hidden_size);
}

TEST_CASE("the .nemo export is laid out as NeMo saves a DreamBooth model", "[export][nemo]") {
  B b;
  auto p = pipeline::load_pipeline(b, kFormats / "nemo" / "model");
  const auto path = scratch("model.nemo");
  pipeline::export_nemo(p, path);
  const io::MappedFile file(path, "test");
  std::vector<std::string> names;
  for (const auto& m : io::read_tar(file.bytes(), path.string())) names.push_back(m.name);
  REQUIRE(std::find(names.begin(), names.end(), "model_config.yaml") != names.end());
  REQUIRE(std::find(names.begin(), names.end(), "model_weights.ckpt") != names.end());
  const io::NemoArchive archive(path);
  REQUIRE(archive.target() == "nemo.collections.multimodal.models.text_to_image.dreambooth.dreambooth.MegatronDreamBooth");
  const auto weights = archive.weights();
  REQUIRE(weights->format() == "torch zip");
  REQUIRE(dynamic_cast<const io::TorchCheckpoint&>(*weights).root_key().empty());  // a bare state dict, as NeMo saves one
  const auto layout = io::detect_layout(*weights);
  REQUIRE(layout->unet_prefix == "model.unet.");
  REQUIRE(layout->unet == io::UNetNaming::NeMo);
  REQUIRE(layout->text_prefix == "model.text_encoder.transformer.");
  // the twelve schedule buffers NeMo's sd_noise_scheduler registers; betas and alphas_cumprod equal the fixture's (numpy)
  std::size_t buffers = 0;
  for (const auto& [name, info] : weights->tensors()) buffers += name.rfind("model.noise_scheduler.", 0) == 0;
  REQUIRE(buffers == 12);
  const io::NemoArchive fixture(kFormats / "nemo" / "dreambooth.nemo");
  const auto reference = fixture.weights();
  for (const char* buffer : {"model.noise_scheduler.betas", "model.noise_scheduler.alphas_cumprod"}) {
    const auto ours = weights->read_f32(buffer), theirs = reference->read_f32(buffer);
    REQUIRE(ours.size() == theirs.size());
    for (std::size_t i = 0; i < ours.size(); ++i) REQUIRE(ours[i] == Approx(theirs[i]).epsilon(1e-6));
  }
  // NeMo's config keys describe the same architecture
  REQUIRE(io::unet_config_from_nemo(archive.config()["unet_config"], "export").block_out_channels == p.unet->config.block_out_channels);
}

TEST_CASE("every config of a model folder is validated at load, errors naming the file and the key", "[load][config]") {
  B b;
  const auto original = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "pipeline" / "model";
  const auto folder = scratch("config-validation");
  fs::remove_all(folder);
  fs::copy(original, folder, fs::copy_options::recursive);
  // Each case: the file (relative to the model folder), a patch (a JSON object merged into the original config, or,
  // not an object, the whole file) and what the error names besides the file.
  const auto cases = io::read_json(fs::path(DREAMBOOTH_TEST_DATA_DIR) / "config_validation_cases.json", "test cases").at("cases");
  REQUIRE(cases.size() >= 40);
  for (const auto& c : cases) {
    const auto file = c.at("file").get<std::string>();
    const auto& patch = c.at("patch");
    INFO("file: " << file << ", patch: " << patch.dump());
    const auto path = folder / file;
    auto json = patch;
    if (patch.is_object()) {
      json = io::read_json(original / file, "test");
      json.update(patch);
    }
    std::ofstream(path) << json.dump(2);
    REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, folder),
                        Catch::Contains(path.string()) && Catch::Contains(c.at("error_names").get<std::string>()));
    fs::copy_file(original / file, path, fs::copy_options::overwrite_existing);
  }
  REQUIRE_NOTHROW(pipeline::load_pipeline(b, folder));
  // a syntax error names the position
  std::ofstream(folder / "unet" / "config.json") << "{\n  \"in_channels\": 4,\n}\n";
  REQUIRE_THROWS_WITH(pipeline::load_pipeline(b, folder), Catch::Contains("config.json") && Catch::Contains("not valid JSON at line 3, column 1"));
  fs::remove_all(folder);
}

TEST_CASE("schedulers refuse configurations outside the training schedule with an error", "[scheduler][config]") {
  schedulers::SchedulerConfig c;
  c.num_train_timesteps = -5;  // as NeMo's keys can give it: an error, not a failed allocation
  REQUIRE_THROWS_WITH(schedulers::NoiseSchedule(c), Catch::Contains("num_train_timesteps"));
  c = {};
  c.beta_end = 2.0;
  REQUIRE_THROWS_WITH(schedulers::make_scheduler("ddim", c), Catch::Contains("beta_end"));
  c = {};
  c.steps_offset = 30;  // valid, but 50 "leading" steps then reach past timestep 999
  auto ddim = schedulers::make_scheduler("ddim", c);
  REQUIRE_THROWS_WITH(ddim->set_timesteps(50), Catch::Contains("steps_offset 30") && Catch::Contains("outside the 1000 training timesteps"));
  c.timestep_spacing = "leading";
  c.steps_offset = 60;  // DPM-Solver's own "leading": 50 x 19 + 60
  auto dpm = schedulers::make_scheduler("dpm++2m", c);
  REQUIRE_THROWS_WITH(dpm->set_timesteps(50), Catch::Contains("reach timestep 1010"));
}
