// The float 3x3 convolutions on Winograd F(2x2, 3x3) (backends/cpu/winograd.hpp), through the CPU backend: the path
// taken where it pays and not elsewhere, forward and both gradients equal to the double backend's direct convolution
// (whose gradients the op driver checks against finite differences) at partial tiles, several images and several
// chunks, the gradients' assign / accumulate contract and null pointers, and results independent of what the reused
// workspace held before.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "dreambooth/backends/cpu.hpp"
#include "gradcheck.hpp"

using namespace dreambooth;

namespace {

using Vec = std::vector<double>;
using FloatVec = std::vector<float>;

FloatVec to_float(const Vec& v) { return FloatVec(v.begin(), v.end()); }

double relative_l2(const FloatVec& got, const Vec& expected) {
  double error = 0, norm = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    error += (got[i] - expected[i]) * (got[i] - expected[i]);
    norm += expected[i] * expected[i];
  }
  return std::sqrt(error / norm);
}

nn::Conv2dDims conv3x3(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, std::int64_t k) { return {n, c, h, w, k, 3, 3, 1, 1, 1, 1}; }

std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// A convolution's operands, and what a backend computed from them: out, din (assigned) and dweight / dbias
// (accumulated onto their initial values).
struct Conv {
  nn::Conv2dDims d;
  Vec in, w, bias, dout, dw0, dbias0;
  explicit Conv(const nn::Conv2dDims& dims, std::uint64_t seed) : d(dims) {
    in = testing::random_vector(sz(d.batch * d.in_channels * d.height * d.width), seed);
    w = testing::random_vector(sz(d.out_channels * d.in_channels * 9), seed + 1, 0.1);
    bias = testing::random_vector(sz(d.out_channels), seed + 2);
    dout = testing::random_vector(sz(d.batch * d.out_channels * d.out_height() * d.out_width()), seed + 3);
    dw0 = testing::random_vector(w.size(), seed + 4);
    dbias0 = testing::random_vector(bias.size(), seed + 5);
  }
};

template <class T>
struct Results {
  std::vector<T> out, din, dw, dbias;
};

template <class T>
Results<T> run(CpuBackendT<T>& b, const Conv& c, bool want_din = true, bool want_dw = true) {
  const std::vector<T> in(c.in.begin(), c.in.end()), w(c.w.begin(), c.w.end()), bias(c.bias.begin(), c.bias.end()),
      dout(c.dout.begin(), c.dout.end());
  Results<T> r;
  r.out.assign(c.dout.size(), std::numeric_limits<T>::quiet_NaN());  // assigned: no NaN may survive
  r.din.assign(c.in.size(), std::numeric_limits<T>::quiet_NaN());
  r.dw.assign(c.dw0.begin(), c.dw0.end());
  r.dbias.assign(c.dbias0.begin(), c.dbias0.end());
  b.conv2d_forward(r.out.data(), in.data(), w.data(), bias.data(), c.d);
  b.conv2d_backward(want_din ? r.din.data() : nullptr, want_dw ? r.dw.data() : nullptr, r.dbias.data(), dout.data(), in.data(), w.data(), c.d);
  return r;
}

}  // namespace

TEST_CASE("float 3x3 convolutions take Winograd where it pays, the direct paths elsewhere", "[winograd][conv2d]") {
  using cpu::ConvPath;
  // SD 1.5's UNet at batch 2: the 64x64, 32x32 and 16x16 levels, not the 8x8 one (the filter transform outweighs the saving)
  CHECK(cpu::conv_path<float>(conv3x3(2, 320, 64, 64, 320)) == ConvPath::winograd);
  CHECK(cpu::conv_path<float>(conv3x3(2, 1280, 32, 32, 640)) == ConvPath::winograd);
  CHECK(cpu::conv_path<float>(conv3x3(2, 1280, 16, 16, 1280)) == ConvPath::winograd);
  CHECK(cpu::conv_path<float>(conv3x3(1, 1280, 16, 16, 1280)) == ConvPath::winograd);
  CHECK(cpu::conv_path<float>(conv3x3(2, 1280, 8, 8, 1280)) == ConvPath::im2col);
  // the VAE's full-resolution convolutions, but not its 3-channel image in and out
  CHECK(cpu::conv_path<float>(conv3x3(1, 128, 512, 512, 128)) == ConvPath::winograd);
  CHECK(cpu::conv_path<float>(conv3x3(1, 3, 512, 512, 128)) == ConvPath::shifted_gemm);
  CHECK(cpu::conv_path<float>(conv3x3(1, 128, 512, 512, 3)) == ConvPath::shifted_gemm);
  // few channels (the demo's first level): the transforms would dominate
  CHECK(cpu::conv_path<float>(conv3x3(2, 32, 16, 16, 32)) == ConvPath::shifted_gemm);
  // double (the reference), strided, 1x1
  CHECK(cpu::conv_path<double>(conv3x3(2, 320, 64, 64, 320)) == ConvPath::shifted_gemm);
  CHECK(cpu::conv_path<float>({2, 320, 64, 64, 320, 3, 3, 2, 2, 1, 1}) == ConvPath::im2col);
  CHECK(cpu::conv_path<float>({2, 320, 64, 64, 320, 1, 1, 1, 1, 0, 0}) == ConvPath::pointwise);
}

