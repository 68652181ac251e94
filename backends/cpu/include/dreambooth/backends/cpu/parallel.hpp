// When a CPU loop is worth an OpenMP team. Opening a parallel region costs a wake-up and a barrier; on a busy machine
// (CI, a compile beside a run) a descheduled team member stalls the whole region, so a tiny model that runs thousands
// of small ops (the tests' pipelines, the demo's) slowed by two orders of magnitude when every op opened one. Loops
// below kMinParallelWork elementary operations run on the calling thread; the result is the same either way, except
// for the sums of reductions, whose order depends on the team (as it depends on the thread count).
#pragma once

#include <cstddef>
#include <cstdint>

namespace dreambooth::cpu {

inline constexpr std::int64_t kMinParallelWork = std::int64_t(1) << 18;

constexpr bool parallel_worth(std::int64_t work) { return work >= kMinParallelWork; }
constexpr bool parallel_worth(std::size_t work) { return work >= static_cast<std::size_t>(kMinParallelWork); }

}  // namespace dreambooth::cpu
