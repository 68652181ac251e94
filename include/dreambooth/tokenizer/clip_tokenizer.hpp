// The CLIP BPE tokenizer, equal to transformers' (slow) CLIPTokenizer as it runs without ftfy (4.46.3, Python 3.11):
//   0. the special tokens (<|startoftext|>, <|endoftext|> and the pad token, e.g. "!" for SD 2.x) are split out of the
//      raw text first, wherever they stand (transformers' added-tokens trie, leftmost-longest, no whitespace stripped:
//      CLIP's AddedTokens have lstrip = rstrip = False), each becoming its own id; the text between them is tokenized
//      piece by piece by steps 1-3;
//   1. BERT-style cleaning (transformers' BasicTokenizer, strip_accents=False, no punctuation split): drop NUL, U+FFFD
//      and every "other" character (general category C: Cc, Cf, Co, Cs, Cn) except \t \n \r, with categories as in
//      Python 3.11's unicodedata, i.e. Unicode 14.0 (kUnicodeVersion): a code point assigned after it is unassigned
//      there and dropped, too; whitespace (\t \n \r, ' ', Zs) -> ' '; spaces around CJK ideographs; NFC normalisation;
//      split on whitespace (str.isspace); lower-case (full Unicode mapping);
//   2. CLIP's pre-tokenisation, the regex (IGNORECASE, with the `regex` module's simple case folding)
//        <|startoftext|> | <|endoftext|> | 's|'t|'re|'ve|'m|'ll|'d | \p{L}+ | \p{N} | [^\s\p{L}\p{N}]+
//      with real Unicode categories (ICU); case folding only shows in two places once the text is lower-case: U+017F
//      (long s) matches the literals' "s", and U+0345 (which folds to a Greek letter) matches no alternative at all;
//   3. every piece's UTF-8 bytes mapped to printable symbols (GPT-2's bytes_to_unicode), then byte-pair merges by
//      rank from merges.txt, the last symbol carrying "</w>", with a cache; ids from vocab.json;
//   4. encode(): <|startoftext|> + ids + <|endoftext|>, truncated to max_length (77) and padded with the pad token
//      (<|endoftext|> for SD 1.x; special_tokens_map.json may name another, e.g. "!" for SD 2.x). The untruncated
//      token count is reported so that a caller can warn about a truncated prompt.
// Input is UTF-8; an invalid byte sequence is read as U+FFFD, which step 1 drops (transformers never sees one: Python
// strings hold code points, and decoding bytes with errors="replace" gives the same result).
#pragma once

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/text.hpp"

namespace dreambooth::tokenizer {

namespace clip_detail {

// UTF-8 -> code points; invalid sequences become U+FFFD (which cleaning then drops).
inline std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    bool ok = len > 0 && i + static_cast<std::size_t>(len) <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      ok = (cc >> 6) == 2;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (ok &&
        ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)))
      ok = false;
    out.push_back(ok ? cp : U'\ufffd');
    i += ok ? static_cast<std::size_t>(len) : 1;
  }
  return out;
}

using text::append_utf8;

inline std::string encode_utf8(const std::u32string& s) {
  std::string out;
  for (char32_t cp : s) append_utf8(out, cp);
  return out;
}

inline icu::UnicodeString to_icu(const std::u32string& s) {
  return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()), static_cast<int32_t>(s.size()));
}
inline std::u32string from_icu(const icu::UnicodeString& s) {
  std::u32string out(static_cast<std::size_t>(s.countChar32()), U'\0');
  UErrorCode status = U_ZERO_ERROR;
  s.toUTF32(reinterpret_cast<UChar32*>(out.data()), static_cast<int32_t>(out.size()), status);
  return out;
}

inline bool is_letter(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER: return true;
    default: return false;
  }
}
inline bool is_number(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER: return true;
    default: return false;
  }
}
// Python's str.isspace(), which both whitespace splitting and the regex's \s follow.
inline bool is_space(char32_t c) {
  if (c == U' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f) || c == 0x85) return true;
  const auto t = u_charType(static_cast<UChar32>(c));
  return t == U_SPACE_SEPARATOR || t == U_LINE_SEPARATOR || t == U_PARAGRAPH_SEPARATOR;
}
inline bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// The Unicode version of the reference's character database: transformers' cleaning asks Python's unicodedata
// (Unicode 14.0.0 in Python 3.11) for general categories; a character assigned later is "Cn" (unassigned) there.
inline constexpr int kUnicodeVersion[2] = {14, 0};

// General category C (Cc, Cf, Co, Cs, Cn) as of kUnicodeVersion: what BasicTokenizer._clean_text drops.
inline bool is_other(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_PRIVATE_USE_CHAR:
    case U_SURROGATE:
    case U_UNASSIGNED: return true;
    default: break;
  }
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(c), age);
  return age[0] > kUnicodeVersion[0] || (age[0] == kUnicodeVersion[0] && age[1] > kUnicodeVersion[1]);
}

