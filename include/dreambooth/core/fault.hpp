// Deterministic fault injection for the crash and disk-full tests: the environment variable DREAMBOOTH_FAULT names one
// fault, and the process meets it at exactly that place, whatever the machine's speed.
//   DREAMBOOTH_FAULT=kill:<point>:<K>   SIGKILL the K-th time (from 1) the process passes `point`:
//       regularization-image   after a regularization image is published
//       cache-latent           after a latent cache entry is published
//       checkpoint-file        after a file is complete in a checkpoint's temporary folder
//       checkpoint-rename      just before a complete checkpoint folder is renamed to its final name
//       step                   after an optimizer step (its metrics line written)
//   DREAMBOOTH_FAULT=enospc:<file name>[:K]   the K-th (default first) atomic write of a file of that name fails as on a
//       full disk (ENOSPC), after part of it is written
//   DREAMBOOTH_FAULT_RANK=R   in a data-parallel run (mpirun), only the process of rank R meets the fault (the rank as the
//       launcher's environment gives it: OMPI_COMM_WORLD_RANK, PMIX_RANK or PMI_RANK; a process without one is rank 0)
// Unset (the normal case), every check is one comparison.
#pragma once

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace dreambooth::fault {

struct Plan {
  std::string kind;    // "kill", "enospc" or "" (none)
  std::string target;  // the point, or the file name
  long count = 1;      // which pass triggers it (1: the first)
};

inline Plan parse_plan(const char* text) {
  Plan plan;
  if (!text || !*text) return plan;
  std::string s = text;
  const auto first = s.find(':');
  if (first == std::string::npos) return plan;
  plan.kind = s.substr(0, first);
  std::string rest = s.substr(first + 1);
  const auto second = rest.rfind(':');
  if (second != std::string::npos) {
    char* end = nullptr;
    const long k = std::strtol(rest.c_str() + second + 1, &end, 10);
    if (end && *end == '\0' && k >= 1) {
      plan.count = k;
      rest = rest.substr(0, second);
    }
  }
  plan.target = rest;
  if (plan.kind != "kill" && plan.kind != "enospc") plan.kind.clear();
  return plan;
}

// This process's rank in an MPI launch, from the launcher's environment (0 outside one).
inline long launcher_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (const char* v = std::getenv(name)) return std::strtol(v, nullptr, 10);
  return 0;
}

inline const Plan& plan() {
  static const Plan p = [] {
    const char* rank = std::getenv("DREAMBOOTH_FAULT_RANK");
    if (rank && *rank && std::strtol(rank, nullptr, 10) != launcher_rank()) return Plan{};  // another process's fault
    return parse_plan(std::getenv("DREAMBOOTH_FAULT"));
  }();
  return p;
}

// Counts passes of `name` under `kind`; true on the planned one.
inline bool due(const char* kind, const std::string& name) {
  const Plan& p = plan();
  if (p.kind != kind || p.target != name) return false;
  static std::mutex mutex;
  static std::map<std::string, long> passes;
  std::lock_guard<std::mutex> lock(mutex);
  return ++passes[name] == p.count;
}

// A named place where a planned kill happens.
inline void point(const char* name) {
  if (plan().kind.empty()) return;
  if (due("kill", name)) {
    std::fprintf(stderr, "fault injection: SIGKILL at %s (pass %ld)\n", name, plan().count);
    std::fflush(stderr);
    std::raise(SIGKILL);
  }
}

// True when the atomic write of a file named `file_name` is planned to fail as on a full disk.
inline bool write_fails(const std::string& file_name) { return !plan().kind.empty() && due("enospc", file_name); }

}  // namespace dreambooth::fault
