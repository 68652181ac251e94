// Every backend op's backward against central finite differences in double precision (see gradcheck.hpp).
#include <catch2/catch.hpp>

#include "gradcheck.hpp"

using namespace dreambooth;
using dreambooth::testing::check_gradients;
using dreambooth::testing::random_vector;
using dreambooth::testing::Reference;
using Vec = std::vector<double>;

#define REQUIRE_GRADIENTS(report)                                                        \
  do {                                                                                   \
    const auto r_ = (report);                                                            \
    INFO("worst element " << r_.worst << " (error/tolerance " << r_.worst_error << ")"); \
    REQUIRE(r_.ok);                                                                      \
  } while (false)

TEST_CASE("linear backward matches finite differences", "[gradient][linear]") {
  Reference b;
  const nn::LinearDims d{6, 5, 4};  // rows = a [2, 3] batch flattened
  Vec in = random_vector(30, 1), w = random_vector(20, 2), bias = random_vector(4, 3), R = random_vector(24, 4);
  Vec din(30), dw(20, 0.0), dbias(4, 0.0);
  b.linear_backward(din.data(), dw.data(), dbias.data(), R.data(), in.data(), w.data(), d);
  auto forward = [&] {
    Vec out(24);
    b.linear_forward(out.data(), in.data(), w.data(), bias.data(), d);
    return out;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}, {"weight", &w, &dw}, {"bias", &bias, &dbias}}));
}

TEST_CASE("linear backward accumulates parameter gradients and assigns input gradients", "[gradient][linear]") {
  Reference b;
  const nn::LinearDims d{2, 3, 2};
  Vec in = random_vector(6, 5), w = random_vector(6, 6), R = random_vector(4, 7);
  Vec din(6, 100.0), dw(6, 0.0), dbias(2, 0.0), dw_twice(6, 0.0), dbias_twice(2, 0.0);
  b.linear_backward(din.data(), dw.data(), dbias.data(), R.data(), in.data(), w.data(), d);
  const Vec din_once = din;
  b.linear_backward(din.data(), dw_twice.data(), dbias_twice.data(), R.data(), in.data(), w.data(), d);
  b.linear_backward(din.data(), dw_twice.data(), dbias_twice.data(), R.data(), in.data(), w.data(), d);
  for (std::size_t i = 0; i < 6; ++i) {
    REQUIRE(din[i] == Approx(din_once[i]));  // assigned: no trace of the 100.0 it started with
    REQUIRE(dw_twice[i] == Approx(2 * dw[i]));
  }
  REQUIRE(dbias_twice[1] == Approx(2 * dbias[1]));
}

namespace {
void check_conv(const nn::Conv2dDims& d, std::uint64_t seed) {
  Reference b;
  const auto in_n = static_cast<std::size_t>(d.batch * d.in_channels * d.height * d.width);
  const auto w_n = static_cast<std::size_t>(d.out_channels * d.in_channels * d.kernel_h * d.kernel_w);
  const auto out_n = static_cast<std::size_t>(d.batch * d.out_channels * d.out_height() * d.out_width());
  Vec in = random_vector(in_n, seed), w = random_vector(w_n, seed + 1), bias = random_vector(static_cast<std::size_t>(d.out_channels), seed + 2);
  const Vec R = random_vector(out_n, seed + 3);
  Vec din(in_n), dw(w_n, 0.0), dbias(static_cast<std::size_t>(d.out_channels), 0.0);
  b.conv2d_backward(din.data(), dw.data(), dbias.data(), R.data(), in.data(), w.data(), d);
  auto forward = [&] {
    Vec out(out_n);
    b.conv2d_forward(out.data(), in.data(), w.data(), bias.data(), d);
    return out;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}, {"weight", &w, &dw}, {"bias", &bias, &dbias}}));
}
}  // namespace

