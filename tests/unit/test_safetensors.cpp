// safetensors: round trips, a file written by the Python package, and malformed files refused cleanly.
// This test also runs under AddressSanitizer and UBSan (.ci/run builds it a second time with them).
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "scratch.hpp"

using namespace dreambooth;
using io::SafetensorsFile;
using io::SafetensorsWriter;
namespace fs = std::filesystem;

namespace {

fs::path scratch_dir() { return test::scratch_folder("safetensors-test"); }

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
  return s;
}

// A file of: 8-byte length (the header's own length unless `declared` is given), header text, data.
fs::path write_raw(const std::string& name, const std::string& header, std::size_t data_bytes, std::optional<std::uint64_t> declared = std::nullopt) {
  const auto path = scratch_dir() / name;
  std::ofstream f(path, std::ios::binary);
  f << le64(declared.value_or(header.size())) << header << std::string(data_bytes, '\x01');
  return path;
}

}  // namespace

TEST_CASE("safetensors round trip in F32, F16 and BF16 with metadata", "[safetensors]") {
  CpuBackend b;
  std::vector<float> values(30);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.37f * static_cast<float>(i) - 4.1f;
  const auto path = scratch_dir() / "roundtrip.safetensors";
  SafetensorsWriter writer;
  writer.add("a.f32", {5, 6}, values, DType::F32);
  writer.add("b.f16", {2, 15}, values, DType::F16);
  writer.add("c.bf16", {30}, values, DType::BF16);
  writer.add("d.tensor", Tensor<CpuBackend>::from_host(b, {3, 10}, values));
  writer.set_metadata("format", "pt");
  writer.write(path);
  REQUIRE_FALSE(fs::exists(path.string() + ".tmp-" + std::to_string(::getpid())));

  SafetensorsFile file(path);
  REQUIRE(file.metadata().at("format") == "pt");
  REQUIRE(file.tensors().size() == 4);
  REQUIRE(file.info("b.f16").dtype == io::StDType::F16);
  REQUIRE(file.info("b.f16").shape == Shape{2, 15});
  REQUIRE(file.read_f32("a.f32") == values);
  REQUIRE(file.read_f32("d.tensor") == values);
  const auto f16 = file.read_f32("b.f16"), bf16 = file.read_f32("c.bf16");
  for (std::size_t i = 0; i < values.size(); ++i) {
    REQUIRE(f16[i] == half_bits_to_float(float_to_half_bits(values[i])));  // exactly the rounded value
    REQUIRE(bf16[i] == bf16_bits_to_float(float_to_bf16_bits(values[i])));
  }
  const auto loaded = file.load(b, "c.bf16", DType::BF16, Shape{30});
  REQUIRE(loaded.dtype() == DType::BF16);
  REQUIRE(loaded.to_host() == bf16);
  REQUIRE_THROWS_WITH(file.load(b, "c.bf16", DType::F32, Shape{31}), Catch::Contains("has shape [30], expected [31]"));
  REQUIRE_THROWS_WITH(file.info("missing"), Catch::Contains("no tensor named \"missing\"") && Catch::Contains("roundtrip.safetensors"));

  // The header is padded to a multiple of 8 so the data buffer is aligned.
  std::ifstream raw(path, std::ios::binary);
  std::string length(8, '\0');
  raw.read(length.data(), 8);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(length[static_cast<std::size_t>(i)])) << (8 * i);
  REQUIRE(n % 8 == 0);
}

TEST_CASE("a file written by the Python safetensors package reads back equal", "[safetensors]") {
  SafetensorsFile file(fs::path(DREAMBOOTH_TEST_DATA_DIR) / "python_written.safetensors");
  const auto expected = [](std::size_t n) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = (static_cast<float>(i) - 7.0f) / 8.0f;
    return v;
  };
  REQUIRE(file.info("weights.f32").shape == Shape{2, 3, 4});
  REQUIRE(file.read_f32("weights.f32") == expected(24));
  REQUIRE(file.info("weights.f16").dtype == io::StDType::F16);
  REQUIRE(file.read_f32("weights.f16") == expected(6));
  REQUIRE(file.info("weights.bf16").dtype == io::StDType::BF16);
  REQUIRE(file.info("weights.bf16").shape == Shape{3, 2});
  REQUIRE(file.read_f32("weights.bf16") == expected(6));
  REQUIRE(file.info("empty").shape == Shape{0, 4});
  REQUIRE(file.read_f32("empty").empty());
  REQUIRE(file.metadata().at("safetensors") == "0.4.5");
}

