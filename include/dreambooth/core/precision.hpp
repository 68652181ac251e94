// Compute precision names, one parser for every program: the CLI's --precision, trainer.precision (with Lightning's
// and NeMo's spellings) and the benchmarks'. Storage stays fp32 in every mode; this is the precision of the GEMMs and
// convolutions (the CUDA backend: all four; the CPU backend: fp32, or bf16 GEMMs through oneDNN).
#pragma once

#include <string>

#include "dreambooth/core/error.hpp"

namespace dreambooth {

// "fp32", "tf32", "bf16" or "fp16" for a name in any accepted spelling (32, 32-true, bf16-mixed, 16, 16-mixed, ...);
// empty for anything else.
inline std::string canonical_precision(const std::string& value) {
  if (value == "32" || value == "32-true" || value == "fp32") return "fp32";
  if (value == "tf32") return "tf32";
  if (value == "bf16" || value == "bf16-mixed") return "bf16";
  if (value == "16" || value == "16-mixed" || value == "fp16") return "fp16";
  return "";
}

// As canonical_precision, refusing an unknown name with `what` (the option or key) named.
inline std::string parse_compute_precision(const std::string& value, const std::string& what) {
  auto precision = canonical_precision(value);
  if (precision.empty()) fail(what, ": \"", value, "\" is not one of fp32, tf32, bf16, fp16");
  return precision;
}

}  // namespace dreambooth