TEST_CASE("conv2d backward matches finite differences on every path", "[gradient][conv2d]") {
  SECTION("3x3 stride 1 padding 1 (shifted-GEMM fast path)") { check_conv({2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1}, 10); }
  SECTION("3x3 stride 1 padding 1, more channels than pixels (im2col path)") { check_conv({1, 2, 2, 2, 5, 3, 3, 1, 1, 1, 1}, 15); }
  SECTION("1x1 (pointwise fast path)") { check_conv({2, 3, 4, 5, 4, 1, 1, 1, 1, 0, 0}, 20); }
  SECTION("3x3 stride 2 padding 1 (im2col path, SD downsampler)") { check_conv({2, 3, 7, 6, 2, 3, 3, 2, 2, 1, 1}, 30); }
  SECTION("2x3 kernel, strides (1, 2), padding (0, 1)") { check_conv({1, 2, 5, 7, 3, 2, 3, 1, 2, 0, 1}, 40); }
  SECTION("3x3 without padding") { check_conv({1, 2, 5, 5, 2, 3, 3, 1, 1, 0, 0}, 50); }
  SECTION("3x3 stride 2, padding only bottom and right (VAE downsampler)") { check_conv({2, 2, 6, 5, 3, 3, 3, 2, 2, 0, 0, 1, 1}, 60); }
}

TEST_CASE("group norm backward matches finite differences", "[gradient][group_norm]") {
  Reference b;
  const nn::GroupNormDims d{2, 6, 5, 3, 1e-5};
  Vec in = random_vector(60, 60, 2.0), gamma = random_vector(6, 61), beta = random_vector(6, 62);
  const Vec R = random_vector(60, 63);
  Vec out(60), mean(6), rstd(6), din(60), dgamma(6, 0.0), dbeta(6, 0.0);
  b.group_norm_forward(out.data(), mean.data(), rstd.data(), in.data(), gamma.data(), beta.data(), d);
  b.group_norm_backward(din.data(), dgamma.data(), dbeta.data(), R.data(), in.data(), mean.data(), rstd.data(), gamma.data(), d);
  auto forward = [&] {
    Vec y(60), m(6), r(6);
    b.group_norm_forward(y.data(), m.data(), r.data(), in.data(), gamma.data(), beta.data(), d);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}, {"gamma", &gamma, &dgamma}, {"beta", &beta, &dbeta}}));
}

TEST_CASE("fused group norm + SiLU backward matches finite differences", "[gradient][group_norm]") {
  Reference b;
  const nn::GroupNormDims d{2, 6, 5, 3, 1e-5};
  Vec in = random_vector(60, 64, 2.0), gamma = random_vector(6, 65), beta = random_vector(6, 66);
  const Vec R = random_vector(60, 67);
  Vec out(60), mean(6), rstd(6), din(60), dgamma(6, 0.5), dbeta(6, -0.25);  // parameter gradients accumulate
  b.group_norm_silu_forward(out.data(), mean.data(), rstd.data(), in.data(), gamma.data(), beta.data(), d);
  b.group_norm_silu_backward(din.data(), dgamma.data(), dbeta.data(), R.data(), in.data(), mean.data(), rstd.data(), gamma.data(), beta.data(), d);
  for (auto& g : dgamma) g -= 0.5;
  for (auto& g : dbeta) g += 0.25;
  auto forward = [&] {
    Vec y(60), m(6), r(6);
    b.group_norm_silu_forward(y.data(), m.data(), r.data(), in.data(), gamma.data(), beta.data(), d);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}, {"gamma", &gamma, &dgamma}, {"beta", &beta, &dbeta}}));

  // The fused forward is exactly silu of the group norm (what the models computed before the fusion).
  Vec normed(60), m(6), r(6), separate(60);
  b.group_norm_forward(normed.data(), m.data(), r.data(), in.data(), gamma.data(), beta.data(), d);
  b.silu_forward(separate.data(), normed.data(), 60);
  b.group_norm_silu_forward(out.data(), mean.data(), rstd.data(), in.data(), gamma.data(), beta.data(), d);
  CHECK(out == separate);
  CHECK(mean == m);
  CHECK(rstd == r);
}

TEST_CASE("layer norm backward matches finite differences", "[gradient][layer_norm]") {
  Reference b;
  const nn::LayerNormDims d{4, 7, 1e-5};
  Vec in = random_vector(28, 70, 3.0), gamma = random_vector(7, 71), beta = random_vector(7, 72);
  const Vec R = random_vector(28, 73);
  Vec out(28), mean(4), rstd(4), din(28), dgamma(7, 0.0), dbeta(7, 0.0);
  b.layer_norm_forward(out.data(), mean.data(), rstd.data(), in.data(), gamma.data(), beta.data(), d);
  b.layer_norm_backward(din.data(), dgamma.data(), dbeta.data(), R.data(), in.data(), mean.data(), rstd.data(), gamma.data(), d);
  auto forward = [&] {
    Vec y(28), m(4), r(4);
    b.layer_norm_forward(y.data(), m.data(), r.data(), in.data(), gamma.data(), beta.data(), d);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}, {"gamma", &gamma, &dgamma}, {"beta", &beta, &dbeta}}));
}

