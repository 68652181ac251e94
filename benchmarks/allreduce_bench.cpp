// allreduce_bench: the gradient sum of data-parallel training (MpiCommunicator::sum_in_rank_order, rank order; and
// sum_in_rank_order_bf16, bf16 on the wire) beside MPI's own MPI_Allreduce, at sizes from 1 MiB to --max-mib, under
// mpirun. Prints one JSON object (rank 0): per size the median seconds of --repeats runs, the algorithm bandwidth
// (bytes / s) and the bus bandwidth (algorithm bandwidth x 2 (P - 1) / P, NCCL's measure: what each process's link
// carries), for the communication model of docs/parallel.md.
//   mpirun -np 2 build/benchmarks/allreduce_bench [--max-mib 256] [--repeats 5]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "dreambooth/train/mpi_communicator.hpp"

int main(int argc, char** argv) {
  std::size_t max_mib = 256;
  int repeats = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--max-mib")) max_mib = std::strtoul(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--repeats")) repeats = std::max(1, std::atoi(argv[i + 1]));
  }
  dreambooth::train::MpiCommunicator comm;
  const int P = comm.size();
  const auto median_seconds = [&](auto&& once) {
    std::vector<double> times;
    once();  // warm-up: pages touched, connections made
    for (int r = 0; r < repeats; ++r) {
      comm.barrier();
      const auto start = std::chrono::steady_clock::now();
      once();
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    // the slowest process's time decides: the maximum over the ranks of each rank's median
    double worst = 0;
    for (const double t : comm.all_gather(std::span<const double>(&times[times.size() / 2], 1))) worst = std::max(worst, t);
    return worst;
  };
  nlohmann::json sizes = nlohmann::json::array();
  for (std::size_t mib = 1; mib <= max_mib; mib *= 4) {
    const std::size_t n = mib * 1024 * 1024 / sizeof(float);
    std::vector<float> data(n, 1.0f / static_cast<float>(comm.rank() + 1)), result(n);
    const double ours = median_seconds([&] { comm.sum_in_rank_order(data); });
    const double ours_bf16 = median_seconds([&] { comm.sum_in_rank_order_bf16(data); });
    const double library =
        median_seconds([&] { MPI_Allreduce(data.data(), result.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); });
    const double bytes = static_cast<double>(n * sizeof(float)), bus = 2.0 * (P - 1) / P;
    sizes.push_back({{"mib", mib},
                     {"rank_order_s", ours},
                     {"rank_order_busbw_gbs", bytes / ours * bus / 1e9},
                     {"rank_order_bf16_s", ours_bf16},
                     {"mpi_allreduce_s", library},
                     {"mpi_allreduce_busbw_gbs", bytes / library * bus / 1e9}});
  }
  if (comm.leader())
    std::printf("%s\n", nlohmann::json(
                            {{"benchmark", "allreduce"}, {"processes", P}, {"launcher", comm.description()}, {"repeats", repeats}, {"sizes", sizes}})
                            .dump(1)
                            .c_str());
  return 0;
}
