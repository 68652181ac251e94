// Reading JSON files (model and scheduler configs): errors name the file, and for a parse error the position (line,
// column and byte offset). ConfigFields reads a config object's keys with their types checked, errors naming the file
// and the key.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "dreambooth/core/error.hpp"

namespace dreambooth::io {

namespace json_detail {
// "line L, column C (byte B)" of a 0-based byte offset into `text`.
inline std::string position(const std::string& text, std::size_t byte) {
  byte = std::min(byte, text.size());
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < byte; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(column) + " (byte " + std::to_string(byte) + ")";
}

// nlohmann's message without its "[json.exception.parse_error.101] parse error at line 1, column 2: " prefix.
inline std::string reason(const std::string& what) {
  auto r = what;
  if (const auto bracket = r.find("] "); r.rfind("[json.exception.", 0) == 0 && bracket != std::string::npos) r.erase(0, bracket + 2);
  if (const auto colon = r.find(": "); r.rfind("parse error", 0) == 0 && colon != std::string::npos) r.erase(0, colon + 2);
  return r;
}

// A short rendering of a value for messages.
inline std::string shown(const nlohmann::json& v) {
  auto s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}
}  // namespace json_detail

// JSON text; `what` ("UNet config", ...) and `origin` (the file) name it in errors, parse errors with their position.
inline nlohmann::json parse_json(const std::string& text, const std::string& what, const std::string& origin) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // nlohmann's byte is 1-based and points one past the offending character
    const auto byte = e.byte > 0 ? static_cast<std::size_t>(e.byte - 1) : 0;
    fail(what, " ", origin, ": not valid JSON at ", json_detail::position(text, byte), ": ", json_detail::reason(e.what()));
  } catch (const nlohmann::json::exception& e) {  // a number out of range, ...
    fail(what, " ", origin, ": not valid JSON: ", json_detail::reason(e.what()));
  }
}

// `what` names the kind of file in errors ("UNet config", ...).
inline nlohmann::json read_json(const std::filesystem::path& path, const std::string& what) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(what, " ", path.string(), ": is a directory, not a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(what, " ", path.string(), ": cannot open");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) fail(what, " ", path.string(), ": cannot read");
  return parse_json(text, what, path.string());
}

// The keys of one config object (a diffusers / transformers config.json), read with their types checked: a key that is
// absent or null leaves the default; anything else of the wrong type is an error naming `what`, `origin` and the key.
class ConfigFields {
 public:
  ConfigFields(const nlohmann::json& j, std::string what, std::string origin) : j_(j), what_(std::move(what)), origin_(std::move(origin)) {
    if (!j_.is_object()) fail(what_, " ", origin_, ": must be a JSON object of keys, not ", type_name(j_), " ", json_detail::shown(j_));
  }

  const std::string& what() const { return what_; }
  const std::string& origin() const { return origin_; }
  const nlohmann::json& json() const { return j_; }

  // An error about the whole file.
  template <class... Parts>
  [[noreturn]] void bad(Parts&&... parts) const {
    fail(what_, " ", origin_, ": ", std::forward<Parts>(parts)...);
  }
  // An error about one key.
  template <class... Parts>
  [[noreturn]] void bad_key(const std::string& key, Parts&&... parts) const {
    fail(what_, " ", origin_, ": key \"", key, "\" ", std::forward<Parts>(parts)...);
  }

  // Present and not null.
  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const nlohmann::json& at(const char* key) const { return j_.at(key); }

  template <class T>
  void get(const char* key, T& out) const {
    if (has(key)) out = convert<T>(key, j_.at(key));
  }
  template <class T>
  void get(const char* key, std::optional<T>& out) const {
    if (has(key)) out = convert<T>(key, j_.at(key));
  }

  template <class T>
  T convert(const std::string& key, const nlohmann::json& v) const {
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) wrong(key, "true or false", v);
      return v.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      if (v.is_number_unsigned()) {
        const auto u = v.get<std::uint64_t>();
        if (u > static_cast<std::uint64_t>(std::numeric_limits<T>::max())) bad_key(key, "= ", u, " is out of range");
        return static_cast<T>(u);
      }
      if (v.is_number_integer()) {
        const auto i = v.get<std::int64_t>();
        if (i < static_cast<std::int64_t>(std::numeric_limits<T>::min()) || i > static_cast<std::int64_t>(std::numeric_limits<T>::max()))
          bad_key(key, "= ", i, " is out of range");
        return static_cast<T>(i);
      }
      if (v.is_number_float()) {  // 4.0 is 4
        const auto d = v.get<double>();
        if (std::isfinite(d) && d == std::floor(d) && d >= static_cast<double>(std::numeric_limits<T>::min()) &&
            d <= static_cast<double>(std::numeric_limits<T>::max()))
          return static_cast<T>(d);
      }
      wrong(key, "an integer", v);
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!v.is_number()) wrong(key, "a number", v);
      const auto d = v.get<double>();
      if (!std::isfinite(d)) bad_key(key, "= ", d, " is not a finite number");
      return static_cast<T>(d);
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!v.is_string()) wrong(key, "a string", v);
      return v.get<std::string>();
    } else {  // std::vector<E>
      using E = typename T::value_type;
      if (!v.is_array()) wrong(key, std::is_same_v<E, std::string> ? "a list of strings" : "a list of numbers", v);
      T out;
      for (std::size_t i = 0; i < v.size(); ++i) out.push_back(convert<E>(key + "[" + std::to_string(i) + "]", v[i]));
      return out;
    }
  }

 private:
  static const char* type_name(const nlohmann::json& v) {
    if (v.is_array()) return "a list";
    if (v.is_string()) return "a string";
    if (v.is_boolean()) return "a boolean";
    if (v.is_number()) return "a number";
    if (v.is_null()) return "null";
    return "an object";
  }
  [[noreturn]] void wrong(const std::string& key, const char* expected, const nlohmann::json& v) const {
    bad_key(key, "must be ", expected, ", not ", type_name(v), " ", json_detail::shown(v));
  }

  const nlohmann::json& j_;
  std::string what_, origin_;
};

}  // namespace dreambooth::io
