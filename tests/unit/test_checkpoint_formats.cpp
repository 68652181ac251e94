// Checkpoint formats: every reader gives the tensors of the diffusers fixture the files were made from (fixtures by
// tools/reference/make_checkpoint_fixtures.py: diffusers' own diffusers->original conversion, NeMo's own UNet and VAE
// name mappings, torch.save in both formats), the name-conversion layer round-trips every layout, our single-file export
// equals diffusers' conversion, and the restricted unpickler refuses code.
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/data/dataset.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/nemo_archive.hpp"
#include "dreambooth/io/nemo_model_config.hpp"
#include "dreambooth/io/open_tensors.hpp"
#include "dreambooth/io/torch_checkpoint_writer.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/io/vae_loading.hpp"
#include "scratch.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using B = CpuBackend;

namespace {
const fs::path kData = DREAMBOOTH_TEST_DATA_DIR;
const fs::path kFormats = kData / "checkpoints";

fs::path scratch(const std::string& name) { return test::scratch_folder("formats") / name; }

// name -> values of every parameter a model visits
template <class Model>
std::map<std::string, std::vector<float>> values_of(Model& m) {
  std::map<std::string, std::vector<float>> out;
  m.visit([&](const std::string& n, auto& p) { out[n] = p.value.to_host(); });
  return out;
}

// Every parameter equal, value for value; `transform` maps the expected values first (fp16 rounding, EMA scaling).
template <class Model>
void require_same(Model& got, Model& expected, const std::string& what, float (*transform)(float) = nullptr) {
  const auto a = values_of(got), b = values_of(expected);
  REQUIRE(a.size() == b.size());
  std::size_t checked = 0;
  for (const auto& [name, v] : b) {
    auto want = v;
    if (transform)
      for (auto& x : want) x = transform(x);
    INFO(what << ": parameter " << name);
    REQUIRE(a.at(name) == want);
    ++checked;
  }
  REQUIRE(checked > 10);
}

float to_f16(float x) { return half_bits_to_float(float_to_half_bits(x)); }
float halved(float x) { return 0.5f * x; }

struct Pipeline {
  std::unique_ptr<models::UNet2DConditionModel<B>> unet;
  std::unique_ptr<models::AutoencoderKL<B>> vae;
  std::unique_ptr<models::CLIPTextModel<B>> text;
};
Pipeline diffusers_folder(B& b, const fs::path& folder) {
  return {io::load_unet(b, folder / "unet"), io::load_vae(b, folder / "vae"), io::load_clip_text(b, folder / "text_encoder")};
}
Pipeline from_source(B& b, const io::TensorSource& source, const io::Layout& layout, const Pipeline& like) {
  return {io::load_unet_from(b, source, layout, like.unet->config), io::load_vae_from(b, source, layout, like.vae->config),
          io::load_clip_text_from(b, source, layout, like.text->config)};
}
void require_same(Pipeline& got, Pipeline& expected, const std::string& what, float (*transform)(float) = nullptr) {
  require_same(*got.unet, *expected.unet, what + " UNet", transform);
  require_same(*got.vae, *expected.vae, what + " VAE", transform);
  require_same(*got.text, *expected.text, what + " text encoder", transform);
}
}  // namespace

TEST_CASE("diffusers' own original-layout files read back equal in every container", "[formats][original]") {
  B b;
  auto reference = diffusers_folder(b, kFormats / "sd1" / "model");
  for (const char* file : {"original.ckpt", "original.safetensors", "original_legacy.ckpt", "original_fp16.safetensors"}) {
    const auto source = io::open_tensor_source(kFormats / "sd1" / file);
    const auto layout = io::detect_layout(*source);
    REQUIRE(layout);
    CHECK(layout->name == "original (CompVis)");
    REQUIRE(layout->unet == io::UNetNaming::Original);
    REQUIRE(layout->text == io::TextNaming::Transformers);
    auto got = from_source(b, *source, *layout, reference);
    require_same(got, reference, file, std::string(file).find("fp16") != std::string::npos ? to_f16 : nullptr);
  }
  // the containers differ as they should
  REQUIRE(io::TorchCheckpoint(kFormats / "sd1" / "original.ckpt").format() == "torch zip");
  REQUIRE(io::TorchCheckpoint(kFormats / "sd1" / "original_legacy.ckpt").format() == "torch legacy");
  REQUIRE(io::TorchCheckpoint(kFormats / "sd1" / "original.ckpt").root_key() == "state_dict");
}

