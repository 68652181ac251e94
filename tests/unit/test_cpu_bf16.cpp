// The CPU backend's bf16 compute (backends/cpu/gemm_bf16.hpp, conv2d_onednn.hpp, attention_bf16.hpp): float -> bf16
// rounding; gemm_bf16 and the convolutions (forward, input and weight gradients; 1x1, 3x3, strided, asymmetric padding)
// against the same products of the rounded operands summed in double (every transpose, alpha and beta, padded leading
// dimensions); the linear op, attention (forward and every gradient; padded head dimensions, causal; short key
// sequences stay fp32; on AMX and on oneDNN's matmul, over several key chunks), the AMX GEMM kernel and its operand
// packings, and the DreamBooth training step (UNet forward and backward, loss and every gradient) in bf16
// against fp32 (relative L2 <= 1e-2, and not equal: bf16 did run). The kernel checks need a CPU with AVX512-BF16 or AMX
// and a build with oneDNN; elsewhere they are skipped with a warning.
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

// low (bf16) within 1e-2 of full (fp32), and not equal: bf16 did run.
void compare(const std::vector<float>& low, const std::vector<float>& full, const char* what) {
  INFO(what);
  const double e = relative_l2(low, full);
  REQUIRE(e < 1e-2);
  REQUIRE(e > 1e-5);
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

TEST_CASE("the CPU backend's linear op in bf16 agrees with fp32 within 1e-2", "[bf16]") {
  if (!bf16_kernel()) return;
  CpuBackend f32, b16;
  b16.set_compute(cpu::GemmCompute::bf16);
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
}

namespace {

float rounded(float x) { return cpu::from_bf16(cpu::to_bf16(x)); }

// The convolution of the bf16-rounded operands summed in double: out[N, K, P, Q], din[N, C, H, W] and dweight[K, C, R, S]
// from in, weight and dout, as oneDNN's bf16 kernels should compute them up to fp32 accumulation order.
struct RoundedConvolution {
  std::vector<float> out, din, dweight;
  RoundedConvolution(const nn::Conv2dDims& d, const std::vector<float>& in, const std::vector<float>& weight, const std::vector<float>& dout) {
    const auto N = d.batch, C = d.in_channels, H = d.height, W = d.width, K = d.out_channels, R = d.kernel_h, S = d.kernel_w;
    const auto P = d.out_height(), Q = d.out_width();
    std::vector<double> o(static_cast<std::size_t>(N * K * P * Q)), di(in.size()), dw(weight.size());
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k)
        for (std::int64_t p = 0; p < P; ++p)
          for (std::int64_t q = 0; q < Q; ++q) {
            const auto oi = static_cast<std::size_t>(((n * K + k) * P + p) * Q + q);
            for (std::int64_t c = 0; c < C; ++c)
              for (std::int64_t r = 0; r < R; ++r)
                for (std::int64_t t = 0; t < S; ++t) {
                  const auto y = p * d.stride_h - d.pad_h + r, x = q * d.stride_w - d.pad_w + t;
                  if (y < 0 || y >= H || x < 0 || x >= W) continue;
                  const auto ii = static_cast<std::size_t>(((n * C + c) * H + y) * W + x),
                             wi = static_cast<std::size_t>(((k * C + c) * R + r) * S + t);
                  o[oi] += static_cast<double>(rounded(in[ii])) * rounded(weight[wi]);
                  di[ii] += static_cast<double>(rounded(dout[oi])) * rounded(weight[wi]);
                  dw[wi] += static_cast<double>(rounded(dout[oi])) * rounded(in[ii]);
                }
          }
    out.assign(o.begin(), o.end()), din.assign(di.begin(), di.end()), dweight.assign(dw.begin(), dw.end());
  }
};

std::vector<float> minus(std::vector<float> a, const std::vector<float>& b) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
  return a;
}

}  // namespace

