// Every op's forward on a small case whose answer is worked out by hand (in the comments), on the fp32 backend.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "dreambooth/backends/cpu.hpp"

using namespace dreambooth;
using V = std::vector<float>;

namespace {
void require_close(const V& got, const V& expected, float tol = 1e-6f) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("index " << i << ": got " << got[i] << ", expected " << expected[i]);
    REQUIRE(std::abs(got[i] - expected[i]) <= tol * std::max(1.0f, std::abs(expected[i])));
  }
}
}  // namespace

TEST_CASE("linear forward: x W^T + b", "[forward][linear]") {
  CpuBackend b;
  const V in = {1, 2, -1, 0.5f};   // [2, 2]
  const V w = {1, 0, 0, 1, 1, 1};  // [3, 2]: identity rows, then the sum
  const V bias = {0.5f, 0, -1};
  V out(6);
  b.linear_forward(out.data(), in.data(), w.data(), bias.data(), {2, 2, 3});
  require_close(out, {1.5f, 2, 2, -0.5f, 0.5f, -1.5f});
}

TEST_CASE("conv2d forward on ones: the count of taps inside the image", "[forward][conv2d]") {
  CpuBackend b;
  SECTION("3x3 padding 1 over a 3x3 image: corners 4, edges 6, centre 9, plus bias") {
    const V in(9, 1.0f), w(9, 1.0f), bias = {0.25f};
    V out(9);
    b.conv2d_forward(out.data(), in.data(), w.data(), bias.data(), {1, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1});
    require_close(out, {4.25f, 6.25f, 4.25f, 6.25f, 9.25f, 6.25f, 4.25f, 6.25f, 4.25f});
  }
  SECTION("3x3 stride 2 padding 1 over 4x4: output 2x2 of 4, 6, 6, 9") {
    const V in(16, 1.0f), w(9, 1.0f);
    V out(4);
    b.conv2d_forward(out.data(), in.data(), w.data(), nullptr, {1, 1, 4, 4, 1, 3, 3, 2, 2, 1, 1});
    require_close(out, {4, 6, 6, 9});
  }
  SECTION("1x1 mixes channels: out = 2 * c0 - c1") {
    const V in = {1, 2, 3, 4, 10, 20, 30, 40};  // [1, 2, 2, 2]
    const V w = {2, -1};                        // [1, 2, 1, 1]
    V out(4);
    b.conv2d_forward(out.data(), in.data(), w.data(), nullptr, {1, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0});
    require_close(out, {-8, -16, -24, -32});
  }
  SECTION("3x3 kernel is a cross-correlation (not flipped)") {
    // a single 1 in the middle of a 3x3 image; kernel with value k at (r, s) = 1 + r * 3 + s
    V in(9, 0.0f);
    in[4] = 1;
    const V w = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    V out(9);
    b.conv2d_forward(out.data(), in.data(), w.data(), nullptr, {1, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1});
    // out(y, x) = w(1 - (y - 1), 1 - (x - 1)) = w(2 - y, 2 - x): the kernel appears rotated by 180 degrees
    require_close(out, {9, 8, 7, 6, 5, 4, 3, 2, 1});
  }
}

TEST_CASE("group norm forward: one group of [1, 2, 3, 4]", "[forward][group_norm]") {
  CpuBackend b;
  const V in = {1, 2, 3, 4, 5, 5, 5, 5};  // [1, 2, 4], 2 groups of one channel
  const V gamma = {2, 1}, beta = {0, 3};
  V out(8), mean(2), rstd(2);
  b.group_norm_forward(out.data(), mean.data(), rstd.data(), in.data(), gamma.data(), beta.data(), {1, 2, 4, 2, 1e-5});
  // group 0: mean 2.5, variance 1.25, rstd = 1 / sqrt(1.25 + 1e-5); group 1: constant, normalises to 0 -> beta
  const float r = 1.0f / std::sqrt(1.25f + 1e-5f);
  require_close(out, {-3 * r, -r, r, 3 * r, 3, 3, 3, 3}, 1e-5f);
  require_close(mean, {2.5f, 5.0f});
}