TEST_CASE("Winograd convolutions equal the double direct convolution: output, input and filter gradients", "[winograd][conv2d]") {
  struct Shape {
    const char* what;
    nn::Conv2dDims d;
  };
  const Shape shapes[] = {
      {"odd height and width (partial tiles), 3 images", conv3x3(3, 64, 13, 17, 72)},
      {"more output than input channels, one image", conv3x3(1, 64, 24, 23, 96)},
      {"three chunks of tile rows, a chunk ending inside an image", conv3x3(2, 256, 34, 256, 64)},
  };
  CpuBackendT<float> fp32;
  CpuBackendT<double> reference;
  std::uint64_t seed = 100;
  for (const auto& s : shapes) {
    INFO(s.what);
    REQUIRE(cpu::conv_path<float>(s.d) == cpu::ConvPath::winograd);
    const Conv c(s.d, seed += 10);
    const auto got = run(fp32, c);
    const auto want = run(reference, c);
    // dweight and dbias are compared as the gradients added, without the initial values they were added to
    Vec dw(want.dw.size()), dbias(want.dbias.size());
    FloatVec got_dw(got.dw.size()), got_dbias(got.dbias.size());
    for (std::size_t i = 0; i < dw.size(); ++i) {
      dw[i] = want.dw[i] - c.dw0[i];
      got_dw[i] = static_cast<float>(got.dw[i] - c.dw0[i]);
    }
    for (std::size_t i = 0; i < dbias.size(); ++i) {
      dbias[i] = want.dbias[i] - c.dbias0[i];
      got_dbias[i] = static_cast<float>(got.dbias[i] - c.dbias0[i]);
    }
    CHECK(relative_l2(got.out, want.out) < 1e-5);
    CHECK(relative_l2(got.din, want.din) < 1e-5);
    CHECK(relative_l2(got_dw, dw) < 1e-5);
    CHECK(relative_l2(got_dbias, dbias) < 1e-5);
  }
}

TEST_CASE("Winograd gradients: each alone equals the joint call's, run to run bit for bit", "[winograd][conv2d]") {
  const Conv c(conv3x3(2, 64, 15, 17, 65), 300);
  REQUIRE(cpu::conv_path<float>(c.d) == cpu::ConvPath::winograd);
  CpuBackendT<float> b;
  const auto both = run(b, c);
  const auto again = run(b, c);
  const auto data_only = run(b, c, true, false);
  const auto filter_only = run(b, c, false, true);
  CHECK(again.out == both.out);
  CHECK(again.din == both.din);
  CHECK(again.dw == both.dw);
  CHECK(data_only.din == both.din);
  CHECK(data_only.dw == to_float(c.dw0));  // passed as null: untouched
  CHECK(filter_only.dw == both.dw);
}

TEST_CASE("convolutions do not depend on what the reused workspace held before", "[winograd][conv2d]") {
  // One large Winograd convolution leaves its tiles in the workspace; every path run after it in the same backend must
  // give what a fresh backend gives (the direct paths' zero padding included).
  const Conv large(conv3x3(2, 64, 40, 40, 64), 400);
  const Conv shapes[] = {Conv(conv3x3(2, 64, 15, 17, 65), 410), Conv(conv3x3(2, 3, 9, 10, 5), 420), Conv(conv3x3(1, 6, 2, 2, 40), 430),
                         Conv({2, 4, 9, 8, 6, 3, 3, 2, 2, 1, 1}, 440)};
  CpuBackendT<float> used;
  for (const auto& c : shapes) {
    INFO("path " << static_cast<int>(cpu::conv_path<float>(c.d)));
    run(used, large);
    REQUIRE(used.workspace_bytes() > 0);
    const auto after_large = run(used, c);
    CpuBackendT<float> fresh;
    const auto alone = run(fresh, c);
    CHECK(after_large.out == alone.out);
    CHECK(after_large.din == alone.din);
    CHECK(after_large.dw == alone.dw);
    CHECK(after_large.dbias == alone.dbias);
  }
}
