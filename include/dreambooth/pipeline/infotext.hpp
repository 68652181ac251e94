// A1111's generation parameters ("infotext"): the text stable-diffusion-webui writes into a PNG's "parameters" chunk
// and reads back in its PNG Info tab, written and parsed as the web UI does it.
//
//   <prompt>
//   Negative prompt: <negative prompt>            (only when there is one)
//   Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512, Model hash: 0123456789, Model: name
//
// Writing: the fields in A1111's order, "Key: value" joined by ", "; a value holding ',', ':' or a newline is written as
// a JSON string (A1111's quote()). Reading: the last line holds the fields when A1111's field pattern matches it at least
// three times, else it belongs to the prompt; the lines before it are the prompt up to one starting "Negative prompt:";
// quoted values are JSON-decoded and "WxH" values become Key-1 / Key-2, as in A1111's parse_generation_parameters().
// The defaults A1111 then fills in for fields a text lacks (Clip skip 1, RNG GPU, ...) are its UI's, not parsed here.
//
// The project's samplers under A1111's names, and a model file's hash as A1111 computes it (the first 10 hex digits of
// the file's SHA-256; A1111 loads single .safetensors / .ckpt files only, so folders and .nemo archives get no hash).
#pragma once

#include <charconv>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/sha256.hpp"

