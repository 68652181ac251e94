// Storage dtypes (f32, f16, bf16) and exact host-side conversion with round-to-nearest-even.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "dreambooth/core/error.hpp"

namespace dreambooth {

// F32 / F16 / BF16 for values; I32 for token ids (converted to and from float numerically).
enum class DType : std::uint8_t { F32, F16, BF16, I32 };

constexpr std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
  }
  return "?";
}

// IEEE binary16 bits -> float (exact: every half is representable).
constexpr float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits = 0;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;  // signed zero
    } else {
      // subnormal half: normalise into a float
      int shift = 0;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3ffu;
      bits = sign | static_cast<std::uint32_t>(127 - 15 + 1 - shift) << 23 | mantissa << 13;
    }
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | mantissa << 13;  // inf / nan (payload kept)
  } else {
    bits = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
  }
  return std::bit_cast<float>(bits);
}

// float -> IEEE binary16 bits, round to nearest even; overflow goes to inf, NaN stays NaN.
constexpr std::uint16_t float_to_half_bits(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // result is subnormal half (or zero): value = m * 2^-24
    if (abs < 0x33000000u) return sign;  // below half of the smallest subnormal: zero
    const std::uint32_t exponent = abs >> 23;
    const std::uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    // float value = mantissa * 2^(exponent - 150); half subnormal units are 2^-24
    const std::uint32_t total_shift = 126 - exponent;  // in [13, 24]
    const std::uint32_t truncated = mantissa >> total_shift;
    const std::uint32_t remainder = mantissa & ((1u << total_shift) - 1u);
    const std::uint32_t halfway = 1u << (total_shift - 1);
    std::uint32_t rounded = truncated;
    if (remainder > halfway || (remainder == halfway && (truncated & 1u))) ++rounded;
    return static_cast<std::uint16_t>(sign | rounded);
  }
  // normal half: rebias exponent, round 13 dropped mantissa bits to nearest even
  std::uint32_t half = ((abs >> 13) - ((127u - 15u) << 10));
  const std::uint32_t remainder = abs & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;  // may carry into exponent: correct
  return static_cast<std::uint16_t>(sign | half);
}

// bfloat16 bits -> float (exact).
constexpr float bf16_bits_to_float(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

// float -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
constexpr std::uint16_t float_to_bf16_bits(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

// Converts n floats to `dtype` storage (dst holds n * dtype_size(dtype) bytes).
inline void convert_from_f32(std::span<const float> src, DType dtype, std::byte* dst) {
  switch (dtype) {
    case DType::F32:
    case DType::I32:
      for (std::size_t i = 0; i < src.size(); ++i) {
        const auto bits = dtype == DType::F32 ? std::bit_cast<std::uint32_t>(src[i]) : static_cast<std::uint32_t>(static_cast<std::int32_t>(src[i]));
        for (int b = 0; b < 4; ++b) dst[4 * i + b] = static_cast<std::byte>(bits >> (8 * b));
      }
      return;
    case DType::F16:
    case DType::BF16:
      for (std::size_t i = 0; i < src.size(); ++i) {
        const std::uint16_t bits = dtype == DType::F16 ? float_to_half_bits(src[i]) : float_to_bf16_bits(src[i]);
        dst[2 * i] = static_cast<std::byte>(bits & 0xff);
        dst[2 * i + 1] = static_cast<std::byte>(bits >> 8);
      }
      return;
  }
}

// Converts n little-endian `dtype` values at src to floats.
inline void convert_to_f32(const std::byte* src, DType dtype, std::span<float> dst) {
  for (std::size_t i = 0; i < dst.size(); ++i) {
    if (dtype == DType::F32 || dtype == DType::I32) {
      std::uint32_t bits = 0;
      for (int b = 0; b < 4; ++b) bits |= static_cast<std::uint32_t>(src[4 * i + b]) << (8 * b);
      dst[i] = dtype == DType::F32 ? std::bit_cast<float>(bits) : static_cast<float>(static_cast<std::int32_t>(bits));
    } else {
      const auto bits = static_cast<std::uint16_t>(static_cast<std::uint16_t>(src[2 * i]) | static_cast<std::uint16_t>(src[2 * i + 1]) << 8);
      dst[i] = dtype == DType::F16 ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
    }
  }
}

}  // namespace dreambooth
