// The float 3x3 convolutions on Winograd F(2x2, 3x3) and F(4x4, 3x3) (backends/cpu/winograd.hpp): the path and
// variant taken where each pays and not elsewhere; forward and both gradients of each variant equal to the double
// backend's direct convolution (whose gradients the op driver checks against finite differences) at partial tiles,
// partial packs of tiles and channels, several images and several chunks; through the CPU backend, the gradients'
// assign / accumulate contract and null pointers, and results independent of what the reused workspace held before.
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

TEST_CASE("Winograd's 4x4 tiles where an image has enough of them, its 2x2 tiles at SD's 16x16 level", "[winograd][conv2d]") {
  using cpu::winograd::choose;
  using cpu::winograd::Variant;
  CHECK(choose(conv3x3(2, 320, 64, 64, 320)) == Variant::f4x4);
  CHECK(choose(conv3x3(2, 1920, 32, 32, 640)) == Variant::f4x4);
  CHECK(choose(conv3x3(1, 128, 512, 512, 128)) == Variant::f4x4);
  CHECK(choose(conv3x3(2, 1280, 16, 16, 1280)) == Variant::f2x2);  // 16 tiles of 4x4 per image
  CHECK(choose(conv3x3(2, 1280, 8, 8, 1280)) == Variant::none);
  CHECK(choose(conv3x3(2, 32, 64, 64, 32)) == Variant::none);
  // by the tiles of one image: an image takes the same arithmetic in any batch (a data-parallel slice, a micro-batch)
  for (const std::int64_t size : {8, 15, 16, 31, 32, 64}) {
    INFO("size " << size);
    CHECK(choose(conv3x3(1, 640, size, size, 640)) == choose(conv3x3(4, 640, size, size, 640)));
  }
}

namespace {

// The three passes of one Winograd variant, called directly (the backend takes the variant `choose` picks): out with
// the bias, din assigned, dw accumulated onto c.dw0.
Results<float> run_variant(const Conv& c, cpu::winograd::Variant variant) {
  const FloatVec in = to_float(c.in), w = to_float(c.w), bias = to_float(c.bias), dout = to_float(c.dout);
  Results<float> r;
  r.out.assign(c.dout.size(), std::numeric_limits<float>::quiet_NaN());
  r.din.assign(c.in.size(), std::numeric_limits<float>::quiet_NaN());
  r.dw = to_float(c.dw0);
  cpu::Workspace workspace;
  cpu::winograd::conv3x3_forward(workspace, r.out.data(), in.data(), w.data(), bias.data(), c.d, variant);
  cpu::winograd::conv3x3_backward_data(workspace, r.din.data(), dout.data(), w.data(), c.d, variant);
  cpu::winograd::conv3x3_backward_filter(workspace, r.dw.data(), dout.data(), in.data(), c.d, variant);
  return r;
}

}  // namespace

TEST_CASE("Winograd convolutions equal the double direct convolution: output, input and filter gradients", "[winograd][conv2d]") {
  struct Shape {
    const char* what;
    nn::Conv2dDims d;
  };
  const Shape shapes[] = {
      {"odd height and width (partial tiles and packs of tiles), 3 images", conv3x3(3, 64, 13, 17, 72)},
      {"more output than input channels, one image", conv3x3(1, 64, 24, 23, 96)},
      {"channel counts that are no multiple of a pack", conv3x3(2, 67, 11, 30, 65)},
      {"several chunks of tile rows, a chunk ending inside an image", conv3x3(2, 256, 34, 256, 64)},
  };
  CpuBackendT<double> reference;
  std::uint64_t seed = 100;
  for (const auto& s : shapes) {
    const Conv c(s.d, seed += 10);
    const auto want = run(reference, c);
    Vec dw(want.dw.size());  // the gradient added, without the initial values it was added to
    for (std::size_t i = 0; i < dw.size(); ++i) dw[i] = want.dw[i] - c.dw0[i];
    for (const auto variant : {cpu::winograd::Variant::f2x2, cpu::winograd::Variant::f4x4}) {
      INFO(s.what << (variant == cpu::winograd::Variant::f2x2 ? ", F(2x2, 3x3)" : ", F(4x4, 3x3)"));
      const auto got = run_variant(c, variant);
      FloatVec got_dw(got.dw.size());
      for (std::size_t i = 0; i < dw.size(); ++i) got_dw[i] = static_cast<float>(got.dw[i] - c.dw0[i]);
      CHECK(relative_l2(got.out, want.out) < 1e-5);
      CHECK(relative_l2(got.din, want.din) < 1e-5);
      CHECK(relative_l2(got_dw, dw) < 1e-5);
    }
  }
}

TEST_CASE("the CPU backend's Winograd convolutions: bias gradient and accumulation as the direct path's", "[winograd][conv2d]") {
  for (const auto& d : {conv3x3(3, 64, 15, 17, 72), conv3x3(2, 64, 32, 32, 64)}) {  // F(2x2, 3x3), F(4x4, 3x3)
    const Conv c(d, 200);
    CpuBackendT<float> fp32;
    CpuBackendT<double> reference;
    REQUIRE(cpu::conv_path<float>(c.d) == cpu::ConvPath::winograd);
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