TEST_CASE("the EMA copy of an original checkpoint is selectable", "[formats][ema]") {
  B b;
  auto reference = diffusers_folder(b, kFormats / "sd1" / "model");
  const io::TorchCheckpoint source(kFormats / "sd1" / "original_ema.ckpt");
  REQUIRE(io::has_unet_ema(source));
  REQUIRE_FALSE(io::has_unet_ema(io::TorchCheckpoint(kFormats / "sd1" / "original.ckpt")));
  auto layout = *io::detect_layout(source);
  auto plain = io::load_unet_from(b, source, layout, reference.unet->config);
  require_same(*plain, *reference.unet, "weights");
  layout.ema = true;
  auto ema = io::load_unet_from(b, source, layout, reference.unet->config);
  require_same(*ema, *reference.unet, "EMA weights", halved);  // the fixture's EMA copy is 0.5 x the weights
  REQUIRE(source.metadata().at("global_step") == "1000");
}

TEST_CASE("an SD 2.x original checkpoint (OpenCLIP, fused in_proj) reads back equal", "[formats][sd2]") {
  B b;
  auto reference = diffusers_folder(b, kFormats / "sd2" / "model");
  REQUIRE(reference.text->config.num_hidden_layers == 23);
  const io::TorchCheckpoint source(kFormats / "sd2" / "original.ckpt");
  const auto layout = io::detect_layout(source);
  REQUIRE(layout);
  REQUIRE(layout->text == io::TextNaming::OpenCLIP);
  REQUIRE(layout->text_prefix == "cond_stage_model.model.");
  auto got = from_source(b, source, *layout, reference);
  require_same(got, reference, "SD 2.x");
}

TEST_CASE("NeMo's .nemo and Lightning files read back equal to the diffusers weights they were made from", "[formats][nemo]") {
  B b;
  auto reference = diffusers_folder(b, kFormats / "nemo" / "model");
  SECTION("MegatronDreamBooth .nemo: model.unet / model.vae / model.text_encoder.model (Megatron, q k v stacked)") {
    const io::NemoArchive archive(kFormats / "nemo" / "dreambooth.nemo");
    REQUIRE(archive.target().ends_with("dreambooth.MegatronDreamBooth"));
    const auto weights = archive.weights();
    const auto layout = io::detect_layout(*weights);
    REQUIRE(layout);
    CHECK(layout->name == "NeMo DreamBooth");
    REQUIRE(layout->unet == io::UNetNaming::NeMo);
    REQUIRE(layout->unet_prefix == "model.unet.");
    REQUIRE(layout->vae_prefix == "model.vae.");
    REQUIRE(layout->text == io::TextNaming::Megatron);
    auto got = from_source(b, *weights, *layout, reference);
    require_same(got, reference, "dreambooth.nemo");
  }
  SECTION("MegatronLatentDiffusion .nemo: model.model.diffusion_model / ... (q k v interleaved per head)") {
    const io::NemoArchive archive(kFormats / "nemo" / "sd.nemo");
    const auto weights = archive.weights();
    auto layout = *io::detect_layout(*weights);
    CHECK(layout.name == "NeMo Stable Diffusion");
    REQUIRE(layout.unet_prefix == "model.model.diffusion_model.");
    const auto text = io::megatron_text_config(archive.config()["cond_stage_config"]["cfg"]["text"], 1024, "sd.nemo");
    REQUIRE_FALSE(text.megatron_legacy);
    layout.text = io::TextNaming::MegatronInterleaved;
    auto got = from_source(b, *weights, layout, reference);
    require_same(got, reference, "sd.nemo");
    // read as if stacked, the attention weights come out wrong: the layouts really differ
    layout.text = io::TextNaming::Megatron;
    auto wrong = io::load_clip_text_from(b, *weights, layout, reference.text->config);
    REQUIRE(values_of(*wrong).at("text_model.encoder.layers.0.self_attn.k_proj.weight") !=
            values_of(*reference.text).at("text_model.encoder.layers.0.self_attn.k_proj.weight"));
  }
  SECTION("a Lightning checkpoint with NeMo's pre-2024 transformer-block names and an OmegaConf hyper-parameter") {
    const io::TorchCheckpoint source(kFormats / "nemo" / "lightning_legacy_norms.ckpt");
    REQUIRE(source.root_key() == "state_dict");
    REQUIRE(source.metadata().at("global_step") == "200");
    io::Layout layout;
    REQUIRE(io::detect_unet(source, layout));
    REQUIRE(layout.unet == io::UNetNaming::NeMoLegacyNorms);
    auto unet = io::load_unet_from(b, source, layout, reference.unet->config);
    require_same(*unet, *reference.unet, "lightning_legacy_norms.ckpt");
  }
}

