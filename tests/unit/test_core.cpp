// dtypes, shapes, the counter-based RNG, tensors and arenas.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/core/arena.hpp"
#include "dreambooth/core/rng.hpp"
#include "dreambooth/core/tensor.hpp"

using namespace dreambooth;

TEST_CASE("float to half rounds to nearest even and handles the edges", "[dtype]") {
  REQUIRE(float_to_half_bits(1.0f) == 0x3c00);
  REQUIRE(float_to_half_bits(-2.0f) == 0xc000);
  REQUIRE(float_to_half_bits(65504.0f) == 0x7bff);                                                // largest half
  REQUIRE(float_to_half_bits(65519.0f) == 0x7bff);                                                // below the rounding midpoint
  REQUIRE(float_to_half_bits(65520.0f) == 0x7c00);                                                // the midpoint rounds (to even) to infinity
  REQUIRE(float_to_half_bits(std::ldexp(1.0f, -24)) == 0x0001);                                   // smallest subnormal
  REQUIRE(float_to_half_bits(std::ldexp(1.0f, -25)) == 0x0000);                                   // half of it: tie, to even (zero)
  REQUIRE(float_to_half_bits(std::ldexp(1.5f, -25)) == 0x0001);                                   // above the tie
  REQUIRE(float_to_half_bits(std::ldexp(3.0f, -25)) == 0x0002);                                   // 1.5 units: tie, to even (2)
  REQUIRE(float_to_half_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);                            // tie between 1 and 1+2^-10: even
  REQUIRE(float_to_half_bits(1.0f + std::ldexp(3.0f, -11)) == 0x3c02);                            // tie between 1+2^-10 and 1+2^-9: even
  REQUIRE(float_to_half_bits(std::ldexp(1.0f, -14) * (1.0f - std::ldexp(1.0f, -12))) == 0x0400);  // rounds up to the smallest normal
  REQUIRE(float_to_half_bits(-0.0f) == 0x8000);
  REQUIRE(float_to_half_bits(std::numeric_limits<float>::infinity()) == 0x7c00);
  const auto nan = float_to_half_bits(std::numeric_limits<float>::quiet_NaN());
  REQUIRE((nan & 0x7c00) == 0x7c00);
  REQUIRE((nan & 0x3ff) != 0);
}

TEST_CASE("every half value survives a round trip through float", "[dtype]") {
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f = half_bits_to_float(h);
    if (std::isnan(f)) continue;
    INFO("half bits " << bits);
    REQUIRE(float_to_half_bits(f) == h);
  }
  REQUIRE(half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  REQUIRE(half_bits_to_float(0x3555) == Approx(0.333251953125f));
}

TEST_CASE("float to bfloat16 rounds to nearest even", "[dtype]") {
  REQUIRE(float_to_bf16_bits(1.0f) == 0x3f80);
  REQUIRE(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);  // tie: to even
  REQUIRE(float_to_bf16_bits(1.0f + std::ldexp(3.0f, -8)) == 0x3f82);  // tie: to even (up)
  REQUIRE(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3f81);
  REQUIRE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN()))));
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = bf16_bits_to_float(static_cast<std::uint16_t>(bits));
    if (!std::isnan(f)) REQUIRE(float_to_bf16_bits(f) == bits);
  }
}

TEST_CASE("shapes", "[shape]") {
  const Shape s{2, 320, 64, 64};
  REQUIRE(s.rank() == 4);
  REQUIRE(s.numel() == 2 * 320 * 64 * 64);
  REQUIRE(s[-1] == 64);
  REQUIRE(s.str() == "[2, 320, 64, 64]");
  REQUIRE(Shape{}.numel() == 1);
  REQUIRE_THROWS_WITH(s[4], Catch::Contains("axis 4"));
  REQUIRE_THROWS_AS((Shape{1, -2}), Error);
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors", "[rng]") {
  const auto zero = rng::philox4x32_10({{0, 0, 0, 0}}, 0);
  REQUIRE(zero.v[0] == 0x6627e8d5u);
  REQUIRE(zero.v[1] == 0xe169c58du);
  REQUIRE(zero.v[2] == 0xbc57ac4cu);
  REQUIRE(zero.v[3] == 0x9b00dbd8u);
  const auto ones = rng::philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffffffffffull);
  REQUIRE(ones.v[0] == 0x408f276du);
  REQUIRE(ones.v[1] == 0x41c83b0eu);
  REQUIRE(ones.v[2] == 0xa20bc7c6u);
  REQUIRE(ones.v[3] == 0x6d5451fdu);
  const auto pi = rng::philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0x299f31d0a4093822ull);
  REQUIRE(pi.v[0] == 0xd16cfe09u);
  REQUIRE(pi.v[1] == 0x94fdccebu);
  REQUIRE(pi.v[2] == 0x5001e420u);
  REQUIRE(pi.v[3] == 0x24126ea1u);
}

