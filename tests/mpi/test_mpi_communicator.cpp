// MpiCommunicator under mpirun (ctest runs it with 3 processes): the gradient sum equals adding the ranks' arrays in rank
// order bit for bit (at lengths that leave blocks empty, uneven and over one 16 Mi-float round), differs from another
// order (so the comparison can fail), and so does GradientSum's, whose buckets are summed on a thread of its own while the
// main thread goes on; broadcast gives the root's bytes, each process has its own local rank; all_gather orders by rank,
// rank_share gives every item to one rank. Exit 0 when every check holds on every process.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/train/gradient_sum.hpp"
#include "dreambooth/train/mpi_communicator.hpp"
#include "rank_values.hpp"

namespace {

using dreambooth::train::MpiCommunicator;
float value(int q, std::size_t i) { return dreambooth::test::rank_value(q, i); }

}  // namespace

int main() {
  MpiCommunicator comm;
  const int P = comm.size(), r = comm.rank();
  int failures = 0;
  const auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::fprintf(stderr, "rank %d: FAILED: %s\n", r, what.c_str());
      ++failures;
    }
  };
  check(P >= 2, "run with at least 2 processes (mpirun -np 3)");

  for (const std::size_t n :
       {std::size_t{0}, std::size_t{1}, static_cast<std::size_t>(P - 1), std::size_t{1000}, std::size_t{1000003}, (std::size_t{1} << 24) + 5}) {
    std::vector<float> data(n), expected(n), reversed(n);
    for (std::size_t i = 0; i < n; ++i) {
      data[i] = value(r, i);
      float sum = value(0, i), back = value(P - 1, i);
      for (int q = 1; q < P; ++q) sum += value(q, i), back += value(P - 1 - q, i);
      expected[i] = sum, reversed[i] = back;
    }
    comm.sum_in_rank_order(data);
    check(std::memcmp(data.data(), expected.data(), n * sizeof(float)) == 0,
          "sum_in_rank_order of " + std::to_string(n) + " floats differs from the sum in rank order");
    if (n >= 1000)
      check(std::memcmp(reversed.data(), expected.data(), n * sizeof(float)) != 0,
            "the reversed order gives the same bits for " + std::to_string(n) + " floats: the test data cannot tell orders apart");
  }

  // bf16 on the wire: every rank's values rounded to bf16, added in float in rank order, the sum rounded to bf16; the
  // base class's definition (Communicator::sum_in_rank_order_bf16, which sends floats) gives the same bits
  for (const std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, std::size_t{1000003}}) {
    const auto bf16 = [](float x) { return dreambooth::bf16_bits_to_float(dreambooth::float_to_bf16_bits(x)); };
    std::vector<float> data(n), defined(n), expected(n), full(n);
    for (std::size_t i = 0; i < n; ++i) {
      data[i] = defined[i] = value(r, i);
      float sum = bf16(value(0, i)), exact = value(0, i);
      for (int q = 1; q < P; ++q) sum += bf16(value(q, i)), exact += value(q, i);
      expected[i] = bf16(sum), full[i] = exact;
    }
    comm.sum_in_rank_order_bf16(data);
    comm.Communicator::sum_in_rank_order_bf16(defined);
    check(std::memcmp(data.data(), expected.data(), n * sizeof(float)) == 0,
          "sum_in_rank_order_bf16 of " + std::to_string(n) + " floats differs from the bf16 sum in rank order");
    check(std::memcmp(defined.data(), expected.data(), n * sizeof(float)) == 0,
          "Communicator::sum_in_rank_order_bf16 of " + std::to_string(n) + " floats differs from the bf16 sum in rank order");
    if (n >= 1000)
      check(std::memcmp(full.data(), expected.data(), n * sizeof(float)) != 0, "the bf16 sum equals the float sum: the test cannot tell them apart");
  }

  // Gradients of several sizes (some 256-byte padded apart in one buffer, so some buckets are staged), summed in buckets
  // of 4096 floats on GradientSum's thread: some reported as a backward pass would, the rest left to finish().
  check(comm.sums_on_another_thread(), "the MPI library does not run calls from a second thread (MPI_THREAD_SERIALIZED)");
  {
    using B = dreambooth::CpuBackend;
    B b;
    const std::vector<std::int64_t> sizes = {1000, 64, 300000, 7, 4096, 50000, 3};
    std::vector<dreambooth::nn::Param<B>> params(sizes.size());
    std::vector<dreambooth::nn::Param<B>*> trained;
    std::vector<std::vector<float>> expected;
    std::size_t offset = 0;
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      const auto n = static_cast<std::size_t>(sizes[k]);
      std::vector<float> mine_values(n), sum(n);
      for (std::size_t i = 0; i < n; ++i) {
        mine_values[i] = value(r, offset + i);
        sum[i] = value(0, offset + i);
        for (int q = 1; q < P; ++q) sum[i] += value(q, offset + i);
      }
      offset += n;
      params[k].shape = dreambooth::Shape{sizes[k]};
      params[k].grad = dreambooth::Tensor<B>::from_host(b, params[k].shape, mine_values);
      trained.push_back(&params[k]);
      expected.push_back(std::move(sum));
    }
    dreambooth::train::GradientSum<B> sum(b, comm, 4096 * sizeof(float), true);
    for (int round = 0; round < 2; ++round) {  // the second round sums the sums again: the same object, another step
      sum.begin(trained);
      for (const std::size_t k : {5, 2, 4}) sum.ready(params[k]);
      sum.finish();
      for (std::size_t k = 0; k < sizes.size(); ++k) {
        auto want = expected[k];
        if (round == 1)
          for (auto& x : want) {  // every rank held the same sums: P of them added in rank order
            const float one = x;
            for (int q = 1; q < P; ++q) x += one;
          }
        check(params[k].grad.to_host() == want, "GradientSum round " + std::to_string(round) + ": gradient " + std::to_string(k) + " (" +
                                                    std::to_string(sizes[k]) + " floats) differs from the sum in rank order");
      }
      check(sum.last().buckets >= 4 && sum.last().started_during_backward >= 2, "GradientSum: " + std::to_string(sum.last().buckets) + " buckets, " +
                                                                                    std::to_string(sum.last().started_during_backward) +
                                                                                    " handed over before finish()");
      if (round == 0) {
        expected.clear();
        for (const auto& p : params) expected.push_back(p.grad.to_host());
      }
    }
  }

  // broadcast: rank 1's bytes to every rank (and over one 16 Mi round); local ranks: this machine is every process's node
  for (const std::size_t n : {std::size_t{128}, (std::size_t{1} << 24) + 3}) {
    std::vector<std::byte> bytes(n);
    for (std::size_t i = 0; i < n; ++i) bytes[i] = static_cast<std::byte>((i * 7 + static_cast<std::size_t>(r)) & 0xff);
    comm.broadcast(bytes, 1);
    bool same = true;
    for (std::size_t i = 0; i < n; ++i) same = same && bytes[i] == static_cast<std::byte>((i * 7 + 1) & 0xff);
    check(same, "broadcast of " + std::to_string(n) + " bytes: not rank 1's");
  }
  check(comm.local_size() == P, "local_size " + std::to_string(comm.local_size()) + " on one machine with " + std::to_string(P) + " processes");
  const double local = comm.local_rank();
  const auto locals = comm.all_gather(std::span<const double>(&local, 1));
  for (int q = 0; q < P; ++q)
    check(std::count(locals.begin(), locals.end(), static_cast<double>(q)) == 1,
          "local rank " + std::to_string(q) + " not held by exactly one process");

  const std::vector<double> mine = {static_cast<double>(r), 10.5 * r};
  const auto all = comm.all_gather(mine);
  check(all.size() == 2 * static_cast<std::size_t>(P), "all_gather: " + std::to_string(all.size()) + " values");
  for (int q = 0; q < P && all.size() == 2 * static_cast<std::size_t>(P); ++q)
    check(all[2 * q] == q && all[2 * q + 1] == 10.5 * q, "all_gather: rank " + std::to_string(q) + "'s values out of place");

  std::vector<int> owner(10, -1);
  for (int q = 0; q < P; ++q)
    for (const auto i : dreambooth::train::rank_share(owner.size(), q, P)) {
      check(owner[i] == -1, "rank_share: item " + std::to_string(i) + " given twice");
      owner[i] = q;
    }
  for (std::size_t i = 0; i < owner.size(); ++i) check(owner[i] == static_cast<int>(i) % P, "rank_share: item " + std::to_string(i));

  const double mine_failed = failures;
  double failed = 0;
  for (const double f : comm.all_gather(std::span<const double>(&mine_failed, 1))) failed += f;
  if (r == 0) std::printf("%s: %s\n", comm.description().c_str(), failed == 0 ? "all checks passed" : "FAILED");
  return failed == 0 ? 0 : 1;
}