namespace dreambooth::pipeline {

// A1111's quote(): a JSON string when the value holds a comma, a colon or a newline, else the value itself.
inline std::string infotext_quote(const std::string& value) {
  if (value.find_first_of(",:\n") == std::string::npos) return value;
  return nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// A1111's unquote(): a value in double quotes is decoded as JSON, or kept as it is when it is not valid JSON.
inline std::string infotext_unquote(const std::string& value) {
  if (value.size() < 2 || value.front() != '"' || value.back() != '"') return value;
  const auto parsed = nlohmann::json::parse(value, nullptr, false);
  return parsed.is_string() ? parsed.get<std::string>() : value;
}

struct Infotext {
  std::string prompt, negative_prompt;
  std::vector<std::pair<std::string, std::string>> fields;  // in order; values unquoted

  // The value of `key` (the last one, as A1111's dictionary keeps), or nullopt.
  std::optional<std::string> value(const std::string& key) const {
    for (auto it = fields.rbegin(); it != fields.rend(); ++it)
      if (it->first == key) return it->second;
    return std::nullopt;
  }

  // As A1111's create_infotext() writes it.
  std::string text() const {
    std::string out = prompt;
    if (!negative_prompt.empty()) out += "\nNegative prompt: " + negative_prompt;
    std::string line;
    for (const auto& [key, v] : fields) {
      if (!line.empty()) line += ", ";
      line += key == v ? key : key + ": " + infotext_quote(v);
    }
    out += "\n" + line;
    const auto first = out.find_first_not_of(" \t\r\n"), last = out.find_last_not_of(" \t\r\n");
    return first == std::string::npos ? std::string() : out.substr(first, last - first + 1);
  }

  // As A1111's parse_generation_parameters() reads it (without the UI defaults it adds).
  static Infotext parse(const std::string& text) {
    // A1111's field pattern: a key of word characters, spaces, '-' and '/', a colon, then a JSON string or anything up to a comma
    static const std::regex kField(R"__(\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$))__");
    static const std::regex kSize(R"(^(\d+)x(\d+)$)");
    const auto strip = [](const std::string& s) {
      const auto first = s.find_first_not_of(" \t\r\n\f\v"), last = s.find_last_not_of(" \t\r\n\f\v");
      return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
    };
    std::vector<std::string> lines;
    const auto body = strip(text);
    for (std::size_t start = 0;;) {
      const auto end = body.find('\n', start);
      lines.push_back(body.substr(start, end == std::string::npos ? std::string::npos : end - start));
      if (end == std::string::npos) break;
      start = end + 1;
    }
    std::string last = lines.back();
    lines.pop_back();
    const auto matches = [&](const std::string& s) {
      return std::distance(std::sregex_iterator(s.begin(), s.end(), kField), std::sregex_iterator());
    };
    if (matches(last) < 3) {
      lines.push_back(last);
      last.clear();
    }
    Infotext out;
    bool negative = false;
    for (auto line : lines) {
      line = strip(line);
      if (line.rfind("Negative prompt:", 0) == 0) {
        negative = true;
        line = strip(line.substr(16));
      }
      auto& target = negative ? out.negative_prompt : out.prompt;
      target += (target.empty() ? "" : "\n") + line;
    }
    for (std::sregex_iterator it(last.begin(), last.end(), kField), end; it != end; ++it) {
      const std::string key = (*it)[1];
      std::string v = (*it)[2];
      if (!v.empty() && v.front() == '"' && v.back() == '"') v = infotext_unquote(v);
      std::smatch size;
      if (std::regex_match(v, size, kSize)) {
        out.fields.emplace_back(key + "-1", size[1]);
        out.fields.emplace_back(key + "-2", size[2]);
      } else {
        out.fields.emplace_back(key, v);
      }
    }
    return out;
  }
};

// A number as Python's str() writes it for an int, or the shortest text that reads back as the same double.
inline std::string infotext_number(double v) {
  char buffer[32];
  const auto r = std::to_chars(buffer, buffer + sizeof buffer, v);
  return std::string(buffer, r.ptr);
}

// The project's schedulers under A1111's names: the sampler, and for A1111's k-diffusion samplers the schedule type
// nearest to diffusers' timestep spacing ("Uniform"; left out, A1111 would pick Karras sigmas for DPM++ 2M).
struct A1111Sampler {
  std::string sampler;
  std::optional<std::string> schedule_type;
};
inline A1111Sampler a1111_sampler(const std::string& scheduler) {
  if (scheduler == "ddim" || scheduler == "DDIMScheduler") return {"DDIM", std::nullopt};
  if (scheduler == "pndm" || scheduler == "plms" || scheduler == "PNDMScheduler") return {"PLMS", std::nullopt};
  if (scheduler == "euler" || scheduler == "EulerDiscreteScheduler") return {"Euler", "Uniform"};
  if (scheduler == "euler_a" || scheduler == "EulerAncestralDiscreteScheduler") return {"Euler a", "Uniform"};
  if (scheduler == "dpm++2m" || scheduler == "DPMSolverMultistepScheduler") return {"DPM++ 2M", "Uniform"};
  fail("infotext: no A1111 name for the scheduler \"", scheduler, "\"");
}

// A1111's short model hash: the first 10 hex digits of the SHA-256 of a .safetensors / .ckpt file; nullopt for what
// A1111 cannot load (a diffusers folder, a .nemo).
inline std::optional<std::string> a1111_model_hash(const std::filesystem::path& model) {
  const auto extension = model.extension().string();
  if (!std::filesystem::is_regular_file(model) || (extension != ".safetensors" && extension != ".ckpt")) return std::nullopt;
  return io::sha256_of_file(model).substr(0, 10);
}

// What one generated image's PNG carries: A1111's fields for these settings. `image` / `images` number the image in
// its batch (A1111's "Batch size" / "Batch pos", written when the batch holds more than one).
struct InfotextSettings {
  std::string prompt, negative_prompt;
  int steps = 0;
  std::string scheduler;  // the project's name or diffusers' class name
  double guidance_scale = 0, eta = 0;
  std::uint64_t seed = 0;
  std::int64_t width = 0, height = 0;
  std::filesystem::path model;
  std::optional<std::string> model_hash;
  int image = 0, images = 1;
};
inline Infotext generation_infotext(const InfotextSettings& s) {
  const auto sampler = a1111_sampler(s.scheduler);
  Infotext t{s.prompt, s.negative_prompt, {}};
  t.fields.emplace_back("Steps", std::to_string(s.steps));
  t.fields.emplace_back("Sampler", sampler.sampler);
  if (sampler.schedule_type) t.fields.emplace_back("Schedule type", *sampler.schedule_type);
  t.fields.emplace_back("CFG scale", infotext_number(s.guidance_scale));
  t.fields.emplace_back("Seed", std::to_string(s.seed));
  t.fields.emplace_back("Size", std::to_string(s.width) + "x" + std::to_string(s.height));
  if (s.model_hash) t.fields.emplace_back("Model hash", *s.model_hash);
  if (!s.model.empty()) {
    const auto path = s.model.has_filename() ? s.model : s.model.parent_path();                        // "folder/" names the folder
    const auto name = (std::filesystem::is_directory(path) ? path.filename() : path.stem()).string();  // A1111: the file's stem
    if (!name.empty()) t.fields.emplace_back("Model", name);
  }
  if (sampler.sampler == "DDIM" && s.eta != 0) t.fields.emplace_back("Eta DDIM", infotext_number(s.eta));
  if (s.images > 1) {
    t.fields.emplace_back("Batch size", std::to_string(s.images));
    t.fields.emplace_back("Batch pos", std::to_string(s.image));
  }
  return t;
}

}  // namespace dreambooth::pipeline
