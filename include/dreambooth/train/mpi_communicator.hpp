// MpiCommunicator: the processes of one data-parallel run, started by mpirun (Open MPI, MPICH or any MPI-3 library),
// over MPI_COMM_WORLD. Host memory only: the CPU backend's gradients are host arrays.
//
// sum_in_rank_order is a reduce-scatter and an all-gather (the bandwidth of a ring all-reduce: each process sends and
// receives 2 (P - 1) / P of the data), in rounds of at most 16 Mi floats so that the scratch space stays at 64 MiB:
//   1. MPI_Alltoallv: process q receives every process's copy of block q (blocks of ceil(n / P) elements);
//   2. process q adds the P copies in rank order 0, 1, ..., P - 1;
//   3. MPI_Allgatherv: every process receives every summed block.
// sum_in_rank_order_bf16 sends bfloat16 instead (half the bytes): the values rounded to bf16 before step 1, the float sum
// of step 2 rounded to bf16 before step 3.
// MPI's own error handler (MPI_ERRORS_ARE_FATAL) stays: a failed collective stops every process. MPI is started with
// MPI_THREAD_SERIALIZED, so that the gradient sum can run on a thread of its own while the backward pass computes.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dreambooth/core/dtype.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/train/communicator.hpp"

namespace dreambooth::train {

class MpiCommunicator final : public Communicator {
 public:
  // True when this process was started by an MPI launcher (mpirun, mpiexec, srun with PMI), whatever the number of processes.
  static bool launched_by_mpi() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
      if (std::getenv(name)) return true;
    return false;
  }

  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {  // serialized calls from several threads: the gradient sum runs on a thread of its own
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &thread_level_);
      owns_ = true;
    } else {
      MPI_Query_thread(&thread_level_);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm node;  // the processes that share this one's memory: its node's
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_size(node, &local_size_);
    MPI_Comm_free(&node);
  }
  ~MpiCommunicator() override {
    if (!owns_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void sum_in_rank_order(std::span<float> data) override { sum<float>(data); }
  void sum_in_rank_order_bf16(std::span<float> data) override { sum<std::uint16_t>(data); }

  // The MPI library runs calls from any thread, one at a time (MPI_THREAD_SERIALIZED or more).
  bool sums_on_another_thread() const override { return thread_level_ >= MPI_THREAD_SERIALIZED; }

  std::vector<double> all_gather(std::span<const double> values) override {
    std::vector<double> all(values.size() * static_cast<std::size_t>(size_));
    check(MPI_Allgather(values.data(), static_cast<int>(values.size()), MPI_DOUBLE, all.data(), static_cast<int>(values.size()), MPI_DOUBLE,
                        MPI_COMM_WORLD),
          "MPI_Allgather");
    return all;
  }

  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

  void broadcast(std::span<std::byte> data, int root) override {
    for (std::size_t start = 0; start < data.size(); start += kRound) {  // MPI counts are ints
      const auto n = std::min(kRound, data.size() - start);
      check(MPI_Bcast(data.data() + start, static_cast<int>(n), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
  }

  // This process's place among the processes on its node (its host), and their number: which of the node's GPUs it takes.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }

  [[noreturn]] void abort(int status) override {
    MPI_Abort(MPI_COMM_WORLD, status);
    std::exit(status);  // not reached: MPI_Abort stops every process
  }

  std::string description() const override {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    std::string library(version, static_cast<std::size_t>(std::max(0, length)));
    if (const auto end = library.find_first_of(",\n"); end != std::string::npos) library.resize(end);
    return std::to_string(size_) + (size_ == 1 ? " process" : " processes") + " (MPI: " + library + ")";
  }

 private:
  static constexpr std::size_t kRound = std::size_t{1} << 24;  // floats per round of sum_in_rank_order

  // The rank-order sum with `Wire` values on the wire: float, or bfloat16 bits (std::uint16_t: each process's values rounded
  // to bf16, the float sum of a block rounded to bf16 before the all-gather).
  template <class Wire>
  void sum(std::span<float> data) {
    if (size_ == 1) return;
    constexpr bool bf16 = std::is_same_v<Wire, std::uint16_t>;
    const MPI_Datatype type = bf16 ? MPI_UINT16_T : MPI_FLOAT;
    const auto widen = [](Wire w) -> float {
      if constexpr (bf16)
        return bf16_bits_to_float(w);
      else
        return w;
    };
    auto& scratch = std::get<std::vector<Wire>>(scratch_);
    const auto P = static_cast<std::size_t>(size_);
    for (std::size_t start = 0; start < data.size(); start += kRound) {
      const std::size_t n = std::min(kRound, data.size() - start);
      float* x = data.data() + start;
      Wire* wire = nullptr;  // what is sent: x itself, or its values as bf16
      if constexpr (bf16) {
        wire_.resize(n);
        for (std::size_t i = 0; i < n; ++i) wire_[i] = float_to_bf16_bits(x[i]);
        wire = wire_.data();
      } else {
        wire = x;
      }
      const std::size_t per = (n + P - 1) / P;  // process q owns [q * per, min((q + 1) * per, n))
      std::vector<int> counts(P), offsets(P);
      for (std::size_t q = 0; q < P; ++q) {
        const auto begin = std::min(q * per, n), end = std::min(begin + per, n);
        counts[q] = static_cast<int>(end - begin);
        offsets[q] = static_cast<int>(begin);
      }
      const auto mine = static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]);
      const auto my_offset = static_cast<std::size_t>(offsets[static_cast<std::size_t>(rank_)]);
      scratch.resize(P * mine);
      std::vector<int> receive_counts(P, static_cast<int>(mine)), receive_offsets(P);
      for (std::size_t q = 0; q < P; ++q) receive_offsets[q] = static_cast<int>(q * mine);
      check(MPI_Alltoallv(wire, counts.data(), offsets.data(), type, scratch.data(), receive_counts.data(), receive_offsets.data(), type,
                          MPI_COMM_WORLD),
            "MPI_Alltoallv");
      for (std::size_t i = 0; i < mine; ++i) {
        float total = widen(scratch[i]);
        for (std::size_t q = 1; q < P; ++q) total += widen(scratch[q * mine + i]);
        if constexpr (bf16)
          wire[my_offset + i] = float_to_bf16_bits(total);
        else
          wire[my_offset + i] = total;
      }
      check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, wire, counts.data(), offsets.data(), type, MPI_COMM_WORLD), "MPI_Allgatherv");
      if constexpr (bf16)
        for (std::size_t i = 0; i < n; ++i) x[i] = bf16_bits_to_float(wire_[i]);
    }
  }

  static void check(int status, const char* call) {
    if (status == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(status, text, &length);
    fail(call, " failed: ", std::string(text, static_cast<std::size_t>(std::max(0, length))));
  }

  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  int thread_level_ = MPI_THREAD_SINGLE;
  bool owns_ = false;
  std::tuple<std::vector<float>, std::vector<std::uint16_t>> scratch_;  // the P copies of this process's block
  std::vector<std::uint16_t> wire_;                                     // this round's values as bf16
};

}  // namespace dreambooth::train