TEST_CASE("the CPU backend's convolutions in bf16: the rounded operands' exact products, within 1e-2 of fp32", "[bf16]") {
  if (!bf16_kernel()) return;
  CpuBackend f32, b16;
  b16.set_compute(cpu::GemmCompute::bf16);
  struct Geometry {
    std::int64_t kernel, stride, pad, pad_end;
    bool bias;
  };
  // 1x1; 3x3 same (with and without bias); strided 3x3; the VAE's downsampling, padded (0, 1) at each side
  for (const auto g : {Geometry{1, 1, 0, 0, true}, Geometry{3, 1, 1, 1, true}, Geometry{3, 1, 1, 1, false}, Geometry{3, 2, 1, 1, true},
                       Geometry{3, 2, 0, 1, true}}) {
    nn::Conv2dDims d;
    d.batch = 2, d.in_channels = 16, d.out_channels = 24, d.height = 12, d.width = 10;
    d.kernel_h = d.kernel_w = g.kernel, d.stride_h = d.stride_w = g.stride, d.pad_h = d.pad_w = g.pad, d.pad_bottom = d.pad_right = g.pad_end;
    const auto oh = d.out_height(), ow = d.out_width();
    const auto in = normal(static_cast<std::size_t>(2 * 16 * 12 * 10), 8), w = normal(static_cast<std::size_t>(24 * 16 * g.kernel * g.kernel), 9);
    const auto bias = normal(24, 10), dout = normal(static_cast<std::size_t>(2 * 24 * oh * ow), 11);
    const auto dw0 = normal(w.size(), 12), db0 = normal(24, 13);  // gradients accumulate onto what is there
    std::vector<float> out[2], din[2], dw[2], db[2];
    int i = 0;
    for (auto* b : {&f32, &b16}) {
      out[i].resize(dout.size()), din[i].resize(in.size()), dw[i] = dw0, db[i] = db0;
      b->conv2d_forward(out[i].data(), in.data(), w.data(), g.bias ? bias.data() : nullptr, d);
      b->conv2d_backward(din[i].data(), dw[i].data(), db[i].data(), dout.data(), in.data(), w.data(), d);
      ++i;
    }
    INFO("kernel " << g.kernel << " stride " << g.stride << " padding " << g.pad << ", " << g.pad_end << (g.bias ? "" : ", no bias"));
    compare(out[1], out[0], "conv2d forward");
    compare(din[1], din[0], "conv2d input gradient");
    compare(minus(dw[1], dw0), minus(dw[0], dw0), "conv2d weight gradient");
    REQUIRE(relative_l2(minus(db[1], db0), minus(db[0], db0)) < 1e-6);  // the bias gradient: dout's sums, fp32 in both

    RoundedConvolution want(d, in, w, dout);
    auto out_want = want.out;
    if (g.bias)
      for (std::size_t j = 0; j < out_want.size(); ++j) out_want[j] += bias[j / static_cast<std::size_t>(oh * ow) % 24];
    REQUIRE(relative_l2(out[1], out_want) < 1e-6);
    REQUIRE(relative_l2(din[1], want.din) < 1e-6);
    REQUIRE(relative_l2(minus(dw[1], dw0), want.dweight) < 1e-6);

    // the input and the weight gradient alone give the same
    std::vector<float> din_alone(in.size()), dw_alone = dw0;
    b16.conv2d_backward(din_alone.data(), static_cast<float*>(nullptr), static_cast<float*>(nullptr), dout.data(), in.data(), w.data(), d);
    b16.conv2d_backward(static_cast<float*>(nullptr), dw_alone.data(), static_cast<float*>(nullptr), dout.data(), in.data(), w.data(), d);
    REQUIRE(din_alone == din[1]);
    REQUIRE(dw_alone == dw[1]);
  }
}

