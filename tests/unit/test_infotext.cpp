// A1111's generation parameters: examples of the web UI's own infotext parse as its parse_generation_parameters() reads
// them; what generate writes parses back to the settings it came from; the model hash is A1111's (SHA-256, 10 digits);
// PNG text chunks keep UTF-8 prompts.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "dreambooth/io/png.hpp"
#include "dreambooth/io/sha256.hpp"
#include "dreambooth/pipeline/infotext.hpp"
#include "scratch.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using pipeline::Infotext;

namespace {
fs::path scratch(const std::string& name) { return test::scratch_folder("infotext") / name; }
std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }
}  // namespace

TEST_CASE("A1111's own infotexts parse as the web UI reads them", "[infotext]") {
  SECTION("the example in A1111's parse_generation_parameters() (an old 8-digit model hash)") {
    const auto t = Infotext::parse(
        "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie "
        "Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
        "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, "
        "mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b");
    REQUIRE(t.prompt.rfind("girl with an artist's beret, determined", 0) == 0);
    REQUIRE(t.prompt.size() > 100);
    REQUIRE(t.prompt.find("Negative") == std::string::npos);
    REQUIRE(t.negative_prompt.rfind("ugly, fat, obese", 0) == 0);
    REQUIRE(t.negative_prompt.find("messy drawing") != std::string::npos);
    REQUIRE(t.value("Steps") == "20");
    REQUIRE(t.value("Sampler") == "Euler a");
    REQUIRE(t.value("CFG scale") == "7");
    REQUIRE(t.value("Seed") == "965400086");
    REQUIRE(t.value("Size-1") == "512");
    REQUIRE(t.value("Size-2") == "512");
    REQUIRE_FALSE(t.value("Size"));
    REQUIRE(t.value("Model hash") == "45dee52b");
    REQUIRE(t.fields.size() == 7);
  }
  SECTION("a v1.9 infotext: schedule type, quoted values holding commas and colons, a version") {
    const auto t = Infotext::parse(
        "cpc explosion, <lora:207:1>\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 966911465, Size: 512x512, Model hash: 15012c538f, "
        "Model: realisticVisionV51_v51VAE, Clip skip: 2, ControlNet 0: \"Module: none, Model: None, Weight: 1.0, Resize Mode: Crop and "
        "Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
        "Control Mode: Balanced\", TI hashes: \"ng_deepnegative_v1_75t: 54e7e4826d53\", Pad conds: True, Version: v1.9.4");
    REQUIRE(t.prompt == "cpc explosion, <lora:207:1>");
    REQUIRE(t.negative_prompt.empty());
    REQUIRE(t.value("Schedule type") == "Karras");
    REQUIRE(t.value("Model hash") == "15012c538f");
    REQUIRE(t.value("Model") == "realisticVisionV51_v51VAE");
    REQUIRE(t.value("Clip skip") == "2");
    REQUIRE(t.value("ControlNet 0") ==
            "Module: none, Model: None, Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, "
            "Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced");
    REQUIRE(t.value("TI hashes") == "ng_deepnegative_v1_75t: 54e7e4826d53");
    REQUIRE(t.value("Pad conds") == "True");
    REQUIRE(t.value("Version") == "v1.9.4");
    REQUIRE(t.fields.size() == 14);  // Size counts twice (Size-1, Size-2)
  }
  SECTION("a prompt over several lines, a negative prompt over two") {
    const auto t = Infotext::parse(
        "a photo of sks dog\non the beach\nNegative prompt: blurry,\nlow quality\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 7, Seed: 1170634956, Size: 640x896, Model hash: 92970aa785, Model: dreamlike-photoreal-2.0, Version: 1.10.1");
    REQUIRE(t.prompt == "a photo of sks dog\non the beach");
    REQUIRE(t.negative_prompt == "blurry,\nlow quality");
    REQUIRE(t.value("Size-1") == "640");
    REQUIRE(t.value("Size-2") == "896");
    REQUIRE(t.value("Model") == "dreamlike-photoreal-2.0");
  }
  SECTION("a last line with fewer than three fields is part of the prompt") {
    const auto t = Infotext::parse("a cat\nStyle: photo, Mood: calm");
    REQUIRE(t.prompt == "a cat\nStyle: photo, Mood: calm");
    REQUIRE(t.fields.empty());
  }
}

