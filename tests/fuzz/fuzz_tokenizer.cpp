// Fuzz target: the CLIP tokenizer on arbitrary bytes (invalid UTF-8 included, read as U+FFFD and dropped), with the
// real vocabulary from tests/data/clip_tokenizer. Beyond "no crash": tokenizing never throws, and
//   - encode() gives max_length ids: <|startoftext|>, the tokens (truncated), <|endoftext|>, then pad ids; every id is
//     in the vocabulary; token_count is the untruncated tokens + 2; a second encode() (from the BPE cache) is equal;
//   - a special token typed in the text splits it: tokenize(a + "<|endoftext|>" + b) is tokenize(a), <|endoftext|>,
//     tokenize(b), wherever the input is cut in two (even inside a UTF-8 sequence).
// Inputs over 4 KiB are skipped: a prompt is a line of text, and the BPE, like transformers', is quadratic in the
// length of one piece.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "dreambooth/tokenizer/clip_tokenizer.hpp"

namespace {
void require(bool ok) {
  if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using dreambooth::tokenizer::CLIPTokenizer;
  static const CLIPTokenizer tokenizer = CLIPTokenizer::from_folder(DREAMBOOTH_TEST_DATA_DIR "/clip_tokenizer");
  if (size > 4096) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);

  const auto tokens = tokenizer.tokenize(text);  // an exception here is a failure, too
  for (const auto id : tokens) require(id >= 0 && static_cast<std::size_t>(id) < tokenizer.vocab_size());

  const auto e = tokenizer.encode(text);
  const std::size_t n = tokenizer.max_length();
  require(e.ids.size() == n && e.token_count == tokens.size() + 2);
  require(e.ids.front() == tokenizer.bos());
  const std::size_t kept = std::min(tokens.size(), n - 2);
  require(std::equal(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(kept), e.ids.begin() + 1));
  require(e.ids[kept + 1] == tokenizer.eos());
  for (std::size_t i = kept + 2; i < n; ++i) require(e.ids[i] == tokenizer.pad());
  require(e.truncated() == (tokens.size() > n - 2));
  require(tokenizer.encode(text).ids == e.ids);

  const std::size_t cut = size == 0 ? 0 : data[0] % (size + 1);
  const std::string a = text.substr(0, cut), b = text.substr(cut);
  auto expected = tokenizer.tokenize(a);
  expected.push_back(tokenizer.eos());
  const auto after = tokenizer.tokenize(b);
  expected.insert(expected.end(), after.begin(), after.end());
  require(tokenizer.tokenize(a + CLIPTokenizer::kEndOfText + b) == expected);
  return 0;
}