TEST_CASE("attention in bf16: within 1e-2 of fp32 from 256 keys on, fp32 below", "[bf16]") {
  if (!bf16_kernel()) return;
  CpuBackend f32, b16;
  b16.set_compute(cpu::GemmCompute::bf16);
  struct Shape {
    std::int64_t q_len, kv_len, head_dim;
    bool causal;
  };
  // head_dim 40 runs padded to 64 (SD's first level), 64 unpadded; a causal mask; 77 keys (the text context) stay fp32
  for (const auto s : {Shape{300, 260, 40, false}, Shape{260, 260, 64, true}, Shape{200, 77, 40, false}}) {
    nn::AttentionDims d;
    d.batch = 2, d.heads = 3, d.q_len = s.q_len, d.kv_len = s.kv_len, d.head_dim = s.head_dim, d.causal = s.causal;
    const auto width = d.heads * d.head_dim;
    const auto q = normal(static_cast<std::size_t>(d.batch * d.q_len * width), 21),
               k = normal(static_cast<std::size_t>(d.batch * d.kv_len * width), 22),
               v = normal(static_cast<std::size_t>(d.batch * d.kv_len * width), 23), dout = normal(q.size(), 24);
    std::vector<float> out[2], lse[2], dq[2], dk[2], dv[2];
    int i = 0;
    for (auto* b : {&f32, &b16}) {
      out[i].resize(q.size()), lse[i].resize(static_cast<std::size_t>(d.batch * d.heads * d.q_len)), dq[i].resize(q.size()), dk[i].resize(k.size()),
          dv[i].resize(v.size());
      b->attention_forward(out[i].data(), lse[i].data(), q.data(), k.data(), v.data(), d);
      b->attention_backward(dq[i].data(), dk[i].data(), dv[i].data(), dout.data(), q.data(), k.data(), v.data(), out[i].data(), lse[i].data(), d);
      ++i;
    }
    INFO("q_len " << s.q_len << " kv_len " << s.kv_len << " head_dim " << s.head_dim << (s.causal ? " causal" : ""));
    if (s.kv_len < 256) {  // too short for bf16 to pay: fp32, bit for bit
      REQUIRE(out[1] == out[0]);
      REQUIRE(dq[1] == dq[0]);
      REQUIRE(dk[1] == dk[0]);
      REQUIRE(dv[1] == dv[0]);
      continue;
    }
    compare(out[1], out[0], "attention output");
    REQUIRE(relative_l2(lse[1], lse[0]) < 1e-3);
    compare(dq[1], dq[0], "attention query gradient");
    compare(dk[1], dk[0], "attention key gradient");
    compare(dv[1], dv[0], "attention value gradient");
    // each gradient alone equals its value from the joint call; bit for bit from run to run
    std::vector<float> alone(k.size());
    b16.attention_backward(static_cast<float*>(nullptr), alone.data(), static_cast<float*>(nullptr), dout.data(), q.data(), k.data(), v.data(),
                           out[1].data(), lse[1].data(), d);
    REQUIRE(alone == dk[1]);
    b16.attention_backward(static_cast<float*>(nullptr), static_cast<float*>(nullptr), alone.data(), dout.data(), q.data(), k.data(), v.data(),
                           out[1].data(), lse[1].data(), d);
    REQUIRE(alone == dv[1]);
    std::vector<float> dq_alone(q.size()), again(q.size());
    b16.attention_backward(dq_alone.data(), static_cast<float*>(nullptr), static_cast<float*>(nullptr), dout.data(), q.data(), k.data(), v.data(),
                           out[1].data(), lse[1].data(), d);
    REQUIRE(dq_alone == dq[1]);
    b16.attention_forward(again.data(), lse[0].data(), q.data(), k.data(), v.data(), d);
    REQUIRE(again == out[1]);
  }
}