TEST_CASE("layer norm forward: [0, 2] normalises to [-1, 1]", "[forward][layer_norm]") {
  CpuBackend b;
  const V in = {0, 2, 3, 5}, gamma = {1, 1}, beta = {0, 0.5f};  // each row: mean +-1, variance 1
  V out(4), mean(2), rstd(2);
  b.layer_norm_forward(out.data(), mean.data(), rstd.data(), in.data(), gamma.data(), beta.data(), {2, 2, 0.0});
  require_close(out, {-1, 1.5f, -1, 1.5f});
}

TEST_CASE("activations at known points", "[forward][activation]") {
  CpuBackend b;
  const V x = {0, 1, -1};
  V y(3);
  b.silu_forward(y.data(), x.data(), 3);  // x / (1 + e^-x): 0, 0.7310585786, -0.2689414214
  require_close(y, {0, 0.7310585786f, -0.2689414214f});
  b.gelu_forward(y.data(), x.data(), 3);  // x * Phi(x): Phi(1) = 0.8413447461
  require_close(y, {0, 0.8413447461f, -0.1586552539f});
  b.quick_gelu_forward(y.data(), x.data(), 3);  // x * sigmoid(1.702 x): sigmoid(1.702) = 0.8457957
  require_close(y, {0, 0.8457957f, -0.1542043f}, 2e-6f);
  const V ab = {2, -3, 1, 0};  // one row: a = [2, -3], b = [1, 0] -> [2 gelu(1), -3 gelu(0)] = [1.6826895, 0]
  V g(2);
  b.geglu_forward(g.data(), ab.data(), 1, 2);
  require_close(g, {1.6826894922f, 0});
}

TEST_CASE("softmax of [0, ln 2, ln 3] is [1, 2, 3] / 6", "[forward][softmax]") {
  CpuBackend b;
  const V x = {0, std::log(2.0f), std::log(3.0f), 1000, 1000, 1000};  // second row: large equal logits stay finite
  V y(6);
  b.softmax_forward(y.data(), x.data(), 2, 3);
  require_close(y, {1 / 6.0f, 2 / 6.0f, 3 / 6.0f, 1 / 3.0f, 1 / 3.0f, 1 / 3.0f});
}

TEST_CASE("attention with equal scores averages the values; causal averages the prefix", "[forward][attention]") {
  CpuBackend b;
  const V q(6, 0.0f), k = {1, 2, 3, 4, 5, 6};  // [1, 3, 2]: zero queries -> every score 0 -> uniform weights
  const V v = {1, 10, 2, 20, 6, 60};
  V out(6), lse(3);
  b.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), {1, 1, 3, 3, 2, false, 0.0});
  require_close(out, {3, 30, 3, 30, 3, 30});
  require_close(lse, {std::log(3.0f), std::log(3.0f), std::log(3.0f)});
  b.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), {1, 1, 3, 3, 2, true, 0.0});
  require_close(out, {1, 10, 1.5f, 15, 3, 30});  // query i sees keys 0..i
  SECTION("two heads are independent: head 1 has a score 2 ln 2 / scale towards key 1") {
    // heads interleaved: [.., h0 dims, h1 dims]; head_dim 1, scale 1
    const V q2 = {0, 1}, k2 = {0, 0, 0, 2 * std::log(2.0f)}, v2 = {1, 1, 3, 5};  // [1, 1, 2], [1, 2, 2], [1, 2, 2]
    V o2(2), l2(2);
    b.attention_forward(o2.data(), l2.data(), q2.data(), k2.data(), v2.data(), {1, 2, 1, 2, 1, false, 1.0});
    // head 0: uniform over v = 1, 3 -> 2; head 1: weights 1:4 over v = 1, 5 -> 0.2 + 4 = 4.2
    require_close(o2, {2, 4.2f}, 1e-5f);
  }
}

TEST_CASE("nearest 2x upsampling repeats each pixel in a 2x2 block", "[forward][upsample]") {
  CpuBackend b;
  const V in = {1, 2, 3, 4};
  V out(16);
  b.upsample_nearest2x_forward(out.data(), in.data(), 1, 2, 2);
  require_close(out, {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4});
}

