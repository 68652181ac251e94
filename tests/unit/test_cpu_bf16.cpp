// The CPU backend's bf16 compute (backends/cpu/gemm_bf16.hpp): float -> bf16 rounding; gemm_bf16 against the same
// products of the rounded operands summed in double (every transpose, alpha and beta, padded leading dimensions); the
// linear and convolution ops and the DreamBooth training step (UNet forward and backward, loss and every gradient) in
// bf16 against fp32 (relative L2 <= 1e-2, and not equal: bf16 did run). The kernel checks need a CPU with AVX512-BF16 or
// AMX and a build with oneDNN; elsewhere they are skipped with a warning.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "reference.hpp"

using namespace dreambooth;
using testing::relative_l2;
namespace fs = std::filesystem;

namespace {

bool bf16_kernel() {
  if (!cpu::bf16_gemm_isa().empty()) return true;
  WARN("no bf16 GEMM kernel here (a build without oneDNN, or a CPU without AVX512-BF16 / AMX): the kernel checks are skipped");
  return false;
}

std::vector<float> normal(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

}  // namespace

TEST_CASE("float -> bf16 rounds to nearest even and keeps NaN and infinity", "[bf16]") {
  REQUIRE(cpu::to_bf16(1.0f) == 0x3F80);
  REQUIRE(cpu::to_bf16(-2.0f) == 0xC000);
  REQUIRE(cpu::to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);                          // a tie: to the even 1.0
  REQUIRE(cpu::to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);                      // a tie: to the even 1 + 2^-6
  REQUIRE(cpu::to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3F81);  // above the tie: up
  REQUIRE(cpu::to_bf16(std::numeric_limits<float>::infinity()) == 0x7F80);
  REQUIRE(std::isnan(cpu::from_bf16(cpu::to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  REQUIRE(cpu::to_bf16(3.0e38f) == 0x7F62);  // rounds within range
  for (const float x : {0.1f, -3.14159f, 1234.5f, 1e-20f}) REQUIRE(std::abs(cpu::from_bf16(cpu::to_bf16(x)) - x) <= std::abs(x) * 0x1p-8f);
}

TEST_CASE("gemm_bf16 equals the rounded operands' products summed exactly, for every transpose, alpha and beta", "[bf16]") {
  if (!bf16_kernel()) return;
  std::mt19937 g(7);
  for (const bool ta : {false, true})
    for (const bool tb : {false, true})
      for (const float beta : {0.0f, 1.0f, 0.5f}) {
        const std::int64_t m = 37, n = 53, k = 71, lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 2;
        const auto a = normal(static_cast<std::size_t>((ta ? k : m) * lda), 1), b = normal(static_cast<std::size_t>((tb ? n : k) * ldb), 2);
        const auto c0 = normal(static_cast<std::size_t>(m * ldc), 3);
        auto c = c0;
        const float alpha = 0.75f;
        cpu::gemm_bf16(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
        std::vector<float> want(c.size()), got(c.size()), unrounded(c.size());
        for (std::int64_t i = 0; i < m; ++i)
          for (std::int64_t j = 0; j < n; ++j) {
            double rounded = 0, exact = 0;
            for (std::int64_t p = 0; p < k; ++p) {
              const float av = ta ? a[p * lda + i] : a[i * lda + p], bv = tb ? b[j * ldb + p] : b[p * ldb + j];
              rounded += static_cast<double>(cpu::from_bf16(cpu::to_bf16(av))) * cpu::from_bf16(cpu::to_bf16(bv));
              exact += static_cast<double>(av) * bv;
            }
            const auto at = static_cast<std::size_t>(i * ldc + j);
            want[at] = static_cast<float>(alpha * rounded + beta * c0[at]);
            unrounded[at] = static_cast<float>(alpha * exact + beta * c0[at]);
            got[at] = c[at];
          }
        INFO("trans_a " << ta << " trans_b " << tb << " beta " << beta);
        REQUIRE(relative_l2(got, want) < 1e-6);       // fp32 accumulation of the bf16 products
        REQUIRE(relative_l2(got, unrounded) > 1e-4);  // and the operands were rounded (fp32 operands would be ~1e-7)
        for (std::int64_t i = 0; i < m; ++i)          // the padding between rows untouched
          for (std::int64_t j = n; j < ldc; ++j) REQUIRE(c[static_cast<std::size_t>(i * ldc + j)] == c0[static_cast<std::size_t>(i * ldc + j)]);
      }
}

TEST_CASE("the CPU backend's linear and convolution ops in bf16 agree with fp32 within 1e-2", "[bf16]") {
  if (!bf16_kernel()) return;
  CpuBackend f32, b16;
  b16.set_compute(cpu::GemmCompute::bf16);
  const auto compare = [](const std::vector<float>& low, const std::vector<float>& full, const char* what) {
    INFO(what);
    const double e = relative_l2(low, full);
    REQUIRE(e < 1e-2);
    REQUIRE(e > 1e-5);  // bf16 did run
  };
  {  // linear: out[N, OC] = in W^T + b; din, dW, db
    const nn::LinearDims d{96, 64, 80};
    const auto in = normal(96 * 64, 4), w = normal(80 * 64, 5), bias = normal(80, 6), dout = normal(96 * 80, 7);
    std::vector<float> out[2], din[2], dw[2], db[2];
    int i = 0;
    for (auto* b : {&f32, &b16}) {
      out[i].resize(96 * 80), din[i].resize(96 * 64), dw[i].assign(80 * 64, 0.0f), db[i].assign(80, 0.0f);
      b->linear_forward(out[i].data(), in.data(), w.data(), bias.data(), d);
      b->linear_backward(din[i].data(), dw[i].data(), db[i].data(), dout.data(), in.data(), w.data(), d);
      ++i;
    }
    compare(out[1], out[0], "linear forward");
    compare(din[1], din[0], "linear input gradient");
    compare(dw[1], dw[0], "linear weight gradient");
  }
  for (const std::int64_t kernel : {1, 3}) {  // convolutions: the 1x1 and 3x3 paths, stride 1 and 2
    for (const std::int64_t stride : {1, 2}) {
      if (kernel == 1 && stride == 2) continue;
      nn::Conv2dDims d;
      d.batch = 2, d.in_channels = 16, d.out_channels = 24, d.height = 12, d.width = 10;
      d.kernel_h = d.kernel_w = kernel, d.stride_h = d.stride_w = stride, d.pad_h = d.pad_w = kernel / 2;
      const auto oh = d.out_height(), ow = d.out_width();
      const auto in = normal(static_cast<std::size_t>(2 * 16 * 12 * 10), 8), w = normal(static_cast<std::size_t>(24 * 16 * kernel * kernel), 9);
      const auto bias = normal(24, 10), dout = normal(static_cast<std::size_t>(2 * 24 * oh * ow), 11);
      std::vector<float> out[2], din[2], dw[2], db[2];
      int i = 0;
      for (auto* b : {&f32, &b16}) {
        out[i].resize(dout.size()), din[i].resize(in.size()), dw[i].assign(w.size(), 0.0f), db[i].assign(24, 0.0f);
        b->conv2d_forward(out[i].data(), in.data(), w.data(), bias.data(), d);
        b->conv2d_backward(din[i].data(), dw[i].data(), db[i].data(), dout.data(), in.data(), w.data(), d);
        ++i;
      }
      INFO("kernel " << kernel << " stride " << stride);
      compare(out[1], out[0], "conv2d forward");
      compare(din[1], din[0], "conv2d input gradient");
      compare(dw[1], dw[0], "conv2d weight gradient");
    }
  }
}

TEST_CASE("the DreamBooth step in bf16 on the CPU: loss and every UNet gradient within 1e-2 of fp32", "[bf16][training]") {
  if (!bf16_kernel()) return;
  const fs::path data = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "training" / "frozen_text_encoder";
  const io::SafetensorsFile fixture(data / "fixture.safetensors");
  struct Run {
    double loss = 0;
    std::vector<float> gradients;
  };
  const auto run = [&](cpu::GemmCompute compute) {
    CpuBackend b;
    b.set_compute(compute);
    auto unet = io::load_unet(b, data / "unet");
    auto text_encoder = io::load_clip_text(b, data / "text_encoder");
    train::DreamBoothStep<CpuBackend> step(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), train::StepConfig{});
    train::DreamBoothStep<CpuBackend>::Batch batch;
    batch.latents = Tensor<CpuBackend>::from_host(b, fixture.info("input.latents").shape, fixture.read_f32("input.latents"));
    const auto ids = fixture.read_f32("input.ids");
    batch.ids.assign(ids.begin(), ids.end());
    batch.noise = Tensor<CpuBackend>::from_host(b, fixture.info("noise.0").shape, fixture.read_f32("noise.0"));
    const auto t = fixture.read_f32("timesteps.0");
    batch.timesteps.assign(t.begin(), t.end());
    Run r;
    r.loss = step.forward_backward(batch, 1.0).total;
    unet->visit([&](const std::string&, nn::Param<CpuBackend>& p) {
      const auto g = p.grad.to_host();
      r.gradients.insert(r.gradients.end(), g.begin(), g.end());
    });
    return r;
  };
  const auto full = run(cpu::GemmCompute::fp32), low = run(cpu::GemmCompute::bf16);
  INFO("loss fp32 " << full.loss << ", bf16 " << low.loss);
  REQUIRE(std::abs(low.loss - full.loss) <= 1e-2 * std::abs(full.loss));
  const double e = relative_l2(low.gradients, full.gradients);
  INFO("gradients' relative L2 distance " << e);
  REQUIRE(e < 1e-2);
  REQUIRE(e > 1e-6);
}