TEST_CASE("NeMo's model configuration gives the diffusers configuration of the same model", "[formats][nemo][config]") {
  const io::NemoArchive archive(kFormats / "nemo" / "dreambooth.nemo");
  const auto unet = io::unet_config_from_nemo(archive.config()["unet_config"], "unet_config");
  const auto expected = models::UNetConfig::from_file(kFormats / "nemo" / "model" / "unet" / "config.json");
  REQUIRE(unet.block_out_channels == expected.block_out_channels);
  REQUIRE(unet.down_block_types == expected.down_block_types);
  REQUIRE(unet.up_block_types == expected.up_block_types);
  REQUIRE(unet.layers_per_block == expected.layers_per_block);
  REQUIRE(unet.attention_heads == expected.attention_heads);
  REQUIRE(unet.cross_attention_dim == expected.cross_attention_dim);
  REQUIRE(unet.norm_num_groups == expected.norm_num_groups);
  REQUIRE(unet.use_linear_projection == expected.use_linear_projection);
  const auto vae = io::vae_config_from_nemo(archive.config()["first_stage_config"], archive.config()["scale_factor"].as<double>(), "vae");
  const auto expected_vae = models::VAEConfig::from_file(kFormats / "nemo" / "model" / "vae" / "config.json");
  REQUIRE(vae.block_out_channels == expected_vae.block_out_channels);
  REQUIRE(vae.layers_per_block == expected_vae.layers_per_block);
  REQUIRE(vae.latent_channels == expected_vae.latent_channels);
  REQUIRE(vae.scaling_factor == expected_vae.scaling_factor);
  const auto schedule = io::scheduler_config_from_nemo(archive.config()["noise_scheduler"], "noise_scheduler");
  REQUIRE(schedule.beta_schedule == "scaled_linear");
  REQUIRE(schedule.beta_start == 0.00085);
  REQUIRE(schedule.prediction_type == "epsilon");
  // the CLIP model's own .nemo: its text config, and its tokenizer as nemo: artifacts
  const io::NemoArchive clip(kFormats / "nemo" / "clip.nemo");
  const auto text = io::megatron_text_config(clip.config()["text"], 1024, "clip.nemo");
  const auto expected_text = models::CLIPTextConfig::from_file(kFormats / "nemo" / "model" / "text_encoder" / "config.json");
  REQUIRE(text.clip.hidden_size == expected_text.hidden_size);
  REQUIRE(text.clip.num_attention_heads == expected_text.num_attention_heads);
  REQUIRE(text.clip.intermediate_size == expected_text.intermediate_size);
  REQUIRE(text.clip.num_hidden_layers == expected_text.num_hidden_layers);
  REQUIRE(text.clip.hidden_act == expected_text.hidden_act);
  REQUIRE(text.megatron_legacy);
  const auto vocab = clip.artifact(clip.config()["tokenizer"]["vocab_file"].as<std::string>());
  REQUIRE(vocab);
  std::ifstream original(kFormats / "nemo" / "model" / "tokenizer" / "vocab.json");
  REQUIRE(clip.text(*vocab) == std::string(std::istreambuf_iterator<char>(original), {}));
  // and back: our NeMo configuration of the diffusers configuration reads as the same model
  const auto again = io::unet_config_from_nemo(io::nemo_unet_config(expected), "again");
  REQUIRE(again.attention_heads == expected.attention_heads);
  REQUIRE(again.down_block_types == expected.down_block_types);
  REQUIRE(io::vae_config_from_nemo(io::nemo_first_stage_config(expected_vae), 0.18215, "again").block_out_channels ==
          expected_vae.block_out_channels);
}