inline std::vector<std::u32string> split_whitespace(const std::u32string& s) {
  std::vector<std::u32string> out;
  std::u32string current;
  for (char32_t c : s) {
    if (is_space(c)) {
      if (!current.empty()) out.push_back(std::move(current));
      current.clear();
    } else {
      current.push_back(c);
    }
  }
  if (!current.empty()) out.push_back(std::move(current));
  return out;
}

// GPT-2's bytes_to_unicode: every byte to a printable code point, as UTF-8.
inline std::array<std::string, 256> byte_symbols() {
  std::array<std::string, 256> table;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    std::string s;
    append_utf8(s, static_cast<char32_t>(printable ? b : 256 + extra++));
    table[static_cast<std::size_t>(b)] = s;
  }
  return table;
}

}  // namespace clip_detail

class CLIPTokenizer {
 public:
  static constexpr const char* kStartOfText = "<|startoftext|>";
  static constexpr const char* kEndOfText = "<|endoftext|>";

  struct Encoding {
    std::vector<std::int32_t> ids;  // max_length ids: bos, tokens, eos, padding
    std::size_t token_count = 0;    // bos + tokens + eos before truncation
    bool truncated() const { return token_count > ids.size(); }
  };

  // vocab.json + merges.txt (+ special_tokens_map.json for the pad token, when present) in `folder`
  // (a pipeline's tokenizer/ folder, or the pipeline folder itself).
  static CLIPTokenizer from_folder(const std::filesystem::path& path, std::size_t max_length = 77) {
    namespace fs = std::filesystem;
    const auto folder = fs::exists(path / "vocab.json") || !fs::exists(path / "tokenizer") ? path : path / "tokenizer";
    std::string pad = kEndOfText;
    const auto special = folder / "special_tokens_map.json";
    if (fs::exists(special)) {
      try {
        std::ifstream in(special);
        const auto j = nlohmann::json::parse(in);
        if (j.contains("pad_token"))
          pad = j["pad_token"].is_string() ? j["pad_token"].get<std::string>() : j["pad_token"].at("content").get<std::string>();
      } catch (const nlohmann::json::exception& e) {
        fail("CLIP tokenizer: ", special.string(), ": ", e.what());
      }
    }
    return CLIPTokenizer(folder / "vocab.json", folder / "merges.txt", pad, max_length);
  }

  CLIPTokenizer(const std::filesystem::path& vocab_path, const std::filesystem::path& merges_path, const std::string& pad_token = kEndOfText,
                std::size_t max_length = 77)
      : max_length_(max_length), byte_symbols_(clip_detail::byte_symbols()) {
    DB_CHECK(max_length >= 2, "CLIP tokenizer: max_length ", max_length, " leaves no room for <|startoftext|> and <|endoftext|>");
    load_vocab(vocab_path);
    load_merges(merges_path);
    bos_ = id_of(kStartOfText, vocab_path);
    eos_ = id_of(kEndOfText, vocab_path);
    pad_ = id_of(pad_token, vocab_path);
    DB_CHECK(!pad_token.empty(), "CLIP tokenizer: the pad token is empty");
    const std::vector<std::pair<std::string, std::int32_t>> specials = {{kStartOfText, bos_}, {kEndOfText, eos_}, {pad_token, pad_}};
    for (const auto& [token, id] : specials) {
      auto text = clip_detail::decode_utf8(token);
      bool known = false;
      for (const auto& special : specials_) known = known || special.text == text;
      if (!known) specials_.push_back({std::move(text), id});
    }
  }

  std::int32_t bos() const { return bos_; }
  std::int32_t eos() const { return eos_; }
  std::int32_t pad() const { return pad_; }
  std::size_t max_length() const { return max_length_; }
  std::size_t vocab_size() const { return vocab_.size(); }