TEST_CASE("what generate writes parses back to the settings it came from", "[infotext]") {
  pipeline::InfotextSettings s;
  s.prompt = "a photo of sks dog, wearing a hat: red\non the beach";
  s.negative_prompt = "blurry, \"low\" quality";
  s.steps = 30;
  s.guidance_scale = 7.5;
  s.seed = 18446744073709551615ull;
  s.width = 512, s.height = 768;
  s.model = "/models/my, model.safetensors";  // not a file: no hash computed here
  s.model_hash = "0123456789";
  for (const auto& [scheduler, sampler, schedule] :
       std::vector<std::tuple<std::string, std::string, std::string>>{{"pndm", "PLMS", ""},
                                                                      {"PNDMScheduler", "PLMS", ""},
                                                                      {"ddim", "DDIM", ""},
                                                                      {"euler", "Euler", "Uniform"},
                                                                      {"EulerAncestralDiscreteScheduler", "Euler a", "Uniform"},
                                                                      {"dpm++2m", "DPM++ 2M", "Uniform"}}) {
    INFO(scheduler);
    s.scheduler = scheduler;
    const auto text = pipeline::generation_infotext(s).text();
    const auto back = Infotext::parse(text);
    REQUIRE(back.prompt == s.prompt);
    REQUIRE(back.negative_prompt == s.negative_prompt);
    REQUIRE(back.value("Steps") == "30");
    REQUIRE(back.value("Sampler") == sampler);
    REQUIRE(back.value("Schedule type") == (schedule.empty() ? std::nullopt : std::optional(schedule)));
    REQUIRE(back.value("CFG scale") == "7.5");
    REQUIRE(back.value("Seed") == "18446744073709551615");
    REQUIRE(back.value("Size-1") == "512");
    REQUIRE(back.value("Size-2") == "768");
    REQUIRE(back.value("Model hash") == "0123456789");
    REQUIRE(back.value("Model") == "my, model");  // quoted (it holds a comma) and unquoted
    REQUIRE(text.find("Model: \"my, model\"") != std::string::npos);
  }
  SECTION("no negative prompt: no Negative prompt line, as A1111 writes it") {
    s.negative_prompt.clear();
    s.scheduler = "euler_a";
    const auto text = pipeline::generation_infotext(s).text();
    REQUIRE(text.find("Negative prompt") == std::string::npos);
    REQUIRE(Infotext::parse(text).negative_prompt.empty());
  }
  SECTION("DDIM's eta and a batch's position") {
    s.scheduler = "ddim";
    s.eta = 0.5;
    s.images = 4, s.image = 2;
    const auto back = Infotext::parse(pipeline::generation_infotext(s).text());
    REQUIRE(back.value("Eta DDIM") == "0.5");
    REQUIRE(back.value("Batch size") == "4");
    REQUIRE(back.value("Batch pos") == "2");
  }
  SECTION("a folder is named by its name, whole") {
    const auto folder = scratch("sd-1.5");
    fs::create_directories(folder);
    s.model = folder.string() + "/";
    s.scheduler = "ddim";
    REQUIRE(Infotext::parse(pipeline::generation_infotext(s).text()).value("Model") == "sd-1.5");
  }
  REQUIRE_THROWS_WITH(pipeline::a1111_sampler("lms"), Catch::Contains("lms"));
}

TEST_CASE("SHA-256 gives the FIPS 180-2 test vectors, whole or in pieces, and A1111's model hash is its first 10 digits", "[infotext][sha256]") {
  REQUIRE(io::sha256_hex(bytes_of("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  REQUIRE(io::sha256_hex(bytes_of("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  REQUIRE(io::sha256_hex(bytes_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // one million 'a', in a file larger than one 16 MiB piece by repeating it: the pieces hash as the whole
  const std::string million(1000000, 'a');
  io::Sha256 pieces;
  for (int i = 0; i < 10; ++i) pieces.update(bytes_of(million.substr(static_cast<std::size_t>(i) * 100000, 100000)));
  REQUIRE(pieces.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  const auto file = scratch("model.safetensors");
  {
    std::ofstream out(file, std::ios::binary);
    for (int i = 0; i < 17; ++i) out << million;
  }
  io::Sha256 whole;
  for (int i = 0; i < 17; ++i) whole.update(bytes_of(million));
  const auto expected = whole.hex();
  REQUIRE(io::sha256_of_file(file) == expected);
  REQUIRE(pipeline::a1111_model_hash(file) == expected.substr(0, 10));
  // what A1111 cannot load has no hash
  REQUIRE_FALSE(pipeline::a1111_model_hash(file.parent_path()));
  const auto nemo = scratch("model.nemo");
  fs::copy_file(file, nemo, fs::copy_options::overwrite_existing);
  REQUIRE_FALSE(pipeline::a1111_model_hash(nemo));
  REQUIRE_THROWS_WITH(io::sha256_of_file(scratch("missing.ckpt")), Catch::Contains("missing.ckpt"));
  fs::remove_all(file.parent_path());
}

TEST_CASE("PNG text: ASCII in tEXt, UTF-8 in iTXt, both read back", "[infotext][png]") {
  const std::vector<std::uint8_t> pixels(4 * 4 * 3, 128);
  const auto path = scratch("text.png");
  const std::string ascii = "a photo of sks dog\nSteps: 20, Sampler: Euler a, CFG scale: 7",
                    utf8 = "une photo de sks chien, caf\xc3\xa9, \xe7\x8a\xac";
  io::write_png(path, pixels.data(), 4, 4, {{"parameters", utf8}, {"Software", ascii}});
  const auto back = io::read_png(path);
  REQUIRE(back.text.at("parameters") == utf8);
  REQUIRE(back.text.at("Software") == ascii);
  std::ifstream in(path, std::ios::binary);
  const std::string raw(std::istreambuf_iterator<char>(in), {});
  REQUIRE(raw.find("iTXtparameters") != std::string::npos);
  REQUIRE(raw.find("tEXtSoftware") != std::string::npos);
  fs::remove_all(path.parent_path());
}