TEST_CASE("torch.save's features read as torch wrote them", "[formats][torch]") {
  const io::SafetensorsFile expected(kFormats / "torch" / "features.safetensors");
  for (const char* file : {"features.pt", "features_legacy.pt"}) {
    INFO(file);
    const io::TorchCheckpoint got(kFormats / "torch" / file);
    REQUIRE(got.root_key() == "state_dict");
    REQUIRE(got.metadata().at("epoch") == "7");
    REQUIRE(got.tensors().size() == expected.tensors().size());
    for (const auto& [name, info] : expected.tensors()) {
      INFO("tensor " << name);
      REQUIRE(got.info(name).dtype == info.dtype);
      REQUIRE(got.info(name).shape == info.shape);
      REQUIRE(got.read_raw(name) == expected.read_raw(name));  // strided views gathered, shared storages sliced
    }
  }
  const io::TorchCheckpoint bare(kFormats / "torch" / "bare.pt");
  REQUIRE(bare.read_f32("") == io::SafetensorsFile(kFormats / "torch" / "bare.safetensors").read_f32(""));
}

TEST_CASE("every layout round-trips through the name-conversion layer and both writers", "[formats][roundtrip]") {
  B b;
  auto sd1 = diffusers_folder(b, kFormats / "sd1" / "model");
  auto sd2 = diffusers_folder(b, kFormats / "sd2" / "model");
  auto nemo = diffusers_folder(b, kFormats / "nemo" / "model");
  struct Case {
    std::string name;
    io::Layout layout;
    Pipeline* models;
  };
  auto nemo_sd = io::Layout::nemo_stable_diffusion(io::TextNaming::MegatronInterleaved);
  auto nemo_legacy = io::Layout::nemo_dreambooth(io::TextNaming::Megatron);
  nemo_legacy.unet = io::UNetNaming::NeMoLegacyNorms;
  std::vector<Case> cases = {{"original", io::Layout::original(), &sd1},
                             {"original SD 2.x", io::Layout::original_sd2(), &sd2},
                             {"NeMo DreamBooth (transformers CLIP)", io::Layout::nemo_dreambooth(), &nemo},
                             {"NeMo DreamBooth (Megatron CLIP, pre-2024 norms)", nemo_legacy, &nemo},
                             {"NeMo Stable Diffusion (interleaved Megatron CLIP)", nemo_sd, &nemo},
                             {"diffusers", io::Layout::diffusers(), &sd1}};
  for (auto& c : cases) {
    auto& m = *c.models;
    for (const bool torch : {true, false}) {
      INFO(c.name << (torch ? " as a torch checkpoint" : " as safetensors"));
      std::unique_ptr<io::TensorWriter> writer;
      if (torch)
        writer = std::make_unique<io::TorchCheckpointWriter>("state_dict");
      else
        writer = std::make_unique<io::SafetensorsWriter>();
      io::write_parameters(*m.unet, io::name_map(*m.unet, c.layout), *writer);
      if (c.layout.unet != io::UNetNaming::Diffusers) {  // a diffusers "layout" has one component per file
        io::write_parameters(*m.vae, io::name_map(*m.vae, c.layout), *writer);
        io::write_parameters(*m.text, io::name_map(*m.text, c.layout), *writer);
      }
      const auto path = scratch(std::string("roundtrip") + (torch ? ".ckpt" : ".safetensors"));
      writer->write(path);
      const auto source = io::open_tensor_source(path);
      auto layout = io::detect_layout(*source);
      REQUIRE(layout);
      REQUIRE(layout->unet == c.layout.unet);
      REQUIRE(layout->unet_prefix == c.layout.unet_prefix);
      auto unet = io::load_unet_from(b, *source, *layout, m.unet->config);
      require_same(*unet, *m.unet, c.name);
      if (c.layout.unet == io::UNetNaming::Diffusers) continue;
      REQUIRE(layout->vae_prefix == c.layout.vae_prefix);
      REQUIRE(layout->text_prefix == c.layout.text_prefix);
      if (c.layout.text == io::TextNaming::MegatronInterleaved) layout->text = c.layout.text;  // the file cannot say; NeMo's config does
      REQUIRE(layout->text == c.layout.text);
      auto vae = io::load_vae_from(b, *source, *layout, m.vae->config);
      auto text = io::load_clip_text_from(b, *source, *layout, m.text->config);
      require_same(*vae, *m.vae, c.name);
      require_same(*text, *m.text, c.name);
      // both directions of the table: every stored name maps back to the parameters it holds
      const auto map = io::name_map(*m.text, c.layout);
      const auto back = io::reverse(map);
      std::size_t parameters = 0;
      for (const auto& [stored, names] : back) {
        REQUIRE(source->contains(stored));
        parameters += names.size();
      }
      REQUIRE(parameters == map.size());
    }
  }
}