TEST_CASE("pointwise activations backward match finite differences", "[gradient][activation]") {
  Reference b;
  Vec in = random_vector(40, 80, 2.5);
  const Vec R = random_vector(40, 81);
  Vec din(40);
  using Forward = void (Reference::*)(double*, const double*, std::size_t);
  using Backward = void (Reference::*)(double*, const double*, const double*, std::size_t);
  const std::tuple<const char*, Forward, Backward> activations[] = {{"silu", &Reference::silu_forward, &Reference::silu_backward},
                                                                    {"gelu", &Reference::gelu_forward, &Reference::gelu_backward},
                                                                    {"quick_gelu", &Reference::quick_gelu_forward, &Reference::quick_gelu_backward}};
  for (const auto& [name, fwd, bwd] : activations) {
    INFO(name);
    (b.*bwd)(din.data(), R.data(), in.data(), 40);
    auto forward = [&, fwd = fwd] {
      Vec y(40);
      (b.*fwd)(y.data(), in.data(), 40);
      return y;
    };
    REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}}));
  }
}

TEST_CASE("GEGLU backward matches finite differences", "[gradient][geglu]") {
  Reference b;
  Vec in = random_vector(24, 90, 1.5);  // [3, 2 * 4]
  const Vec R = random_vector(12, 91);
  Vec din(24);
  b.geglu_backward(din.data(), R.data(), in.data(), 3, 4);
  auto forward = [&] {
    Vec y(12);
    b.geglu_forward(y.data(), in.data(), 3, 4);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}}));
}

TEST_CASE("softmax backward matches finite differences", "[gradient][softmax]") {
  Reference b;
  Vec in = random_vector(15, 100, 2.0);
  const Vec R = random_vector(15, 101);
  Vec out(15), din(15);
  b.softmax_forward(out.data(), in.data(), 3, 5);
  b.softmax_backward(din.data(), R.data(), out.data(), 3, 5);
  auto forward = [&] {
    Vec y(15);
    b.softmax_forward(y.data(), in.data(), 3, 5);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}}));
}

namespace {
void check_attention(const nn::AttentionDims& d, std::uint64_t seed) {
  Reference b;
  const auto width = static_cast<std::size_t>(d.heads * d.head_dim);
  const auto q_n = static_cast<std::size_t>(d.batch * d.q_len) * width, kv_n = static_cast<std::size_t>(d.batch * d.kv_len) * width;
  Vec q = random_vector(q_n, seed), k = random_vector(kv_n, seed + 1), v = random_vector(kv_n, seed + 2);
  const Vec R = random_vector(q_n, seed + 3);
  Vec out(q_n), lse(static_cast<std::size_t>(d.batch * d.heads * d.q_len)), dq(q_n), dk(kv_n, 7.0), dv(kv_n, 7.0);
  b.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);
  b.attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), d);
  auto forward = [&] {
    Vec y(q_n), l(lse.size());
    b.attention_forward(y.data(), l.data(), q.data(), k.data(), v.data(), d);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"q", &q, &dq}, {"k", &k, &dk}, {"v", &v, &dv}}));
}
}  // namespace

TEST_CASE("attention backward matches finite differences", "[gradient][attention]") {
  SECTION("self-attention, 2 heads") { check_attention({2, 2, 5, 5, 3, false, 0.0}, 110); }
  SECTION("cross-attention, Tq != Tk") { check_attention({2, 2, 5, 3, 4, false, 0.0}, 120); }
  SECTION("causal self-attention") { check_attention({1, 2, 4, 4, 3, true, 0.0}, 130); }
  SECTION("explicit scale") { check_attention({1, 1, 3, 4, 2, false, 0.3}, 140); }
  SECTION("more query rows than one block (130 > 128)") { check_attention({1, 1, 130, 3, 2, false, 0.0}, 150); }
}