TEST_CASE("channel concat and split", "[forward][concat]") {
  CpuBackend b;
  const V a = {1, 2, 3, 4}, c = {9, 8};  // a[2, 2, 1], c[2, 1, 1]
  V out(6);
  b.concat_channels(out.data(), a.data(), c.data(), 2, 2, 1, 1);  // a[2, 2, 1] + c[2, 1, 1] -> [2, 3, 1]
  require_close(out, {1, 2, 9, 3, 4, 8});
  V a2(4), c2(2);
  b.split_channels(a2.data(), c2.data(), out.data(), 2, 2, 1, 1);
  require_close(a2, a);
  require_close(c2, c);
}

TEST_CASE("transpose, per-sample channel bias and channel sums", "[forward][transpose]") {
  CpuBackend b;
  const V in = {1, 2, 3, 4, 5, 6};  // [1, 2, 3]
  V out(6);
  b.transpose(out.data(), in.data(), 1, 2, 3);
  require_close(out, {1, 4, 2, 5, 3, 6});
  const V bias = {10, 20};  // [1, 2]: channel 0 gets 10, channel 1 gets 20
  b.add_channel_bias(out.data(), in.data(), bias.data(), 1, 2, 3);
  require_close(out, {11, 12, 13, 24, 25, 26});
  V sums(2);
  b.channel_sum(sums.data(), in.data(), 1, 2, 3);
  require_close(sums, {6, 15});
}

TEST_CASE("token + position embedding lookup", "[forward][embedding]") {
  CpuBackend b;
  const V tokens = {0, 0, 1, 1, 2, 2};  // vocab 3 x 2: token i = [i, i]
  const V positions = {0, 10, 0, 20};   // 2 positions x 2
  const std::vector<std::int32_t> ids = {2, 0};
  V out(4);
  b.embedding_forward(out.data(), ids.data(), tokens.data(), positions.data(), 1, 2, 3, 2);
  require_close(out, {2, 12, 0, 20});
  const std::vector<std::int32_t> bad = {3, 0};
  REQUIRE_THROWS_WITH(b.embedding_forward(out.data(), bad.data(), tokens.data(), positions.data(), 1, 2, 3, 2), Catch::Contains("token id 3"));
}

TEST_CASE("mean-squared error of [1, 2] against [0, 0] is 2.5", "[forward][mse]") {
  CpuBackend b;
  const V a = {1, 2}, t = {0, 0};
  V loss(1);
  b.mse_forward(loss.data(), a.data(), t.data(), 2);
  REQUIRE(loss[0] == 2.5f);
}

TEST_CASE("elementwise add, mul and scale", "[forward][elementwise]") {
  CpuBackend b;
  const V x = {1, -2, 3}, y = {4, 5, -6};
  V out(3);
  b.add(out.data(), x.data(), y.data(), 3);
  require_close(out, {5, 3, -3});
  b.mul(out.data(), x.data(), y.data(), 3);
  require_close(out, {4, -10, -18});
  b.scale(out.data(), x.data(), 0.5f, 3);
  require_close(out, {0.5f, -1, 1.5f});
  b.accumulate(out.data(), x.data(), 3);
  require_close(out, {1.5f, -3, 4.5f});
}

TEST_CASE("sinusoidal timestep embedding", "[forward][timestep]") {
  CpuBackend b;
  // dim 4: half 2, frequencies exp(-ln(10000) * i / 2) = 1 and 0.01
  const V t = {0, 1};
  V out(8);
  b.timestep_embedding_forward(out.data(), t.data(), {2, 4, true, 0.0, 1.0, 10000.0});  // [cos, sin]
  require_close(out, {1, 1, 0, 0, std::cos(1.0f), std::cos(0.01f), std::sin(1.0f), std::sin(0.01f)});
  b.timestep_embedding_forward(out.data(), t.data(), {2, 4, false, 1.0, 1.0, 10000.0});  // [sin, cos], shift 1: freqs 1, 1e-4
  require_close(out, {0, 0, 1, 1, std::sin(1.0f), std::sin(1e-4f), std::cos(1.0f), std::cos(1e-4f)});
  V odd(3);
  const V one = {1};
  b.timestep_embedding_forward(odd.data(), one.data(), {1, 3, true, 0.0, 1.0, 10000.0});  // half 1, zero pad
  require_close(odd, {std::cos(1.0f), std::sin(1.0f), 0});
}