TEST_CASE("malformed safetensors files are refused with a clear error", "[safetensors][malformed]") {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    const char* name;
    fs::path path;
    const char* message;
  };
  const auto file_of_bytes = [](const std::string& name, const std::string& bytes) {
    const auto path = scratch_dir() / name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  };
  const Case cases[] = {
      {"empty file", file_of_bytes("empty.st", ""), "only 0 bytes"},
      {"shorter than the length field", file_of_bytes("short.st", std::string("\x08\x00\x00", 3)), "only 3 bytes"},
      {"header length past the end of the file", write_raw("trunc-header.st", "{" + ok_entry + "}", 8, 4096), "runs past the end"},
      {"header length over 100,000,000", write_raw("huge-header.st", "{}", 0, 100'000'001), "exceeds the format's limit"},
      {"header length of 2^64 - 1", write_raw("max-header.st", "{}", 0, ~0ull), "exceeds the format's limit"},
      {"header is not JSON", write_raw("bad-json.st", "{\"t\": {\"dtype\": ", 0), "not valid JSON"},
      {"header is a JSON array", write_raw("array.st", "[1, 2]", 0), "not a JSON object"},
      {"header JSON error names its position", write_raw("json-position.st", R"({"a":1,})", 0), "at byte 15 of the file (byte 7 of the header)"},
      {"header is not UTF-8", write_raw("latin1.st", "{\"t\xe9\":{}}", 0), "not valid JSON"},
      {"unknown dtype", write_raw("dtype.st", R"({"t":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype \"F33\""},
      {"missing dtype", write_raw("no-dtype.st", R"({"t":{"shape":[2],"data_offsets":[0,8]}})", 8), "\"dtype\""},
      {"negative shape", write_raw("neg-shape.st", R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "not a non-negative integer"},
      {"shape overflow", write_raw("overflow.st", R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8), "overflows"},
      {"byte span does not match the shape", write_raw("span.st", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12"},
      {"offsets end before they begin", write_raw("reversed.st", R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", 8),
       "end before they begin"},
      {"offsets past the end of the data (truncated data)", write_raw("past-end.st", "{" + ok_entry + "}", 4), "past the data buffer"},
      {"overlapping tensors",
       write_raw("overlap.st", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "overlaps"},
      {"gap between tensors",
       write_raw("gap.st", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
       "leaving a gap"},
      {"data not starting at 0", write_raw("start.st", R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "leaving a gap"},
      {"trailing bytes not covered by any tensor", write_raw("trailing.st", "{" + ok_entry + "}", 16), "cover 8"},
      {"duplicate tensor names", write_raw("dup.st", "{" + ok_entry + "," + ok_entry + "}", 8), "appears twice"},
      {"data_offsets with three entries", write_raw("offsets3.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", 8), "two integers"},
      {"data offset that is a float", write_raw("offset-float.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}})", 8),
       "not a non-negative integer"},
      {"metadata value that is not a string", write_raw("meta.st", R"({"__metadata__":{"epoch":3}})", 0), "not a string"},
      {"entry that is not an object", write_raw("entry.st", R"({"t":[1,2,3]})", 0), "not an object"},
      {"rank above 8", write_raw("rank.st", R"({"t":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 1), "rank 9"},
  };
  for (const auto& c : cases) {
    INFO("case: " << c.name);
    try {
      SafetensorsFile file(c.path);
      FAIL("accepted a malformed file: " << c.name);
    } catch (const Error& e) {
      const std::string message = e.what();
      INFO("message: " << message);
      REQUIRE(message.find(c.message) != std::string::npos);
      REQUIRE(message.find(c.path.filename().string()) != std::string::npos);  // the error names the file
    }
  }
  REQUIRE(std::size(cases) >= 15);
}

TEST_CASE("a missing file and a failed write are reported, and leave nothing behind", "[safetensors]") {
  REQUIRE_THROWS_WITH(SafetensorsFile(scratch_dir() / "does-not-exist.safetensors"),
                      Catch::Contains("does-not-exist.safetensors") && Catch::Contains("cannot open"));
  SafetensorsWriter writer;
  const std::vector<float> v = {1, 2};
  writer.add("x", {2}, v);
  REQUIRE_THROWS_WITH(writer.add("x", {2}, v), Catch::Contains("added twice"));
  REQUIRE_THROWS_WITH(writer.add("y", {3}, v), Catch::Contains("2 values for shape [3]"));
  const auto target = scratch_dir() / "no-such-dir" / "out.safetensors";
  REQUIRE_THROWS_WITH(writer.write(target), Catch::Contains("cannot create"));
  REQUIRE_FALSE(fs::exists(target.parent_path()));

  // Overwriting an existing file replaces it whole (rename), never leaving a mix.
  const auto path = scratch_dir() / "replace.safetensors";
  writer.write(path);
  SafetensorsWriter bigger;
  const std::vector<float> w(100, 3.0f);
  bigger.add("z", {100}, w);
  bigger.write(path);
  SafetensorsFile file(path);
  REQUIRE(file.read_f32("z") == w);
  REQUIRE_FALSE(file.contains("x"));
}
