// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//
// Element i of a stream (seed, offset) depends only on (seed, offset, i): every backend, thread count
// and launch layout produces the same numbers. Host and device share this header (DB_HOST_DEVICE).
#pragma once

#include <cmath>
#include <cstdint>

#include "dreambooth/core/host_device.hpp"

namespace dreambooth::rng {

struct Philox4x32 {
  std::uint32_t v[4];
};

DB_HOST_DEVICE inline void mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi, std::uint32_t& lo) {
  const std::uint64_t product = static_cast<std::uint64_t>(a) * b;
  hi = static_cast<std::uint32_t>(product >> 32);
  lo = static_cast<std::uint32_t>(product);
}

// Ten rounds of Philox4x32 on counter c with 64-bit key k.
DB_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 c, std::uint64_t key) {
  std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    std::uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c.v[0], hi0, lo0);
    mulhilo(0xCD9E8D57u, c.v[2], hi1, lo1);
    c = Philox4x32{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// The four raw words for element `index` of stream (seed, offset).
DB_HOST_DEVICE inline Philox4x32 raw_bits(std::uint64_t seed, std::uint64_t offset, std::uint64_t index) {
  Philox4x32 counter{{static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), static_cast<std::uint32_t>(offset),
                      static_cast<std::uint32_t>(offset >> 32)}};
  return philox4x32_10(counter, seed);
}

// 24 random bits -> float in the open interval (0, 1).
DB_HOST_DEVICE inline float bits_to_unit_float(std::uint32_t bits) { return (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f); }

// Uniform in (0, 1).
DB_HOST_DEVICE inline float uniform(std::uint64_t seed, std::uint64_t offset, std::uint64_t index) {
  return bits_to_unit_float(raw_bits(seed, offset, index).v[0]);
}

// Standard normal by Box-Muller on two 32-bit words, computed in double and rounded once to float,
// so that host libm and device math agree on the float result.
DB_HOST_DEVICE inline float normal(std::uint64_t seed, std::uint64_t offset, std::uint64_t index) {
  const Philox4x32 bits = raw_bits(seed, offset, index);
  const double u1 = (static_cast<double>(bits.v[0]) + 0.5) * (1.0 / 4294967296.0);  // (0, 1)
  const double u2 = (static_cast<double>(bits.v[1]) + 0.5) * (1.0 / 4294967296.0);
  const double radius = std::sqrt(-2.0 * std::log(u1));
  return static_cast<float>(radius * std::cos(6.283185307179586476925 * u2));
}

}  // namespace dreambooth::rng
