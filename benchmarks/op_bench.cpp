// Op benchmark for the CPU backend: GFLOP/s of GEMM, 3x3 convolution at SD shapes and attention, each also as a
// fraction of this machine's fp32 GEMM rate measured in the same run. Prints one JSON object.
//   op_bench [--quick | --full]   (--quick: fewer repetitions and shapes, for the README's main command; --full: default)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "dreambooth/backends/cpu.hpp"

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

namespace {

// Best wall time of `reps` runs after one warm-up run.
double best_seconds(int reps, const std::function<void()>& run) {
  run();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best;
}

std::vector<float> random(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  CpuBackend().fill_normal(v.data(), n, seed, 0, 0.0f, 1.0f);
  return v;
}

struct Result {
  std::string name, shape;
  double flops, seconds;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "--full";
  if (argc > 2 || (mode != "--quick" && mode != "--full")) {
    std::fprintf(stderr, "usage: op_bench [--quick | --full]\n");
    return 2;
  }
  const bool quick = mode == "--quick";
  const int reps = quick ? 2 : 5;
  CpuBackend b;
  std::vector<Result> results;

  // fp32 GEMM: the machine's reference rate.
  const std::int64_t g = 2048;
  {
    const auto A = random(static_cast<std::size_t>(g * g), 1), B = random(static_cast<std::size_t>(g * g), 2);
    std::vector<float> C(static_cast<std::size_t>(g * g));
    const double s = best_seconds(reps, [&] { b.gemm(false, false, g, g, g, 1.0f, A.data(), g, B.data(), g, 0.0f, C.data(), g); });
    results.push_back({"gemm_f32", "[2048 x 2048] x [2048 x 2048]", 2.0 * g * g * g, s});
  }
  const double gemm_rate = results[0].flops / results[0].seconds;

  // 3x3 convolutions at the SD 1.5 UNet's levels (batch 2, 64x64 latents).
  struct ConvShape {
    std::int64_t c, hw;
  };
  std::vector<ConvShape> convs = {{320, 64}, {640, 32}, {1280, 16}, {1280, 8}};
  if (quick) convs.resize(1);
  for (const auto& cs : convs) {
    const nn::Conv2dDims d{2, cs.c, cs.hw, cs.hw, cs.c, 3, 3, 1, 1, 1, 1};
    const auto in = random(static_cast<std::size_t>(2 * cs.c * cs.hw * cs.hw), 3);
    const auto w = random(static_cast<std::size_t>(cs.c * cs.c * 9), 4), bias = random(static_cast<std::size_t>(cs.c), 5);
    std::vector<float> out(in.size()), din(in.size()), dw(w.size()), dbias(bias.size());
    const std::string shape =
        "[2," + std::to_string(cs.c) + "," + std::to_string(cs.hw) + "," + std::to_string(cs.hw) + "] -> " + std::to_string(cs.c);
    results.push_back(
        {"conv3x3_forward", shape, d.flops(), best_seconds(reps, [&] { b.conv2d_forward(out.data(), in.data(), w.data(), bias.data(), d); })});
    results.push_back({"conv3x3_backward", shape, 2 * d.flops(),
                       best_seconds(reps, [&] { b.conv2d_backward(din.data(), dw.data(), dbias.data(), out.data(), in.data(), w.data(), d); })});
  }

  // Attention at the UNet's first level: 4096 tokens, 8 heads of 40; self and cross (77 text tokens).
  for (const std::int64_t kv : {std::int64_t{4096}, std::int64_t{77}}) {
    const nn::AttentionDims d{2, 8, 4096, kv, 40, false, 0.0};
    const auto q = random(static_cast<std::size_t>(2 * 4096 * 320), 6), k = random(static_cast<std::size_t>(2 * kv * 320), 7),
               v = random(static_cast<std::size_t>(2 * kv * 320), 8);
    std::vector<float> out(q.size()), lse(static_cast<std::size_t>(2 * 8 * 4096)), dq(q.size()), dk(k.size()), dv(v.size());
    const std::string shape = "N=2 heads=8 Tq=4096 Tk=" + std::to_string(kv) + " head_dim=40";
    const std::string kind = kv == 4096 ? "self" : "cross";
    const int attention_reps = quick ? 1 : 3;
    results.push_back({"attention_" + kind + "_forward", shape, d.flops(),
                       best_seconds(attention_reps, [&] { b.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d); })});
    if (!quick)
      results.push_back({"attention_" + kind + "_backward", shape, 2.5 * d.flops(), best_seconds(attention_reps, [&] {
                           b.attention_backward(dq.data(), dk.data(), dv.data(), out.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), d);
                         })});
  }

  std::printf("{\n  \"backend\": \"cpu\",\n  \"threads\": %d,\n  \"gemm_f32_gflops\": %.1f,\n  \"ops\": [\n", omp_get_max_threads(), gemm_rate / 1e9);
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const double rate = r.flops / r.seconds;
    std::printf("    {\"op\": \"%s\", \"shape\": \"%s\", \"seconds\": %.5f, \"gflop\": %.3f, \"gflops\": %.1f, \"fraction_of_gemm\": %.3f}%s\n",
                r.name.c_str(), r.shape.c_str(), r.seconds, r.flops / 1e9, rate / 1e9, rate / gemm_rate, i + 1 < results.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
  return 0;
}