  // The BPE token ids of `text` (UTF-8), without bos / eos, untruncated.
  std::vector<std::int32_t> tokenize(const std::string& text) const {
    std::vector<std::int32_t> ids;
    const auto decoded = clip_detail::decode_utf8(text);
    std::size_t begin = 0;  // start of the text not yet tokenized
    for (std::size_t i = 0; i <= decoded.size(); ++i) {
      const Special* found = nullptr;  // the longest special token at i
      for (const auto& special : specials_)
        if (decoded.compare(i, special.text.size(), special.text) == 0 && (!found || special.text.size() > found->text.size())) found = &special;
      if (!found && i < decoded.size()) continue;
      tokenize_segment(decoded.substr(begin, i - begin), ids);
      if (!found) break;
      ids.push_back(found->id);
      i += found->text.size() - 1;
      begin = i + 1;
    }
    return ids;
  }

  Encoding encode(const std::string& text) const {
    const auto tokens = tokenize(text);
    Encoding e;
    e.token_count = tokens.size() + 2;
    e.ids.reserve(max_length_);
    e.ids.push_back(bos_);
    const std::size_t kept = std::min(tokens.size(), max_length_ - 2);
    e.ids.insert(e.ids.end(), tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(kept));
    e.ids.push_back(eos_);
    e.ids.resize(max_length_, pad_);
    return e;
  }

 private:
  struct Special {
    std::u32string text;
    std::int32_t id;
  };

  // Steps 1-3 on text that holds no special token (though cleaning may still bring one together).
  void tokenize_segment(const std::u32string& text, std::vector<std::int32_t>& ids) const {
    for (const auto& piece : pre_tokenize(clean(text))) {
      std::string symbols;
      for (unsigned char byte : clip_detail::encode_utf8(piece)) symbols += byte_symbols_[byte];
      for (const auto& token : bpe(symbols)) {
        const auto it = vocab_.find(token);
        ids.push_back(it != vocab_.end() ? it->second : eos_);  // unknown -> <|endoftext|>, as transformers
      }
    }
  }

  // BasicTokenizer cleaning; returns the text with single spaces between lower-cased words.
  static std::u32string clean(const std::u32string& text) {
    using namespace clip_detail;
    std::u32string cleaned;
    for (char32_t c : text) {
      if (c == 0 || c == 0xFFFD) continue;
      if (c == U'\t' || c == U'\n' || c == U'\r' || c == U' ') {
        cleaned.push_back(U' ');
      } else if (is_other(c)) {
        continue;
      } else if (u_charType(static_cast<UChar32>(c)) == U_SPACE_SEPARATOR) {
        cleaned.push_back(U' ');
      } else if (is_cjk(c)) {
        cleaned += U' ';
        cleaned += c;
        cleaned += U' ';
      } else {
        cleaned.push_back(c);
      }
    }
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    DB_CHECK(U_SUCCESS(status), "CLIP tokenizer: ICU NFC normaliser unavailable: ", u_errorName(status));
    const auto normalized = from_icu(nfc->normalize(to_icu(cleaned), status));
    DB_CHECK(U_SUCCESS(status), "CLIP tokenizer: NFC normalisation failed: ", u_errorName(status));
    std::u32string out;
    for (const auto& word : split_whitespace(normalized)) {
      auto lower = to_icu(word);
      lower.toLower(icu::Locale::getRoot());  // full case mapping, as Python's str.lower()
      for (const auto& w : split_whitespace(from_icu(lower))) {
        if (!out.empty()) out += U' ';
        out += w;
      }
    }
    return out;
  }

  // CLIP's regex, scanned by hand with ICU categories.
  static std::vector<std::u32string> pre_tokenize(const std::u32string& s) {
    using namespace clip_detail;
    // the regex's literal alternatives, in its order: the special tokens, then the contractions
    static const std::u32string literals[] = {U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
    // IGNORECASE on lower-case text: only U+017F (long s) folds onto a literal's letter (s)
    const auto literal_at = [&s](std::size_t i, const std::u32string& l) {
      if (s.size() - i < l.size()) return false;
      for (std::size_t k = 0; k < l.size(); ++k)
        if (s[i + k] != l[k] && !(l[k] == U's' && s[i + k] == 0x17F)) return false;
      return true;
    };
    // U+0345 folds to a Greek letter, so the negated class [^\s\p{L}\p{N}] refuses it under IGNORECASE; \p{L} too
    const auto is_punct = [](char32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c) && c != 0x345; };
    std::vector<std::u32string> pieces;
    std::size_t i = 0;
    while (i < s.size()) {
      const std::u32string* literal = nullptr;
      for (const auto& l : literals)
        if (literal_at(i, l)) {
          literal = &l;
          break;
        }
      if (literal) {
        pieces.push_back(s.substr(i, literal->size()));
        i += literal->size();
        continue;
      }
      const char32_t c = s[i];
      std::size_t j = i + 1;
      if (is_letter(c)) {
        while (j < s.size() && is_letter(s[j])) ++j;
      } else if (is_number(c)) {
        // a single number character
      } else if (is_punct(c)) {
        while (j < s.size() && is_punct(s[j])) ++j;
      } else {  // whitespace, U+0345: no alternative matches, the regex moves on
        ++i;
        continue;
      }
      pieces.push_back(s.substr(i, j - i));
      i = j;
    }
    return pieces;
  }