TEST_CASE("our single-file export equals diffusers' own conversion, in fp32 and fp16", "[formats][export]") {
  B b;
  auto sd1 = diffusers_folder(b, kFormats / "sd1" / "model");
  for (const auto dtype : {DType::F32, DType::F16}) {
    io::SafetensorsWriter writer;
    const auto layout = io::Layout::original();
    io::write_parameters(*sd1.unet, io::name_map(*sd1.unet, layout), writer, dtype);
    io::write_parameters(*sd1.vae, io::name_map(*sd1.vae, layout), writer, dtype);
    io::write_parameters(*sd1.text, io::name_map(*sd1.text, layout), writer, dtype);
    const auto path = scratch("export.safetensors");
    writer.write(path);
    const io::SafetensorsFile ours(path);
    const io::SafetensorsFile theirs(kFormats / "sd1" / (dtype == DType::F16 ? "original_fp16.safetensors" : "original.safetensors"));
    std::size_t compared = 0;
    for (const auto& [name, info] : theirs.tensors()) {
      if (name.ends_with("position_ids")) continue;  // a buffer some transformers versions save; loaders do not need it
      INFO("tensor " << name);
      REQUIRE(ours.contains(name));
      REQUIRE(ours.info(name).shape == info.shape);
      REQUIRE(ours.info(name).dtype == info.dtype);
      REQUIRE(ours.read_raw(name) == theirs.read_raw(name));
      ++compared;
    }
    REQUIRE(compared + (theirs.contains("cond_stage_model.transformer.text_model.embeddings.position_ids") ? 1 : 0) == ours.tensors().size());
    REQUIRE(ours.metadata().at("format") == "pt");
  }
  // SD 2.x: OpenCLIP names, q k v fused into in_proj
  auto sd2 = diffusers_folder(b, kFormats / "sd2" / "model");
  io::TorchCheckpointWriter writer("state_dict");
  const auto layout = io::Layout::original_sd2();
  io::write_parameters(*sd2.unet, io::name_map(*sd2.unet, layout), writer);
  io::write_parameters(*sd2.vae, io::name_map(*sd2.vae, layout), writer);
  io::write_parameters(*sd2.text, io::name_map(*sd2.text, layout), writer);
  const auto path = scratch("export_sd2.ckpt");
  writer.write(path);
  const io::TorchCheckpoint ours(path), theirs(kFormats / "sd2" / "original.ckpt");
  std::size_t compared = 0;
  for (const auto& [name, info] : theirs.tensors()) {
    if (name.ends_with("position_ids")) continue;
    INFO("tensor " << name);
    REQUIRE(ours.contains(name));
    REQUIRE(ours.read_raw(name) == theirs.read_raw(name));
    ++compared;
  }
  REQUIRE(compared > 100);
}

TEST_CASE("our torch checkpoints hold only what every loader accepts", "[formats][torch]") {
  io::TorchCheckpointWriter writer("", /*force_zip64=*/true);
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  writer.add("a.weight", {2, 3}, v);
  writer.add("b.half", {6}, v, DType::F16);
  writer.add("c.bf16", {3, 2}, v, DType::BF16);
  const auto path = scratch("zip64.ckpt");
  writer.write(path);
  const io::MappedFile file(path, "test");
  const io::ZipArchive zip(file.bytes(), path.string());
  std::vector<std::string> names;
  for (const auto& e : zip.entries()) {
    names.push_back(e.name);
    REQUIRE(e.method == 0);
    REQUIRE(e.data_offset % 64 == 0);  // torch's alignment, so a loader can map the data
  }
  // A1111's safe unpickler accepts <dir>/data.pkl, <dir>/version and <dir>/data/<digits> only
  REQUIRE(names == std::vector<std::string>{"archive/data.pkl", "archive/data/0", "archive/data/1", "archive/data/2", "archive/version"});
  const io::TorchCheckpoint back(path);
  REQUIRE(back.read_f32("a.weight") == v);
  REQUIRE(back.info("b.half").dtype == io::StDType::F16);
  REQUIRE(back.info("c.bf16").shape == Shape{3, 2});
}

