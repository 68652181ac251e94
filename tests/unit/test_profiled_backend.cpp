// The benchmarks' profiling backend (benchmarks/profiled_backend.hpp): per-op calls and the matrix arithmetic it
// counts for each call, checked on small ops whose products are counted by hand here.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "dreambooth/backends/cpu.hpp"
#include "profiled_backend.hpp"

using namespace dreambooth;
using P = bench::ProfiledBackend<CpuBackend>;

namespace {
const auto& total(const P& b, std::string_view op) {
  for (std::size_t i = 0; i < kBackendOps.size(); ++i)
    if (kBackendOps[i].name == op) return b.totals()[i];
  FAIL("no op " << op);
  return b.totals()[0];
}
}  // namespace

TEST_CASE("the profiling backend counts each op's products: 2 FLOP per multiply-add, one product per gradient asked for", "[profile]") {
  P b;
  std::vector<float> x(64, 0.5f), w(64, 0.25f), y(64), dx(64), dw(64);
  const nn::LinearDims linear{6, 5, 4};  // 6 x 5 x 4 = 120 multiply-adds
  b.linear_forward(y.data(), x.data(), w.data(), nullptr, linear);
  CHECK(total(b, "linear_forward").calls == 0);  // profiling off: nothing counted

  b.profiling = true;
  b.linear_forward(y.data(), x.data(), w.data(), nullptr, linear);
  b.linear_backward(dx.data(), nullptr, nullptr, y.data(), x.data(), w.data(), linear);    // the input gradient only
  b.linear_backward(dx.data(), dw.data(), nullptr, y.data(), x.data(), w.data(), linear);  // and the weight gradient
  CHECK(total(b, "linear_forward").calls == 1);
  CHECK(total(b, "linear_forward").flops == 240);
  CHECK(total(b, "linear_backward").calls == 2);
  CHECK(total(b, "linear_backward").flops == 240 + 480);

  b.gemm(false, true, 3, 2, 7, 1.0f, x.data(), 7, w.data(), 7, 0.0f, y.data(), 2);  // 42 multiply-adds
  CHECK(total(b, "gemm").flops == 84);

  // a 3x3 convolution, 2 -> 3 channels over a 4x4 image with padding 1: 3 * 16 outputs of 2 * 9 multiply-adds each
  const nn::Conv2dDims conv{1, 2, 4, 4, 3, 3, 3, 1, 1, 1, 1};
  std::vector<float> image(2 * 16, 1.0f), kernel(3 * 2 * 9, 0.1f), out(3 * 16), dimage(image.size()), dkernel(kernel.size());
  b.conv2d_forward(out.data(), image.data(), kernel.data(), nullptr, conv);
  b.conv2d_backward(nullptr, dkernel.data(), nullptr, out.data(), image.data(), kernel.data(), conv);
  CHECK(total(b, "conv2d_forward").flops == 2 * 3 * 16 * 18);
  CHECK(total(b, "conv2d_backward").flops == 2 * 3 * 16 * 18);

  // attention: 1 image, 2 heads of 4, 3 queries over 5 keys: a product is 2 * 3 * 5 * 4 multiply-adds
  const nn::AttentionDims att{1, 2, 3, 5, 4};
  const double product = 2.0 * 2 * 3 * 5 * 4;
  std::vector<float> q(3 * 8, 0.1f), k(5 * 8, 0.2f), v(5 * 8, 0.3f), o(3 * 8), lse(2 * 3), dq(q.size()), dk(k.size()), dv(v.size());
  b.attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), att);
  CHECK(total(b, "attention_forward").flops == 2 * product);  // scores, then P V
  b.attention_backward(dq.data(), nullptr, nullptr, o.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), att);
  CHECK(total(b, "attention_backward").flops == 3 * product);  // scores again, dP, dQ
  b.attention_backward(dq.data(), dk.data(), dv.data(), o.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), att);
  CHECK(total(b, "attention_backward").flops == 3 * product + 5 * product);  // and dV, dK

  b.fill(y.data(), 0.0f, y.size());
  CHECK(total(b, "fill").calls == 1);
  CHECK(total(b, "fill").flops == 0);
  CHECK(b.profiled_flops() == 240 + 720 + 84 + 2 * 2 * 3 * 16 * 18 + 10 * product);

  const auto json = b.profile_json();
  CHECK(json.find("\"op\": \"attention_backward\"") != std::string::npos);
  CHECK(json.find("\"gflop_per_second\"") != std::string::npos);
  CHECK(json.find("\"gflop\": 0.0\n") != std::string::npos);  // the total, in GFLOP
}
