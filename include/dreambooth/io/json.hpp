// Reading a JSON file (model and scheduler configs): errors name the file.
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "dreambooth/core/error.hpp"

namespace dreambooth::io {

// `what` names the kind of file in errors ("UNet config", ...).
inline nlohmann::json read_json(const std::filesystem::path& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) fail(what, " ", path.string(), ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(what, " ", path.string(), ": not valid JSON: ", e.what());
  }
}

}  // namespace dreambooth::io