namespace {
fs::path write_bytes(const std::string& name, const std::string& bytes) {
  const auto path = scratch(name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}
// A torch zip checkpoint whose data.pkl is `pickle`.
fs::path zip_with_pickle(const std::string& name, const std::string& pickle) {
  const auto path = scratch(name);
  io::AtomicFileWriter out(path, "test");
  io::ZipWriter zip(out);
  zip.add("archive/data.pkl", {reinterpret_cast<const std::byte*>(pickle.data()), pickle.size()});
  zip.add("archive/version", {reinterpret_cast<const std::byte*>("3\n"), 2});
  zip.finish();
  out.commit();
  return path;
}
}  // namespace

TEST_CASE("the unpickler refuses pickles that would run code, naming what they ask for", "[formats][pickle][security]") {
  struct Case {
    const char* name;
    std::string pickle;
    const char* message;
  };
  using namespace std::string_literals;
  const Case cases[] = {
      {"os.system through GLOBAL + REDUCE",
       "\x80\x02"
       "cos\nsystem\nX\x02\x00\x00\x00ls\x85R."s,
       "os.system"},
      {"posix.system",
       "\x80\x02"
       "cposix\nsystem\nX\x02\x00\x00\x00ls\x85R."s,
       "posix.system"},
      {"builtins.eval through STACK_GLOBAL",
       "\x80\x04\x8c\x08"
       "builtins\x8c\x04"
       "eval\x93\x8c\x04"
       "1+1\x85R."s,
       "builtins.eval"},
      {"__builtin__.exec (protocol 2 spelling)",
       "\x80\x02"
       "c__builtin__\nexec\nX\x01\x00\x00\x00"
       "1\x85R."s,
       "__builtin__.exec"},
      {"subprocess.Popen through INST", "(S'ls'\nisubprocess\nPopen\n."s, "subprocess.Popen"},
      {"a class through OBJ", "(cbuiltins\ngetattr\no."s, "builtins.getattr"},
      {"the extension registry", "\x80\x02\x82\x01."s, "EXT1"},
      {"an out-of-band buffer", "\x80\x05\x97."s, "NEXT_BUFFER"},
      {"a text persistent id", "Pfoo\n."s, "PERSID"},
  };
  for (const auto& c : cases) {
    INFO("case: " << c.name);
    const auto path = zip_with_pickle(std::string("evil-") + std::to_string(&c - cases) + ".ckpt", c.pickle);
    REQUIRE_THROWS_WITH(io::TorchCheckpoint(path), Catch::Contains(c.message) && Catch::Contains(path.filename().string()));
    // the same pickle as a legacy file
    REQUIRE_THROWS_WITH(io::TorchCheckpoint(write_bytes("evil-legacy.pt", c.pickle)), Catch::Contains("evil-legacy.pt"));
  }
  // what real checkpoints carry beside their weights is read, not refused: the Lightning .ckpt above holds an
  // OmegaConf DictConfig; numpy scalars and torch.Size are data too
  REQUIRE_NOTHROW(io::TorchCheckpoint(kFormats / "nemo" / "lightning_legacy_norms.ckpt"));
}

TEST_CASE("damaged and foreign files are refused with the file named", "[formats][malformed]") {
  const auto ckpt = kFormats / "sd1" / "original.ckpt";
  std::ifstream in(ckpt, std::ios::binary);
  const std::string whole(std::istreambuf_iterator<char>(in), {});
  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {"truncated zip", whole.substr(0, whole.size() / 2), "zip"},
      {"zip without its directory", whole.substr(0, whole.size() - 22), "end-of-central-directory"},
      {"empty", "", "not a PyTorch checkpoint"},
      {"text", "hello", "not a PyTorch checkpoint"},
      {"a pickle that is no state dict", std::string("\x80\x02K\x05.", 5), "legacy format"},
  };
  for (const auto& c : cases) {
    INFO("case: " << c.name);
    const auto path = write_bytes(std::string("bad-") + std::to_string(&c - cases) + ".ckpt", c.bytes);
    REQUIRE_THROWS_WITH(io::TorchCheckpoint(path), Catch::Contains(c.message) && Catch::Contains(path.filename().string()));
  }
  // a storage record missing from the zip
  const std::string pickle = io::TorchCheckpointWriter().pickle();  // an empty state dict
  REQUIRE(io::TorchCheckpoint(zip_with_pickle("empty-state.ckpt", pickle)).tensors().empty());
  io::TorchCheckpointWriter one;
  const std::vector<float> v = {1, 2};
  one.add("t", {2}, v);
  REQUIRE_THROWS_WITH(io::TorchCheckpoint(zip_with_pickle("no-record.ckpt", one.pickle())), Catch::Contains("has no record archive/data/0"));
  // a .nemo where a weights file is expected, and an archive without NeMo's files
  REQUIRE_THROWS_WITH(io::open_tensor_source(kFormats / "nemo" / "clip.nemo"), Catch::Contains("tar archive"));
  REQUIRE_THROWS_WITH(io::NemoArchive(ckpt), Catch::Contains("original.ckpt"));
}

