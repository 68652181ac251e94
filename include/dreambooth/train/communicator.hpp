// Communicator: what data-parallel training needs from the processes that train together (trainer.devices x
// trainer.num_nodes of them, started by mpirun): their number, this one's rank, a gradient sum whose result does not
// depend on how the processes are connected, a broadcast, an all-gather of a few numbers, a barrier and an abort that
// stops them all. SingleProcess is the one-process case (every collective is the identity); mpi_communicator.hpp is the
// MPI one, and backends/cuda's cuda_nccl.hpp sums the gradients in GPU memory with NCCL over another communicator's
// processes.
//
// The sum is in a fixed order: element i of the result is ((x_0[i] + x_1[i]) + x_2[i]) + ... over the ranks 0, 1, 2, ...,
// on every process, so that every process holds bit-identical gradients and a run repeats bit for bit (MPI_Allreduce
// leaves the order to the library's algorithm, which may change with the message size and the process layout).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/core/dtype.hpp"
#include "dreambooth/core/error.hpp"

namespace dreambooth::train {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // data[i] = the sum over the ranks r = 0, 1, ... of rank r's data[i], added in rank order; every rank passes the same length.
  virtual void sum_in_rank_order(std::span<float> data) = 0;
  // The same sum with bfloat16 on the wire (half the bytes; PyTorch DDP's bf16_compress_hook): every rank's values rounded
  // to bf16 (nearest even), added in float in rank order, the sum rounded to bf16, so data ends equal on every rank. This
  // definition runs the float sum on the rounded values; a communicator that sends bf16 gives the same bits.
  virtual void sum_in_rank_order_bf16(std::span<float> data) {
    if (size() == 1) return;
    round_to_bf16(data);
    sum_in_rank_order(data);
    round_to_bf16(data);
  }
  static void round_to_bf16(std::span<float> data) {
    for (auto& x : data) x = bf16_bits_to_float(float_to_bf16_bits(x));
  }
  // Whether sum_in_rank_order may be called from another thread than the one that made the communicator, while that
  // thread calls nothing of it (the gradient sum overlapped with the backward pass, gradient_sum.hpp).
  virtual bool sums_on_another_thread() const { return false; }
  // Sums in the backend's device memory (a GPU's), without staging the gradients through the host (NCCL):
  // enqueue_device_sum(data) queues the rank-order sum of data (device memory, the float sum of sum_in_rank_order, or of
  // sum_in_rank_order_bf16 with bf16_wire) behind the work the backend has queued so far, and returns at once;
  // wait_device_sums() makes the backend's later work wait for every queued sum. Called from the thread that made the
  // communicator. A communicator that does not return true here is given host memory only.
  virtual bool sums_device_memory() const { return false; }
  virtual void enqueue_device_sum(std::span<float> /*data*/, bool /*bf16_wire*/) { fail(description(), " sums host memory only"); }
  virtual void wait_device_sums() {}
  // Rank `root`'s bytes to every rank (every rank passes the same length).
  virtual void broadcast(std::span<std::byte> data, int root) = 0;
  // The values of every rank, rank 0's first; every rank passes the same number of values.
  virtual std::vector<double> all_gather(std::span<const double> values) = 0;
  virtual void barrier() = 0;
  // Stops every process of the run (after this one printed why); does not return.
  [[noreturn]] virtual void abort(int status) = 0;
  // How the processes were started, for the log ("1 process", "2 processes (MPI: Open MPI v4.1.4)").
  virtual std::string description() const = 0;

  bool leader() const { return rank() == 0; }
  // Runs `first` on rank 0 before the other ranks run it (each rank runs it once): for a setup step that reads and tidies
  // the output folder (removing what a killed run left), which two processes must not do at the same time.
  template <class F>
  void leader_first(F&& first) {
    if (!leader()) barrier();
    first();
    if (leader()) barrier();
  }
};

// One process: nothing to exchange.
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void sum_in_rank_order(std::span<float>) override {}
  bool sums_on_another_thread() const override { return true; }
  void broadcast(std::span<std::byte>, int) override {}
  std::vector<double> all_gather(std::span<const double> values) override { return {values.begin(), values.end()}; }
  void barrier() override {}
  [[noreturn]] void abort(int status) override { std::exit(status); }
  std::string description() const override { return "1 process"; }
};

inline Communicator& single_process() {
  static SingleProcess one;
  return one;
}

// The share of `count` items (images to make, batches) that rank `rank` of `size` takes: items rank, rank + size, ...
inline std::vector<std::size_t> rank_share(std::size_t count, int rank, int size) {
  std::vector<std::size_t> mine;
  for (auto i = static_cast<std::size_t>(rank); i < count; i += static_cast<std::size_t>(size)) mine.push_back(i);
  return mine;
}

}  // namespace dreambooth::train
