// MetricsLog: output_dir/metrics.jsonl, one JSON object per optimizer step ({"step": N, "loss": ..., ...}).
// A resumed run continues the file: lines of steps after the resumed checkpoint (written by the run that was
// interrupted, and about to be trained again) are dropped first, so every step appears once. Every write is checked:
// a full disk stops the run naming the file.
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/atomic_file.hpp"

namespace dreambooth::train {

class MetricsLog {
 public:
  // Opens `path` for a run that starts after step `resumed_step` (0: a fresh run, which starts the file anew).
  MetricsLog(std::filesystem::path path, long resumed_step) : path_(std::move(path)) {
    keep_steps_up_to(resumed_step);
    out_.open(path_, std::ios::app | std::ios::binary);
    if (!out_) fail("metrics log ", path_.string(), ": cannot open for writing");
  }

  void write(const nlohmann::json& line) {
    out_ << line.dump() << '\n' << std::flush;
    if (!out_) fail("metrics log ", path_.string(), ": write failed (is the disk full?)");
  }

  const std::filesystem::path& path() const { return path_; }

 private:
  // Rewrites the file (atomically) without the lines of steps after `step`, and without a torn last line.
  void keep_steps_up_to(long step) {
    if (!std::filesystem::exists(path_)) return;
    std::ifstream in(path_, std::ios::binary);
    std::string line, kept;
    bool dropped = false;
    while (std::getline(in, line)) {
      bool keep = false;
      if (step > 0 && !in.eof()) {  // a line without its newline was torn by a kill
        const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        keep = j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<long>() <= step;
      }
      if (keep)
        kept += line + '\n';
      else
        dropped = true;
    }
    if (dropped) io::write_file_atomically(path_, kept, "metrics log");
  }

  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace dreambooth::train
