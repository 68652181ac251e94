// NcclCommunicator under mpirun, one process per GPU (label gpu; tests/gpu/test_nccl.sh starts it with as many processes
// as the machine has GPUs, and skips with fewer than 2): the sum in device memory equals adding the ranks' arrays in rank
// order bit for bit, as the MPI communicator's does (lengths that leave blocks empty, uneven, and over one 16 Mi-float
// round), with float and bf16 on the wire; each sum waits for the backend's work queued before it (the data is written
// by a kernel just before), and the backend's later work waits for the sums. GradientSum over it: gradients in one
// arena, some reported as a backward pass would, the rest left to finish(). Exit 0 when every check holds everywhere.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../mpi/rank_values.hpp"
#include "dreambooth/backends/cuda.hpp"
#include "dreambooth/backends/cuda_nccl.hpp"
#include "dreambooth/core/arena.hpp"
#include "dreambooth/core/tensor.hpp"
#include "dreambooth/train/gradient_sum.hpp"
#include "dreambooth/train/mpi_communicator.hpp"

using namespace dreambooth;
using B = CudaBackend;

int main() {
  train::MpiCommunicator host;
  const int P = host.size(), r = host.rank();
  int failures = 0;
  const auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::fprintf(stderr, "rank %d: FAILED: %s\n", r, what.c_str());
      ++failures;
    }
  };
  B b(host.local_rank() % B::device_count());
  // every process on a GPU of its own: the keys all differ
  const auto key = static_cast<double>(NcclCommunicator::device_key(b));
  auto keys = host.all_gather(std::span<const double>(&key, 1));
  std::sort(keys.begin(), keys.end());
  check(std::adjacent_find(keys.begin(), keys.end()) == keys.end(), "two processes report the same GPU (device_key)");
  NcclCommunicator comm(b, host);
  check(comm.sums_device_memory(), "sums_device_memory()");
  const auto same = [](float x) { return x; };
  const auto bf16 = [](float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); };

  for (const bool wire_bf16 : {false, true})
    for (const std::size_t n :
         {std::size_t{1}, static_cast<std::size_t>(P - 1), std::size_t{1000}, std::size_t{1000003}, (std::size_t{1} << 24) + 5}) {
      if (n == 0) continue;
      // the data halved on the host, doubled by a kernel on the backend's stream just before the sum is queued
      std::vector<float> half(n);
      for (std::size_t i = 0; i < n; ++i) half[i] = test::rank_value(r, i) * 0.5f;
      auto data = Tensor<B>::from_host(b, Shape{static_cast<std::int64_t>(n)}, half);
      b.scale(nn::ptr(data), nn::ptr(data), 2.0f, n);
      comm.enqueue_device_sum(std::span<float>(nn::ptr(data), n), wire_bf16);
      comm.wait_device_sums();
      b.scale(nn::ptr(data), nn::ptr(data), 1.0f, n);  // the backend's work after the wait
      auto expected = wire_bf16 ? test::rank_order_sum(P, 0, n, bf16) : test::rank_order_sum(P, 0, n, same);
      if (wire_bf16)
        for (auto& x : expected) x = bf16(x);
      const auto got = data.to_host();
      check(std::memcmp(got.data(), expected.data(), n * sizeof(float)) == 0,
            std::string(wire_bf16 ? "bf16" : "float") + " sum of " + std::to_string(n) + " floats differs from the sum in rank order");
    }

  // GradientSum: gradients in one zeroed arena, buckets of 4096 floats; 5, 2 and 4 reported, the rest left to finish()
  const std::vector<std::int64_t> sizes = {1000, 64, 300000, 7, 4096, 50000, 3};
  std::vector<std::pair<Shape, DType>> shapes;
  for (const auto n : sizes) shapes.push_back({Shape{n}, DType::F32});
  Arena<B> arena(b, Arena<B>::plan(shapes));
  arena.set_zero();
  std::vector<nn::Param<B>> params(sizes.size());
  std::vector<nn::Param<B>*> trained;
  std::vector<std::vector<float>> expected;
  std::size_t offset = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const auto n = static_cast<std::size_t>(sizes[k]);
    std::vector<float> mine(n);
    for (std::size_t i = 0; i < n; ++i) mine[i] = test::rank_value(r, offset + i);
    expected.push_back(test::rank_order_sum(P, offset, n, same));
    offset += n;
    params[k].shape = Shape{sizes[k]};
    params[k].grad = arena.allocate(params[k].shape);
    params[k].grad.copy_from_host(mine);
    trained.push_back(&params[k]);
  }
  train::GradientSum<B> sum(b, comm, 4096 * sizeof(float), true);
  check(sum.on_device() && !sum.staged(), "GradientSum over NCCL: in device memory, not staged");
  sum.begin(trained);
  for (const std::size_t k : {5, 2, 4}) sum.ready(params[k]);
  sum.finish();
  for (std::size_t k = 0; k < sizes.size(); ++k)
    check(params[k].grad.to_host() == expected[k],
          "GradientSum: gradient " + std::to_string(k) + " (" + std::to_string(sizes[k]) + " floats) differs from the sum in rank order");
  check(sum.last().started_during_backward >= 2 && sum.last().staged == 0, "GradientSum: " + std::to_string(sum.last().started_during_backward) +
                                                                               " buckets queued before finish(), " +
                                                                               std::to_string(sum.last().staged) + " staged");

  const double mine_failed = failures;
  double failed = 0;
  for (const double f : host.all_gather(std::span<const double>(&mine_failed, 1))) failed += f;
  if (r == 0) std::printf("%s: %s\n", comm.description().c_str(), failed == 0 ? "all checks passed" : "FAILED");
  return failed == 0 ? 0 : 1;
}