TEST_CASE("attention backward skips null gradients and leaves the others unchanged", "[gradient][attention]") {
  Reference b;
  const nn::AttentionDims d{2, 2, 6, 5, 3, false, 0.0};
  const auto q_n = static_cast<std::size_t>(2 * 6 * 6), kv_n = static_cast<std::size_t>(2 * 5 * 6);
  const Vec q = random_vector(q_n, 170), k = random_vector(kv_n, 171), v = random_vector(kv_n, 172), R = random_vector(q_n, 173);
  Vec out(q_n), lse(static_cast<std::size_t>(2 * 2 * 6)), dq(q_n), dk(kv_n), dv(kv_n);
  b.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);
  b.attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), d);
  for (int mask = 0; mask < 8; ++mask) {
    Vec dq2(q_n, 5.0), dk2(kv_n, 5.0), dv2(kv_n, 5.0);
    b.attention_backward(mask & 1 ? dq2.data() : nullptr, mask & 2 ? dk2.data() : nullptr, mask & 4 ? dv2.data() : nullptr, R.data(), q.data(),
                         k.data(), v.data(), out.data(), lse.data(), d);
    INFO("gradients requested (q, k, v bits): " << mask);
    CHECK(dq2 == (mask & 1 ? dq : Vec(q_n, 5.0)));
    CHECK(dk2 == (mask & 2 ? dk : Vec(kv_n, 5.0)));
    CHECK(dv2 == (mask & 4 ? dv : Vec(kv_n, 5.0)));
  }
}

TEST_CASE("nearest 2x upsampling backward matches finite differences", "[gradient][upsample]") {
  Reference b;
  Vec in = random_vector(12, 160);  // [2 planes, 2, 3]
  const Vec R = random_vector(48, 161);
  Vec din(12);
  b.upsample_nearest2x_backward(din.data(), R.data(), 2, 2, 3);
  auto forward = [&] {
    Vec y(48);
    b.upsample_nearest2x_forward(y.data(), in.data(), 2, 2, 3);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}}));
}

TEST_CASE("channel concat and split are each other's backward", "[gradient][concat]") {
  Reference b;
  // concat: a[2, 3, 4] + b[2, 2, 4] -> [2, 5, 4]; its backward is split, and split's backward is concat.
  Vec a = random_vector(24, 170), c = random_vector(16, 171);
  const Vec R = random_vector(40, 172);
  Vec da(24), dc(16);
  b.split_channels(da.data(), dc.data(), R.data(), 2, 3, 2, 4);
  auto concat = [&] {
    Vec y(40);
    b.concat_channels(y.data(), a.data(), c.data(), 2, 3, 2, 4);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(concat, R, {{"a", &a, &da}, {"b", &c, &dc}}));

  Vec joined = random_vector(40, 173);
  const Vec Ra = random_vector(24, 174), Rb = random_vector(16, 175);
  Vec R_split(Ra);
  R_split.insert(R_split.end(), Rb.begin(), Rb.end());
  Vec djoined(40);
  b.concat_channels(djoined.data(), Ra.data(), Rb.data(), 2, 3, 2, 4);
  auto split = [&] {
    Vec y(40);
    b.split_channels(y.data(), y.data() + 24, joined.data(), 2, 3, 2, 4);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(split, R_split, {{"input", &joined, &djoined}}));
}

TEST_CASE("transpose is its own backward", "[gradient][transpose]") {
  Reference b;
  Vec in = random_vector(2 * 3 * 5, 220);  // [2, 3, 5] -> [2, 5, 3]
  const Vec R = random_vector(30, 221);
  Vec din(30);
  b.transpose(din.data(), R.data(), 2, 5, 3);
  auto forward = [&] {
    Vec y(30);
    b.transpose(y.data(), in.data(), 2, 3, 5);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}}));
}

TEST_CASE("per-sample channel bias: the bias gradient is the channel sum", "[gradient][channel_bias]") {
  Reference b;
  Vec in = random_vector(2 * 3 * 4, 230), bias = random_vector(6, 231);  // in[2, 3, 4], bias[2, 3]
  const Vec R = random_vector(24, 232);
  Vec din = R, dbias(6);
  b.channel_sum(dbias.data(), R.data(), 2, 3, 4);
  auto forward = [&] {
    Vec y(24);
    b.add_channel_bias(y.data(), in.data(), bias.data(), 2, 3, 4);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"input", &in, &din}, {"bias", &bias, &dbias}}));
}

