// The CLIP tokenizer against transformers' CLIPTokenizer (tests/data/clip_tokenizer/prompts.json, made by
// tools/reference/make_clip_tokenizer_fixtures.py with the real CLIP vocabulary), and its error messages.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dreambooth/tokenizer/clip_tokenizer.hpp"
#include "scratch.hpp"

using dreambooth::tokenizer::CLIPTokenizer;
namespace fs = std::filesystem;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "clip_tokenizer";
const CLIPTokenizer& tokenizer() {
  static const CLIPTokenizer t(kData / "vocab.json", kData / "merges.txt");
  return t;
}

// Every case of `cases` (prompt, ids without the trailing padding, the padding's length, token count) against `t`;
// returns how many prompts were truncated.
std::size_t require_reference(const CLIPTokenizer& t, const nlohmann::json& cases) {
  std::size_t truncated = 0, mismatched = 0;
  for (const auto& c : cases) {
    const auto prompt = c.at("prompt").get<std::string>();
    auto expected = c.at("ids").get<std::vector<std::int32_t>>();
    expected.resize(expected.size() + c.at("padding").get<std::size_t>(), t.pad());
    const auto e = t.encode(prompt);
    if (e.ids != expected || e.token_count != c.at("token_count").get<std::size_t>()) {
      if (++mismatched <= 10) {  // the first few in full, then only the count
        INFO("prompt: " << nlohmann::json(prompt).dump());
        CHECK(e.ids == expected);
        CHECK(e.token_count == c.at("token_count").get<std::size_t>());
      }
    }
    truncated += e.truncated();
  }
  INFO(mismatched << " of " << cases.size() << " prompts differ");
  REQUIRE(mismatched == 0);
  return truncated;
}
}  // namespace

TEST_CASE("token ids equal transformers' CLIPTokenizer on every reference prompt", "[tokenizer][reference]") {
  std::ifstream in(kData / "prompts.json");
  const auto fixture = nlohmann::json::parse(in);
  // the cleaning's categories are those of the reference's unicodedata (Unicode 14.0 in Python 3.11)
  const auto unicode = std::to_string(dreambooth::tokenizer::clip_detail::kUnicodeVersion[0]) + "." +
                       std::to_string(dreambooth::tokenizer::clip_detail::kUnicodeVersion[1]) + ".";
  INFO("the fixture was made with Python " << fixture.at("python") << ", unicodedata " << fixture.at("unicodedata"));
  REQUIRE(fixture.at("unicodedata").get<std::string>().rfind(unicode, 0) == 0);
  const auto& cases = fixture.at("cases");
  REQUIRE(cases.size() >= 900);
  const auto truncated = require_reference(tokenizer(), cases);
  REQUIRE(truncated > 0);  // the set includes prompts over 77 tokens
  WARN(cases.size() << " prompts equal, " << truncated << " of them truncated");
}

TEST_CASE("a pad token other than <|endoftext|> is a special token, split out of the text, too", "[tokenizer][reference]") {
  std::ifstream in(kData / "prompts.json");
  const auto fixture = nlohmann::json::parse(in).at("pad_token_cases");
  const CLIPTokenizer bang(kData / "vocab.json", kData / "merges.txt", fixture.at("pad_token").get<std::string>());
  REQUIRE(bang.pad() == 0);
  REQUIRE(fixture.at("cases").size() >= 40);
  require_reference(bang, fixture.at("cases"));
}

TEST_CASE("the tokenizer's known ids and special tokens", "[tokenizer]") {
  const auto& t = tokenizer();
  REQUIRE(t.vocab_size() == 49408);
  REQUIRE(t.bos() == 49406);
  REQUIRE(t.eos() == 49407);
  REQUIRE(t.pad() == 49407);
  REQUIRE(t.tokenize("a photo of sks dog") == std::vector<std::int32_t>{320, 1125, 539, 48136, 1929});
  const auto e = t.encode("");
  REQUIRE(e.ids.size() == 77);
  REQUIRE(e.ids[0] == 49406);
  REQUIRE(e.ids[1] == 49407);
  REQUIRE(e.token_count == 2);
  REQUIRE_FALSE(e.truncated());
}

TEST_CASE("a missing or malformed vocabulary or merges file is named in the error", "[tokenizer][errors]") {
  const auto dir = dreambooth::test::scratch_folder("tokenizer");
  REQUIRE_THROWS_WITH(CLIPTokenizer(dir / "missing.json", kData / "merges.txt"), Catch::Contains("missing.json"));
  REQUIRE_THROWS_WITH(CLIPTokenizer(kData / "vocab.json", dir / "none.txt"), Catch::Contains("none.txt"));
  std::ofstream(dir / "bad.json") << "{\"a\": 1,";
  REQUIRE_THROWS_WITH(CLIPTokenizer(dir / "bad.json", kData / "merges.txt"), Catch::Contains("bad.json") && Catch::Contains("not valid JSON"));
  std::ofstream(dir / "neg.json") << R"({"a</w>": -3})";
  REQUIRE_THROWS_WITH(CLIPTokenizer(dir / "neg.json", kData / "merges.txt"), Catch::Contains("entry \"a</w>\" has id -3"));
  std::ofstream(dir / "nospecial.json") << R"({"a</w>": 0})";
  REQUIRE_THROWS_WITH(CLIPTokenizer(dir / "nospecial.json", kData / "merges.txt"), Catch::Contains("no entry for \"<|startoftext|>\""));
  std::ofstream(dir / "merges.txt") << "#version: 0.2\nt h\nth e extra\n";
  REQUIRE_THROWS_WITH(CLIPTokenizer(kData / "vocab.json", dir / "merges.txt"), Catch::Contains("merges.txt line 3") && Catch::Contains("th e extra"));
  std::ofstream(dir / "empty.txt") << "#version: 0.2\n";
  REQUIRE_THROWS_WITH(CLIPTokenizer(kData / "vocab.json", dir / "empty.txt"), Catch::Contains("holds no merges"));
}