TEST_CASE("the AMX bf16 GEMM equals the rounded operands' products summed exactly; its packings agree", "[bf16]") {
  if (!cpu::amx::amx_bf16_available()) {
    WARN("no AMX on this CPU (or no permission for its tile state): the AMX kernel checks are skipped");
    return;
  }
  const std::int64_t M = 64, N = 96, K = 160, lda = K + 32, ldc = N + 16;
  const auto a = normal(static_cast<std::size_t>(M * lda), 31), b = normal(static_cast<std::size_t>(K * N), 32);
  std::vector<std::uint16_t> a16(a.size()), panels(static_cast<std::size_t>(K * N)), pairs(panels.size());
  for (std::size_t i = 0; i < a.size(); ++i) a16[i] = cpu::to_bf16(a[i]);
  cpu::amx::pack_panels(panels.data(), b.data(), K, N, N, 1);
  cpu::amx::pack_row_pairs(pairs.data(), b.data(), K, N, N);
  REQUIRE(pairs == panels);  // the vectorised packing of a row-major operand, element for element
  // a transposed source: B[k, n] = bt[n * K + k]
  std::vector<float> bt(b.size());
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t n = 0; n < N; ++n) bt[static_cast<std::size_t>(n * K + k)] = b[static_cast<std::size_t>(k * N + n)];
  std::vector<std::uint16_t> from_transposed(panels.size());
  cpu::amx::pack_panels(from_transposed.data(), bt.data(), K, N, 1, K);
  REQUIRE(from_transposed == panels);
  const auto c0 = normal(static_cast<std::size_t>(M * ldc), 33);
  for (const bool accumulate : {false, true}) {
    auto c = c0;
    cpu::amx::gemm(M, N, K, a16.data(), lda, panels.data(), c.data(), ldc, accumulate);
    std::vector<float> got, want;
    for (std::int64_t i = 0; i < M; ++i)
      for (std::int64_t j = 0; j < ldc; ++j) {
        const auto at = static_cast<std::size_t>(i * ldc + j);
        if (j >= N) {  // columns past N untouched
          REQUIRE(c[at] == c0[at]);
          continue;
        }
        double sum = accumulate ? c0[at] : 0.0;
        for (std::int64_t p = 0; p < K; ++p)
          sum += static_cast<double>(cpu::from_bf16(a16[static_cast<std::size_t>(i * lda + p)])) *
                 cpu::from_bf16(cpu::to_bf16(b[static_cast<std::size_t>(p * N + j)]));
        got.push_back(c[at]);
        want.push_back(static_cast<float>(sum));
      }
    INFO("accumulate " << accumulate);
    REQUIRE(relative_l2(got, want) < 1e-6);
  }
}

TEST_CASE("attention on AMX and on oneDNN's matmul: each within 1e-2 of fp32, over several key chunks", "[bf16]") {
  if (!bf16_kernel()) return;
  CpuBackend f32;
  nn::AttentionDims d;
  d.batch = 1, d.heads = 2, d.kv_len = 1100, d.head_dim = 40;  // 1100 keys: three 512-key chunks, the last partial
  for (const bool causal : {false, true}) {
    d.causal = causal;
    d.q_len = causal ? d.kv_len : 200;  // a causal mask is square
    const auto width = d.heads * d.head_dim;
    const auto q = normal(static_cast<std::size_t>(d.batch * d.q_len * width), 41),
               k = normal(static_cast<std::size_t>(d.batch * d.kv_len * width), 42), v = normal(k.size(), 43), dout = normal(q.size(), 44);
    std::vector<float> out(q.size()), lse(static_cast<std::size_t>(d.batch * d.heads * d.q_len)), dq(q.size()), dk(k.size()), dv(v.size());
    f32.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);
    f32.attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), d);
    for (const bool amx : {false, true}) {
      if (amx && !cpu::amx::amx_bf16_available()) continue;
      INFO((amx ? "AMX" : "oneDNN") << (causal ? ", causal" : ""));
      std::vector<float> o(out.size()), l(lse.size()), gq(dq.size()), gk(dk.size()), gv(dv.size());
      if (amx) {
        cpu::attention_forward_amx(o.data(), l.data(), q.data(), k.data(), v.data(), d);
        cpu::attention_backward_amx(gq.data(), gk.data(), gv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), d);
      } else {
#if DREAMBOOTH_WITH_ONEDNN
        cpu::attention_forward_bf16(o.data(), l.data(), q.data(), k.data(), v.data(), d);
        cpu::attention_backward_bf16(gq.data(), gk.data(), gv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), d);
#endif
      }
      compare(o, out, "attention output");
      REQUIRE(relative_l2(l, lse) < 1e-3);
      compare(gq, dq, "attention query gradient");
      compare(gk, dk, "attention key gradient");
      compare(gv, dv, "attention value gradient");
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