TEST_CASE("token and position embedding backward (scatter-add) matches finite differences", "[gradient][embedding]") {
  Reference b;
  const std::vector<std::int32_t> ids = {3, 0, 3, 1, 4, 3};                 // [2, 3], token 3 repeated: gradients must add up
  Vec tokens = random_vector(15, 180), positions = random_vector(12, 181);  // vocab 5 x 3, max positions 4 x 3
  const Vec R = random_vector(18, 182);
  Vec dtokens(15, 0.0), dpositions(12, 0.0);
  b.embedding_backward(dtokens.data(), dpositions.data(), R.data(), ids.data(), 2, 3, 5, 3);
  auto forward = [&] {
    Vec y(18);
    b.embedding_forward(y.data(), ids.data(), tokens.data(), positions.data(), 2, 3, 5, 3);
    return y;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"token_table", &tokens, &dtokens}, {"position_table", &positions, &dpositions}}));
}

TEST_CASE("mean-squared error backward matches finite differences", "[gradient][mse]") {
  Reference b;
  Vec a = random_vector(10, 190), target = random_vector(10, 191);
  const Vec R = {0.7};
  Vec da(10), dtarget(10);
  b.mse_backward(da.data(), dtarget.data(), R.data(), a.data(), target.data(), 10);
  auto forward = [&] {
    Vec loss(1);
    b.mse_forward(loss.data(), a.data(), target.data(), 10);
    return loss;
  };
  REQUIRE_GRADIENTS(check_gradients(forward, R, {{"prediction", &a, &da}, {"target", &target, &dtarget}}));
}

TEST_CASE("elementwise add, mul and scale backward match finite differences", "[gradient][elementwise]") {
  Reference b;
  Vec x = random_vector(8, 200), y = random_vector(8, 201);
  const Vec R = random_vector(8, 202);
  SECTION("add: both gradients are dout") {
    Vec dx = R, dy = R;
    auto forward = [&] {
      Vec out(8);
      b.add(out.data(), x.data(), y.data(), 8);
      return out;
    };
    REQUIRE_GRADIENTS(check_gradients(forward, R, {{"a", &x, &dx}, {"b", &y, &dy}}));
  }
  SECTION("mul") {
    Vec dx(8), dy(8);
    b.mul_backward(dx.data(), dy.data(), R.data(), x.data(), y.data(), 8);
    auto forward = [&] {
      Vec out(8);
      b.mul(out.data(), x.data(), y.data(), 8);
      return out;
    };
    REQUIRE_GRADIENTS(check_gradients(forward, R, {{"a", &x, &dx}, {"b", &y, &dy}}));
  }
  SECTION("scale: the gradient is dout scaled") {
    Vec dx(8);
    b.scale(dx.data(), R.data(), -1.7, 8);
    auto forward = [&] {
      Vec out(8);
      b.scale(out.data(), x.data(), -1.7, 8);
      return out;
    };
    REQUIRE_GRADIENTS(check_gradients(forward, R, {{"a", &x, &dx}}));
  }
}

TEST_CASE("the gradient checker catches a broken backward", "[gradient][selftest]") {
  // A checker that cannot fail proves nothing: perturb one element of a correct gradient by 1% and by a
  // sign flip, and expect both to be reported.
  Reference b;
  const nn::LinearDims d{3, 4, 2};
  Vec in = random_vector(12, 210), w = random_vector(8, 211);
  const Vec R = random_vector(6, 212);
  Vec din(12), dw(8, 0.0);
  b.linear_backward(din.data(), dw.data(), nullptr, R.data(), in.data(), w.data(), d);
  auto forward = [&] {
    Vec out(6);
    b.linear_forward(out.data(), in.data(), w.data(), nullptr, d);
    return out;
  };
  REQUIRE(check_gradients(forward, R, {{"input", &in, &din}, {"weight", &w, &dw}}).ok);
  Vec off_by_one_percent = dw;
  off_by_one_percent[5] *= 1.01;
  REQUIRE_FALSE(check_gradients(forward, R, {{"weight", &w, &off_by_one_percent}}).ok);
  Vec wrong_sign = din;
  wrong_sign[0] = -wrong_sign[0];
  REQUIRE_FALSE(check_gradients(forward, R, {{"input", &in, &wrong_sign}}).ok);
}
