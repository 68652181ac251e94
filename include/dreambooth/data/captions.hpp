// Per-image captions, as kohya's sd-scripts read and vary them (library/train_util.py):
//   a caption file beside each image (`<image stem><caption_extension>`, e.g. photo-01.txt for photo-01.png) holds its
//   caption; an image without one takes its folder's prompt (the instance or the class prompt);
//   each time a sample is drawn (process_caption): with probability caption_dropout_rate the caption becomes "" (the
//   unconditional prompt); otherwise, when shuffle_caption or caption_tag_dropout_rate is set, the caption is split at
//   caption_separator into stripped tags, the first keep_tokens stay in front, the rest are shuffled (shuffle_caption)
//   and each dropped with probability caption_tag_dropout_rate, and the tags are joined with ", ".
// Draws come from the counter-based RNG keyed by the run's seed and the sample (CaptionDraws), so a resumed run varies the
// captions exactly as an uninterrupted one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/rng.hpp"

namespace dreambooth::data {

struct CaptionConfig {
  std::string extension;        // kohya's caption_extension ("" : no caption files)
  double dropout_rate = 0;      // caption_dropout_rate
  bool shuffle = false;         // shuffle_caption
  long keep_tokens = 0;         // keep_tokens: leading tags that stay in place
  std::string separator = ",";  // caption_separator
  double tag_dropout_rate = 0;  // caption_tag_dropout_rate
  // Whether captions vary at all or come from files: otherwise every sample takes its folder's prompt unchanged.
  bool active() const { return !extension.empty() || dropout_rate > 0 || shuffle || tag_dropout_rate > 0; }
};

// What str.strip() removes (the ASCII whitespace).
inline constexpr const char* kCaptionSpace = " \t\r\n\v\f";

// The uniform draws of one sample's caption: draw j of sample `sample` from (seed, stream).
struct CaptionDraws {
  std::uint64_t seed = 0, stream = 0, sample = 0;
  std::uint64_t next = 0;
  float uniform() { return rng::uniform(seed, stream, (sample << 20) + next++); }
};

// The caption of `image`: the first line of its caption file (UTF-8, a byte-order mark skipped), whitespace stripped, as
// kohya reads it; `fallback` without a file. An empty caption file is refused, naming it (kohya asserts the same).
inline std::string read_caption(const std::filesystem::path& image, const std::string& extension, const std::string& fallback) {
  if (extension.empty()) return fallback;
  auto file = image;
  file.replace_extension(extension);
  if (!std::filesystem::exists(file)) return fallback;
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("caption file ", file.string(), " cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  std::string caption = text.str();
  if (caption.size() >= 3 && caption.compare(0, 3, "\xEF\xBB\xBF") == 0) caption.erase(0, 3);  // a UTF-8 byte-order mark
  if (caption.empty()) fail("caption file ", file.string(), " is empty (remove it to use the folder's prompt)");
  caption = caption.substr(0, caption.find('\n'));  // the first line
  const auto first = caption.find_first_not_of(kCaptionSpace);
  if (first == std::string::npos) return "";
  return caption.substr(first, caption.find_last_not_of(kCaptionSpace) - first + 1);
}

// kohya's process_caption: dropout, then kept / shuffled / dropped tags (see the top of this file).
inline std::string process_caption(const std::string& caption, const CaptionConfig& c, CaptionDraws& draws) {
  if (c.dropout_rate > 0 && draws.uniform() < static_cast<float>(c.dropout_rate)) return "";
  if (!c.shuffle && c.tag_dropout_rate <= 0) return caption;
  const auto strip = [](const std::string& s) {
    const auto a = s.find_first_not_of(kCaptionSpace);
    if (a == std::string::npos) return std::string();
    return s.substr(a, s.find_last_not_of(kCaptionSpace) - a + 1);
  };
  std::vector<std::string> tags;
  const auto stripped = strip(caption);
  for (std::size_t start = 0;;) {
    const auto end = c.separator.empty() ? std::string::npos : stripped.find(c.separator, start);
    tags.push_back(strip(stripped.substr(start, end == std::string::npos ? std::string::npos : end - start)));
    if (end == std::string::npos) break;
    start = end + c.separator.size();
  }
  const auto keep = static_cast<std::size_t>(std::max(0L, std::min<long>(c.keep_tokens, static_cast<long>(tags.size()))));
  std::vector<std::string> flexible(tags.begin() + static_cast<std::ptrdiff_t>(keep), tags.end());
  if (c.shuffle)  // Fisher-Yates, as random.shuffle walks it (from the end)
    for (std::size_t i = flexible.size(); i > 1; --i) {
      const auto j = static_cast<std::size_t>(draws.uniform() * static_cast<float>(i)) % i;
      std::swap(flexible[i - 1], flexible[j]);
    }
  std::string out;
  const auto add = [&](const std::string& tag) { out += (out.empty() ? "" : ", ") + tag; };
  for (std::size_t i = 0; i < keep; ++i) add(tags[i]);
  for (const auto& tag : flexible)
    if (c.tag_dropout_rate <= 0 || draws.uniform() >= static_cast<float>(c.tag_dropout_rate)) add(tag);
  return out;
}

// Every image's caption, read once before training (an unreadable caption file stops the run, naming it).
class Captions {
 public:
  Captions() = default;
  Captions(const std::vector<std::filesystem::path>& images, const std::string& extension, const std::string& fallback) {
    add(images, extension, fallback);
  }
  // Reads the captions of `images` (`fallback` for those without a file); returns how many had a file.
  std::size_t add(const std::vector<std::filesystem::path>& images, const std::string& extension, const std::string& fallback) {
    std::size_t files = 0;
    for (const auto& image : images) {
      captions_[image] = read_caption(image, extension, fallback);
      if (!extension.empty() && has_file(image, extension)) ++files;
    }
    from_files_ += files;
    return files;
  }
  const std::string& at(const std::filesystem::path& image) const {
    const auto it = captions_.find(image);
    if (it == captions_.end()) fail("captions: no caption for ", image.string());
    return it->second;
  }
  std::size_t from_files() const { return from_files_; }
  std::size_t size() const { return captions_.size(); }

 private:
  static bool has_file(std::filesystem::path image, const std::string& extension) {
    image.replace_extension(extension);
    return std::filesystem::exists(image);
  }
  std::map<std::filesystem::path, std::string> captions_;
  std::size_t from_files_ = 0;
};

}  // namespace dreambooth::data