TEST_CASE("random streams: reproducible, index-addressable, with the right moments", "[rng]") {
  CpuBackend b;
  const std::size_t n = 200000;
  std::vector<float> x(n), again(n), tail(100);
  b.fill_normal(x.data(), n, 42, 7, 0.0f, 1.0f);
  b.fill_normal(again.data(), n, 42, 7, 0.0f, 1.0f);
  REQUIRE(x == again);
  for (std::size_t i = 0; i < 100; ++i) tail[i] = rng::normal(42, 7, n - 100 + i);  // element i depends only on i
  REQUIRE(std::equal(tail.begin(), tail.end(), x.end() - 100));
  double mean = 0, var = 0;
  for (float v : x) mean += v;
  mean /= n;
  for (float v : x) var += (v - mean) * (v - mean);
  var /= n;
  REQUIRE(std::abs(mean) < 0.01);        // standard error 0.0022
  REQUIRE(std::abs(var - 1.0) < 0.015);  // standard error 0.0032
  std::vector<float> other(n);
  b.fill_normal(other.data(), n, 43, 7, 0.0f, 1.0f);
  REQUIRE(other != x);
  std::vector<float> u(n);
  b.fill_uniform(u.data(), n, 1, 0, -1.0f, 3.0f);
  double umean = 0;
  for (float v : u) {
    REQUIRE(v > -1.0f);
    REQUIRE(v < 3.0f);
    umean += v;
  }
  REQUIRE(std::abs(umean / n - 1.0) < 0.01);
}

TEST_CASE("tensors: host round trip in every dtype, views, slices", "[tensor]") {
  CpuBackend b;
  const std::vector<float> values = {0.5f, -1.25f, 3.0f, 1e-3f, 100.0f, -0.0f};
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    auto t = Tensor<CpuBackend>::from_host(b, {2, 3}, values, dtype);
    REQUIRE(t.bytes() == 6 * dtype_size(dtype));
    const auto back = t.to_host();
    for (std::size_t i = 0; i < values.size(); ++i) REQUIRE(back[i] == Approx(values[i]).epsilon(dtype == DType::F32 ? 0 : 4e-3));
  }
  auto t = Tensor<CpuBackend>::from_host(b, {3, 2}, values);
  auto row = t.slice(1, 3);
  REQUIRE(row.shape() == Shape{2, 2});
  REQUIRE(row.to_host() == std::vector<float>{3.0f, 1e-3f, 100.0f, -0.0f});
  row.data<float>()[0] = 7.0f;  // a view shares memory
  REQUIRE(t.to_host()[2] == 7.0f);
  REQUIRE(t.reshape({6}).numel() == 6);
  REQUIRE_THROWS_WITH(t.reshape({4}), Catch::Contains("[3, 2] has 6 elements"));
  REQUIRE_THROWS_WITH(t.slice(2, 4), Catch::Contains("out of range"));
  REQUIRE_THROWS_WITH(t.data<std::uint16_t>(), Catch::Contains("does not match dtype F32"));
  auto z = Tensor<CpuBackend>::zeros(b, {4});
  REQUIRE(z.to_host() == std::vector<float>(4, 0.0f));
  z.copy_from(t.reshape({6}).slice(0, 4));
  REQUIRE(z.to_host()[2] == 7.0f);
}

TEST_CASE("arena: planned capacity, aligned views, reset, exhaustion", "[arena]") {
  CpuBackend b;
  const std::vector<std::pair<Shape, DType>> plan = {{{3, 5}, DType::F32}, {{7}, DType::BF16}, {{2, 2}, DType::F32}};
  const auto bytes = Arena<CpuBackend>::plan(plan);
  REQUIRE(bytes == 3 * 256);
  Arena<CpuBackend> arena(b, bytes, "parameters");
  auto a = arena.allocate({3, 5});
  auto c = arena.allocate({7}, DType::BF16);
  auto d = arena.allocate({2, 2});
  REQUIRE(reinterpret_cast<std::uintptr_t>(c.raw()) - reinterpret_cast<std::uintptr_t>(a.raw()) == 256);
  REQUIRE(reinterpret_cast<std::uintptr_t>(d.raw()) % 64 == 0);
  REQUIRE_THROWS_WITH(arena.allocate({1}), Catch::Contains("parameters: out of memory"));
  arena.reset();
  REQUIRE(arena.used() == 0);
  REQUIRE(arena.high_water() == bytes);
  auto again = arena.allocate({3, 5});
  REQUIRE(again.raw() == a.raw());
}

TEST_CASE("a host allocation that fails says how much was asked for, never a bare bad_alloc", "[memory]") {
  CpuBackend b;
  void* kept = b.allocate(4096);                    // something in use, reported in the message
  const std::size_t absurd = std::size_t{1} << 62;  // 4 EiB: no machine has it
  try {
    (void)b.allocate(absurd);
    FAIL("an allocation of 4 EiB succeeded");
  } catch (const Error& e) {
    const std::string message = e.what();
    INFO(message);
    REQUIRE(message.find("out of host memory") != std::string::npos);
    REQUIRE(message.find("4.00 EiB") != std::string::npos);
    REQUIRE(message.find("4.00 KiB in use") != std::string::npos);
  }
  b.deallocate(kept, 4096);
  REQUIRE(text::format_bytes(1536) == "1.50 KiB");
  REQUIRE(text::format_bytes(100) == "100 bytes");
}
