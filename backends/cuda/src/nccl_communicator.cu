// NcclCommunicator (cuda_nccl.hpp): the rank-order gradient sum in GPU memory over NCCL's point-to-point transfers, on a
// stream of its own that waits for the backend's work queued before each sum.
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "dreambooth/backends/cuda_nccl.hpp"
#include "internal.cuh"

namespace dreambooth {

namespace {

using cuda_detail::blocks_for;
using cuda_detail::check_cuda;
using cuda_detail::check_launch;
using cuda_detail::kThreads;

constexpr std::size_t kRound = std::size_t{1} << 24;  // floats per round (the MPI communicator's round)

void check_nccl(ncclResult_t status, const char* what, ncclComm_t comm = nullptr) {
  if (status == ncclSuccess) return;
  const char* detail = comm ? ncclGetLastError(comm) : nullptr;
  fail("NCCL: ", what, " failed: ", ncclGetErrorString(status), detail && *detail ? std::string(" (") + detail + ")" : std::string());
}

// out[i] = ((copies[0][i] + copies[1][i]) + copies[2][i]) + ..., copies[q] = copies + q * mine.
__global__ void sum_copies_kernel(float* out, const float* copies, std::size_t mine, int processes) {
  DB_GRID_STRIDE(i, mine) {
    float total = copies[i];
    for (int q = 1; q < processes; ++q) total = __fadd_rn(total, copies[q * mine + i]);
    out[i] = total;
  }
}
// The same over bf16 copies, added in float, the sum rounded to bf16 (to nearest even, as float_to_bf16_bits).
__global__ void sum_copies_bf16_kernel(__nv_bfloat16* out, const __nv_bfloat16* copies, std::size_t mine, int processes) {
  DB_GRID_STRIDE(i, mine) {
    float total = __bfloat162float(copies[i]);
    for (int q = 1; q < processes; ++q) total = __fadd_rn(total, __bfloat162float(copies[q * mine + i]));
    out[i] = __float2bfloat16_rn(total);
  }
}

}  // namespace

struct NcclCommunicator::Impl {
  int rank = 0, size = 1, device = 0;
  cudaStream_t compute = nullptr;  // the backend's stream
  cudaStream_t stream = nullptr;   // the sums'
  cudaEvent_t queued = nullptr, summed = nullptr;
  ncclComm_t comm = nullptr;
  float* copies = nullptr;               // [size, ceil(kRound / size)]: the copies of this process's block
  __nv_bfloat16* copies_bf16 = nullptr;  // the same as bf16, allocated at the first bf16 sum
  __nv_bfloat16* wire_bf16 = nullptr;    // [kRound]: a round's values as bf16
  std::size_t block_capacity = 0;        // ceil(kRound / size)

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    if (comm) ncclCommDestroy(comm);
    for (void* p : {static_cast<void*>(copies), static_cast<void*>(copies_bf16), static_cast<void*>(wire_bf16)})
      if (p) cudaFree(p);
    if (queued) cudaEventDestroy(queued);
    if (summed) cudaEventDestroy(summed);
    if (stream) cudaStreamDestroy(stream);
  }

  // Block q of n values: [offset(q), offset(q) + count(q)).
  static std::size_t per_block(std::size_t n, int size) { return (n + static_cast<std::size_t>(size) - 1) / static_cast<std::size_t>(size); }

  // One round of the sum over n <= kRound values at `values` (wire values: float, or bf16 bits), `copies` the scratch.
  template <class Wire>
  void sum_round(Wire* values, Wire* copies_of_mine, std::size_t n, ncclDataType_t type) {
    const std::size_t per = per_block(n, size);
    const auto begin = [&](int q) { return std::min(static_cast<std::size_t>(q) * per, n); };
    const auto count = [&](int q) { return std::min(begin(q) + per, n) - begin(q); };
    const std::size_t mine = count(rank);
    // 1. every process's copy of block `rank` into copies_of_mine[q * mine, (q + 1) * mine)
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int q = 0; q < size; ++q) {
      if (count(q)) check_nccl(ncclSend(values + begin(q), count(q), type, q, comm, stream), "ncclSend", comm);
      if (mine) check_nccl(ncclRecv(copies_of_mine + static_cast<std::size_t>(q) * mine, mine, type, q, comm, stream), "ncclRecv", comm);
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd (the blocks to their owners)", comm);
    // 2. added in rank order into this process's block
    if (mine) {
      if constexpr (std::is_same_v<Wire, float>)
        sum_copies_kernel<<<blocks_for(mine), kThreads, 0, stream>>>(values + begin(rank), copies_of_mine, mine, size);
      else
        sum_copies_bf16_kernel<<<blocks_for(mine), kThreads, 0, stream>>>(values + begin(rank), copies_of_mine, mine, size);
      check_launch("NCCL gradient sum: the rank-order sum kernel");
    }
    // 3. every summed block to every process
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int q = 0; q < size; ++q) {
      if (q == rank) continue;
      if (mine) check_nccl(ncclSend(values + begin(rank), mine, type, q, comm, stream), "ncclSend", comm);
      if (count(q)) check_nccl(ncclRecv(values + begin(q), count(q), type, q, comm, stream), "ncclRecv", comm);
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd (the summed blocks to every process)", comm);
  }
};