TEST_CASE("a gzip'd .nemo (NeMo before 1.7) and an extracted one read as the archive does", "[formats][nemo]") {
  const auto original = kFormats / "nemo" / "clip.nemo";
  std::ifstream in(original, std::ios::binary);
  const std::string bytes(std::istreambuf_iterator<char>(in), {});
  const auto gz = scratch("clip.nemo.gz");
  gzFile out = gzopen(gz.c_str(), "wb");
  REQUIRE(out != nullptr);
  REQUIRE(gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(out) == Z_OK);
  const io::NemoArchive tar(original), zipped(gz);
  // an extracted archive: the members as files in a folder
  const auto folder = scratch("clip-extracted");
  fs::create_directories(folder);
  for (const auto& name : tar.members()) {
    fs::create_directories((folder / name).parent_path());
    std::ofstream(folder / name, std::ios::binary) << tar.text(name);
  }
  const io::NemoArchive extracted(folder);
  for (const auto* a : {&zipped, &extracted}) {
    REQUIRE(a->members() == tar.members());
    const auto w = a->weights(), reference = tar.weights();
    REQUIRE(w->tensors().size() == reference->tensors().size());
    for (const auto& [name, info] : reference->tensors()) REQUIRE(w->read_raw(name) == reference->read_raw(name));
  }
  // a truncated gzip stream is named as such
  const auto cut = scratch("cut.nemo");
  std::ifstream gz_in(gz, std::ios::binary);
  const std::string gz_bytes(std::istreambuf_iterator<char>(gz_in), {});
  std::ofstream(cut, std::ios::binary) << gz_bytes.substr(0, gz_bytes.size() / 2);
  REQUIRE_THROWS_WITH(io::NemoArchive(cut), Catch::Contains("cut.nemo") && Catch::Contains("gzip"));
}

TEST_CASE("NeMo's cached latents hold the VAE moments of their images", "[formats][nemo][latents]") {
  B b;
  auto vae = io::load_vae(b, kFormats / "nemo" / "model" / "vae");
  for (int i = 0; i < 3; ++i) {
    INFO("image " << i);
    const io::TorchCheckpoint cached(kFormats / "nemo" / "images_cached" / ("instance_image_cache_" + std::to_string(i) + ".pt"));
    REQUIRE(cached.contains(""));  // a tensor saved alone
    REQUIRE(cached.info("").shape == Shape{8, 16, 16});
    const auto image = data::preprocess(data::load_image(kFormats / "nemo" / "images" / ("image-" + std::to_string(i) + ".png")), 32, true);
    const auto ours = vae->encode(b, Tensor<B>::from_host(b, {1, 3, 32, 32}, image)).to_host();
    const auto theirs = cached.read_f32("");
    REQUIRE(ours.size() == theirs.size());
    double num = 0, den = 0;
    for (std::size_t k = 0; k < ours.size(); ++k) num += (ours[k] - theirs[k]) * (ours[k] - theirs[k]), den += theirs[k] * theirs[k];
    REQUIRE(std::sqrt(num / den) < 1e-5);  // diffusers' float32 encoder against ours (fp16 weights, identical in both)
  }
}
