// Fuzz target: a training configuration as `dreambooth train` reads it: a YAML file plus key=value command-line
// overrides, through TrainingConfig::load (Hydra's override order, interpolation, the key tables, validation). The input
// is the file's bytes, then optionally a NUL byte and the overrides, one a line. (fuzz_nemo_yaml covers YAML given as
// text and NeMo's model-config translation.) A configuration that loads must name a regularization scheduler that
// exists; any other exception than dreambooth::Error is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "dreambooth/schedulers/schedulers.hpp"
#include "dreambooth/train/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dreambooth;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const auto nul = input.find('\0');
  const std::string yaml = input.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string::npos) {
    std::string rest = input.substr(nul + 1);
    for (std::size_t start = 0; start <= rest.size();) {
      auto end = rest.find('\n', start);
      if (end == std::string::npos) end = rest.size();
      if (end > start) overrides.push_back(rest.substr(start, end - start));
      start = end + 1;
    }
  }
  static const auto file = std::filesystem::temp_directory_path() / ("dreambooth-fuzz-train-" + std::to_string(::getpid()) + ".yaml");
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << yaml;
  }
  try {
    const auto c = train::TrainingConfig::load(file, overrides);
    (void)c.compute_precision();
    (void)c.writes_nemo_on_train_end();
    if (!schedulers::is_scheduler_name(c.reg_scheduler)) std::abort();
    (void)schedulers::make_scheduler(c.reg_scheduler, {});
    (void)c.schedule.rate(0, c.lr);
  } catch (const Error&) {
  }
  return 0;
}