  // Byte-pair merges on a piece of byte symbols (UTF-8 strings), lowest rank first.
  std::vector<std::string> bpe(const std::string& symbols) const {
    if (symbols == kStartOfText || symbols == kEndOfText) return {symbols};
    {
      std::lock_guard lock(cache_->mutex);
      if (const auto it = cache_->words.find(symbols); it != cache_->words.end()) return it->second;
    }
    std::vector<std::string> word;
    for (std::size_t i = 0; i < symbols.size();) {
      const auto c = static_cast<unsigned char>(symbols[i]);
      const std::size_t len = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
      word.push_back(symbols.substr(i, len));
      i += len;
    }
    if (word.empty()) return {};
    word.back() += "</w>";
    while (word.size() > 1) {
      std::size_t best = 0;
      std::int64_t best_rank = -1;
      for (std::size_t k = 0; k + 1 < word.size(); ++k) {
        const auto it = ranks_.find(word[k] + ' ' + word[k + 1]);
        if (it != ranks_.end() && (best_rank < 0 || it->second < best_rank)) best_rank = it->second, best = k;
      }
      if (best_rank < 0) break;
      const std::string first = word[best], second = word[best + 1];
      std::vector<std::string> merged;
      for (std::size_t k = 0; k < word.size();) {
        if (k + 1 < word.size() && word[k] == first && word[k + 1] == second) {
          merged.push_back(first + second);
          k += 2;
        } else {
          merged.push_back(word[k++]);
        }
      }
      word = std::move(merged);
    }
    std::lock_guard lock(cache_->mutex);
    if (cache_->words.size() >= kCacheLimit) cache_->words.clear();  // bounded: arbitrary text makes new pieces forever
    cache_->words.emplace(symbols, word);
    return word;
  }

  void load_vocab(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) fail("CLIP tokenizer: cannot open vocabulary ", path.string());
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("CLIP tokenizer: vocabulary ", path.string(), " is not valid JSON: ", e.what());
    }
    if (!j.is_object() || j.empty()) fail("CLIP tokenizer: vocabulary ", path.string(), " is not a non-empty object of token -> id");
    for (const auto& [token, id] : j.items()) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > INT32_MAX)
        fail("CLIP tokenizer: vocabulary ", path.string(), ": entry \"", token, "\" has id ", id.dump(), ", not a non-negative integer");
      vocab_.emplace(token, static_cast<std::int32_t>(id.get<std::int64_t>()));
    }
  }

  void load_merges(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) fail("CLIP tokenizer: cannot open merges ", path.string());
    std::string line;
    std::size_t number = 0;
    std::int64_t rank = 0;
    while (std::getline(in, line)) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (number == 1 && line.rfind("#version", 0) == 0) continue;
      if (line.empty()) continue;
      const auto space = line.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == line.size() || line.find(' ', space + 1) != std::string::npos)
        fail("CLIP tokenizer: merges ", path.string(), " line ", number, ": \"", line, "\" is not two symbols separated by one space");
      ranks_.emplace(line, rank++);
    }
    if (ranks_.empty()) fail("CLIP tokenizer: merges ", path.string(), " holds no merges");
  }

  std::int32_t id_of(const std::string& token, const std::filesystem::path& vocab_path) const {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) fail("CLIP tokenizer: vocabulary ", vocab_path.string(), " has no entry for \"", token, "\"");
    return it->second;
  }

  static constexpr std::size_t kCacheLimit = 1 << 16;
  std::size_t max_length_;
  std::array<std::string, 256> byte_symbols_;
  std::unordered_map<std::string, std::int32_t> vocab_;
  std::unordered_map<std::string, std::int64_t> ranks_;
  std::int32_t bos_ = 0, eos_ = 0, pad_ = 0;
  // the special tokens, split out of the text before anything else
  std::vector<Special> specials_;
  struct Cache {  // BPE results by piece, shared by the threads that tokenize (data-loading workers)
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::string>> words;
  };
  std::unique_ptr<Cache> cache_ = std::make_unique<Cache>();
};

}  // namespace dreambooth::tokenizer
