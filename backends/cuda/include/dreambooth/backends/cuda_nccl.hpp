// NcclCommunicator: data-parallel training on GPUs, one process per GPU, with the gradient sums in GPU memory over NCCL
// (from the CUDA toolkit). Link dreambooth::cuda, built with NCCL (DREAMBOOTH_WITH_NCCL), and dreambooth::mpi.
//
// It takes the processes of another communicator (MPI's, started by mpirun: rank, size, barrier, all-gather and abort
// stay that one's, and the NCCL communicator is set up through its broadcast) and adds the gradient sum in device memory
// (Communicator::enqueue_device_sum), queued on a stream of its own behind the backend's work so far, so that it
// overlaps the rest of the backward pass. The sum is the rank-order sum of train/communicator.hpp, bit for bit the
// MPI one's: NCCL's all-reduce leaves the order of addition to its algorithm (ring or tree, chosen by size and layout),
// so it is not used. Instead, in rounds of at most 16 Mi floats:
//   1. ncclSend / ncclRecv (one group, an all-to-all): process q receives every process's copy of block q (blocks of
//      ceil(n / P) elements);
//   2. a kernel adds the P copies in rank order 0, 1, ..., P - 1 (additions only: no contraction into FMA);
//   3. ncclSend / ncclRecv (an all-gather of the uneven blocks): every process receives every summed block.
// Each process sends and receives 2 (P - 1) / P of the data, as in a ring all-reduce. With bf16 on the wire the values
// are rounded to bf16 before step 1 and the block's float sum to bf16 before step 3 (round to nearest even, as
// dreambooth::float_to_bf16_bits). Two processes on one GPU are refused by NCCL: NcclCommunicator::device_key() tells
// when to sum through host memory over MPI instead.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/backends/cuda.hpp"
#include "dreambooth/train/communicator.hpp"

namespace dreambooth {

class NcclCommunicator final : public train::Communicator {
 public:
  // Every process of `host` constructs one, each with the backend of its own GPU (collective: NCCL's setup).
  NcclCommunicator(CudaBackend& backend, train::Communicator& host);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // The NCCL library's version, "2.27.7".
  static std::string version();
  // Which GPU of which machine `backend` runs on: a hash of the host's name and the GPU's PCI bus id, below 2^52 (so
  // that a double holds it exactly, for Communicator::all_gather). Processes whose keys are all different each have a
  // GPU of their own, as NCCL needs (whatever CUDA_VISIBLE_DEVICES shows each of them).
  static std::uint64_t device_key(const CudaBackend& backend);

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  // Host memory: the host communicator's sums.
  void sum_in_rank_order(std::span<float> data) override { host_->sum_in_rank_order(data); }
  void sum_in_rank_order_bf16(std::span<float> data) override { host_->sum_in_rank_order_bf16(data); }
  bool sums_device_memory() const override { return true; }
  void enqueue_device_sum(std::span<float> data, bool bf16_wire) override;
  void wait_device_sums() override;
  void broadcast(std::span<std::byte> data, int root) override { host_->broadcast(data, root); }
  std::vector<double> all_gather(std::span<const double> values) override { return host_->all_gather(values); }
  void barrier() override { host_->barrier(); }
  [[noreturn]] void abort(int status) override {
    host_->abort(status);
    std::exit(status);  // not reached: the host communicator stops every process
  }
  // The host communicator's, then NCCL's version, this process's GPU and the scratch memory the sums hold outside the
  // backend's pool (64 MiB, 96 MiB once bf16 has been sent).
  std::string description() const override;

  struct Impl;

 private:
  train::Communicator* host_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dreambooth
