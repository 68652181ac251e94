// Exports: every format (diffusers folder, original .safetensors and .ckpt, .nemo) in fp32, fp16 and bf16 is read back and
// compared with the weights it came from; the files hold what the reference loaders look for.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/tar.hpp"
#include "dreambooth/pipeline/export.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using B = CpuBackend;

namespace {
const fs::path kFormats = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "checkpoints";

fs::path scratch(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("dreambooth-export-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}

template <class Model>
std::map<std::string, std::vector<float>> values_of(Model& m, DType dtype = DType::F32) {
  std::map<std::string, std::vector<float>> out;
  m.visit([&](const std::string& n, auto& p) {
    auto v = p.value.to_host();
    if (dtype != DType::F32) {  // what storing as dtype keeps
      std::vector<std::byte> stored(v.size() * dtype_size(dtype));
      convert_from_f32(v, dtype, stored.data());
      convert_to_f32(stored.data(), dtype, v);
    }
    out[n] = v;
  });
  return out;
}
}  // namespace

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