NcclCommunicator::NcclCommunicator(CudaBackend& backend, train::Communicator& host) : host_(&host), impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.rank = host.rank();
  s.size = host.size();
  s.device = backend.impl_->options.device;
  s.compute = backend.impl_->stream;
  check_cuda(cudaSetDevice(s.device), "cudaSetDevice");
  check_cuda(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate (the gradient sums' stream)");
  check_cuda(cudaEventCreateWithFlags(&s.queued, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventCreateWithFlags(&s.summed, cudaEventDisableTiming), "cudaEventCreate");
  ncclUniqueId id{};
  if (s.rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  host.broadcast(std::as_writable_bytes(std::span<ncclUniqueId>(&id, 1)), 0);
  check_nccl(ncclCommInitRank(&s.comm, s.size, id, s.rank), "ncclCommInitRank (is every process on a GPU of its own?)");
  s.block_capacity = Impl::per_block(kRound, s.size);
  check_cuda(cudaMalloc(&s.copies, s.block_capacity * static_cast<std::size_t>(s.size) * sizeof(float)), "cudaMalloc (the gradient sums' scratch)");
}

NcclCommunicator::~NcclCommunicator() = default;

std::uint64_t NcclCommunicator::device_key(const CudaBackend& backend) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  char bus[64] = {};
  check_cuda(cudaDeviceGetPCIBusId(bus, sizeof bus, backend.impl_->options.device), "cudaDeviceGetPCIBusId");
  std::uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a over "host/bus"
  for (const char* part : {static_cast<const char*>(host), "/", static_cast<const char*>(bus)})
    for (const char* c = part; *c; ++c) hash = (hash ^ static_cast<unsigned char>(*c)) * 0x100000001b3ull;
  return hash >> 12;
}

std::string NcclCommunicator::version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL_VERSION(X, Y, Z) is X * 10000 + Y * 100 + Z from 2.9 on
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

std::string NcclCommunicator::description() const {
  const auto& s = *impl_;
  const std::size_t copies = s.block_capacity * static_cast<std::size_t>(s.size);
  const std::size_t scratch = copies * sizeof(float) + (s.copies_bf16 ? copies * 2 + kRound * 2 : 0);
  return host_->description() + ", gradients summed on the GPUs by NCCL " + version() + " (this process on device " + std::to_string(s.device) +
         ", " + std::to_string(scratch >> 20) + " MiB of scratch)";
}

void NcclCommunicator::enqueue_device_sum(std::span<float> data, bool bf16_wire) {
  auto& s = *impl_;
  if (s.size == 1 || data.empty()) return;
  check_cuda(cudaEventRecord(s.queued, s.compute), "cudaEventRecord");  // the gradients are complete once the backend's queue gets here
  check_cuda(cudaStreamWaitEvent(s.stream, s.queued, 0), "cudaStreamWaitEvent");
  if (bf16_wire && !s.copies_bf16) {
    check_cuda(cudaMalloc(&s.copies_bf16, s.block_capacity * static_cast<std::size_t>(s.size) * 2), "cudaMalloc (bf16 scratch)");
    check_cuda(cudaMalloc(&s.wire_bf16, kRound * 2), "cudaMalloc (bf16 scratch)");
  }
  for (std::size_t start = 0; start < data.size(); start += kRound) {
    const std::size_t n = std::min(kRound, data.size() - start);
    float* x = data.data() + start;
    if (!bf16_wire) {
      s.sum_round(x, s.copies, n, ncclFloat32);
      continue;
    }
    cuda_detail::convert_to_bf16(s.stream, s.wire_bf16, x, n);
    check_launch("NCCL gradient sum: to bf16");
    s.sum_round(s.wire_bf16, s.copies_bf16, n, ncclBfloat16);
    cuda_detail::convert_from_bf16(s.stream, x, s.wire_bf16, n, 0.0f);
    check_launch("NCCL gradient sum: from bf16");
  }
}

void NcclCommunicator::wait_device_sums() {
  auto& s = *impl_;
  if (s.size == 1) return;
  check_cuda(cudaEventRecord(s.summed, s.stream), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(s.compute, s.summed, 0), "cudaStreamWaitEvent");
  ncclResult_t async = ncclSuccess;
  check_nccl(ncclCommGetAsyncError(s.comm, &async), "ncclCommGetAsyncError", s.comm);
  check_nccl(async, "a gradient sum (another process may have stopped)", s.comm);
}

}  // namespace dreambooth
