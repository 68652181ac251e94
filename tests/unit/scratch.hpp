// A scratch folder for a test's files: <temp>/dreambooth-<what>-<pid>, created if missing (one per test program and
// process, so that parallel test programs never share one).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace dreambooth::test {

inline std::filesystem::path scratch_folder(const std::string& what) {
  const auto dir = std::filesystem::temp_directory_path() / ("dreambooth-" + what + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace dreambooth::test
