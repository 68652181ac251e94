// bf16 matrix products on Intel AMX (Sapphire Rapids and later), the CPU backend's own kernel for the products whose
// shapes oneDNN's matmul runs at a fraction of the hardware's rate: attention's, 64 deep (the head dimension) or with
// 64-row blocks, where oneDNN reaches ~170 GFLOP/s per core and this kernel ~550.
//
// C[M, N] (fp32) = A[M, K] B[K, N] (+ C), A bf16 row-major, B bf16 packed into AMX's pair-interleaved ("VNNI") panels
// by pack_panels / pack_row_pairs; products summed in fp32 by TDPBF16PS (denormal inputs read as zero). M, N and K
// are multiples of 32: callers pad with zeros. The code is compiled for AMX through target attributes whatever the
// build's -march, and runs only where amx_bf16_available() says so (CPUID, and the kernel's permission for the tile
// state, asked once per process).
#pragma once

#if defined(__x86_64__) && defined(__linux__)
#define DREAMBOOTH_AMX_KERNELS 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define DREAMBOOTH_AMX_KERNELS 0
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "dreambooth/backends/cpu/gemm_bf16.hpp"
#include "dreambooth/core/error.hpp"

namespace dreambooth::cpu::amx {

using cpu::to_bf16;

// The rows (of A and C), columns (of B and C) and depth the kernel multiplies in: one tile pair.
constexpr std::int64_t kBlock = 32;
inline std::int64_t round_up(std::int64_t x) { return (x + kBlock - 1) / kBlock * kBlock; }

// The element index of B[k, n] in packed panels of a B with `depth` (K rounded up to 32) rows: 16-column panels,
// each depth / 2 rows of 16 (k, k + 1) pairs, 64 bytes a row, as TDPBF16PS reads its second operand.
inline std::int64_t panel_index(std::int64_t k, std::int64_t n, std::int64_t depth) {
  return ((n / 16) * (depth / 2) + k / 2) * 32 + (n % 16) * 2 + (k % 2);
}

// out = B[K, N] packed (K and N rounded up to 32, the padding zero), B[k, n] = src[k * stride_k + n * stride_n] (fp32,
// rounded to bf16). `out` holds round_up(K) * round_up(N) elements.
inline void pack_panels(std::uint16_t* out, const float* src, std::int64_t K, std::int64_t N, std::int64_t stride_k, std::int64_t stride_n) {
  const auto depth = round_up(K), width = round_up(N);
  std::fill_n(out, depth * width, std::uint16_t{0});
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t n = 0; n < N; ++n) out[panel_index(k, n, depth)] = to_bf16(src[k * stride_k + n * stride_n]);
}

#if DREAMBOOTH_AMX_KERNELS

namespace detail {

struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t bytes_per_row[16] = {};
  std::uint8_t rows[16] = {};
};

// Whether the CPU has AMX-TILE and AMX-BF16 and Linux let this process use the tile data (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, Linux 5.16+).
inline bool probe() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = (edx >> 22) & 1u, amx_tile = (edx >> 24) & 1u;
  if (!amx_bf16 || !amx_tile) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

}  // namespace detail

inline bool amx_bf16_available() {
  static const bool available = detail::probe();
  return available;
}

// C[M, N] (row stride ldc) = A[M, K] (bf16, row stride lda) B (pack_panels' layout, depth K) + (accumulate ? C : 0).
// M, N, K multiples of 32. Runs on the calling thread; configures its tiles each call (other code on the thread, oneDNN
// included, may configure them differently in between).
__attribute__((target("amx-tile,amx-bf16"))) inline void gemm(std::int64_t M, std::int64_t N, std::int64_t K, const std::uint16_t* A,
                                                              std::int64_t lda, const std::uint16_t* B, float* C, std::int64_t ldc, bool accumulate) {
  if (!amx_bf16_available()) fail("AMX bf16 GEMM: this CPU or kernel offers no AMX (CPUID AMX-BF16 / AMX-TILE, arch_prctl XTILEDATA)");
  detail::TileConfig config;
  for (int t = 0; t < 8; ++t) config.rows[t] = 16, config.bytes_per_row[t] = 64;
  _tile_loadconfig(&config);
  const auto a_stride = static_cast<long>(lda * 2), c_stride = static_cast<long>(ldc * 4);
  const auto panel = (K / 2) * 32;  // elements per 16-column panel of B
  for (std::int64_t i = 0; i < M; i += 32)
    for (std::int64_t j = 0; j < N; j += 32) {
      float* c = C + i * ldc + j;
      if (accumulate) {
        _tile_loadd(0, c, c_stride);
        _tile_loadd(1, c + 16, c_stride);
        _tile_loadd(2, c + 16 * ldc, c_stride);
        _tile_loadd(3, c + 16 * ldc + 16, c_stride);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      const std::uint16_t* b0 = B + (j / 16) * panel;
      const std::uint16_t* b1 = b0 + panel;
      for (std::int64_t k = 0; k < K; k += 32) {
        _tile_loadd(4, A + i * lda + k, a_stride);
        _tile_loadd(5, A + (i + 16) * lda + k, a_stride);
        _tile_loadd(6, b0 + k * 16, 64);
        _tile_loadd(7, b1 + k * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c, c_stride);
      _tile_stored(1, c + 16, c_stride);
      _tile_stored(2, c + 16 * ldc, c_stride);
      _tile_stored(3, c + 16 * ldc + 16, c_stride);
    }
  _tile_release();
}

// out = B[K = rows, N = cols] packed as pack_panels does, B[k, n] = src[k * ld + n]: a row-major fp32 matrix used as
// the second operand over its rows (the attention probabilities over the query rows). rows and cols multiples of 32.
// Two rows at a time, 16 columns per step: both rounded to bf16 in one VCVTNE2PS2BF16, interleaved by one permute.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void pack_row_pairs(std::uint16_t* out, const float* src, std::int64_t rows,
                                                                                  std::int64_t cols, std::int64_t ld) {
  alignas(64) static constexpr std::uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  for (std::int64_t k = 0; k < rows; k += 2) {
    const float* even = src + k * ld;
    const float* odd = even + ld;
    std::uint16_t* o = out + (k / 2) * 32;
    for (std::int64_t n = 0; n < cols; n += 16, o += rows * 16) {
      const __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(odd + n), _mm512_loadu_ps(even + n));  // even in the low half
      _mm512_storeu_si512(o, _mm512_permutexvar_epi16(interleave, reinterpret_cast<__m512i>(pair)));
    }
  }
}

#else

inline bool amx_bf16_available() { return false; }
inline void gemm(std::int64_t, std::int64_t, std::int64_t, const std::uint16_t*, std::int64_t, const std::uint16_t*, float*, std::int64_t, bool) {
  fail("AMX bf16 kernels: not built for this platform");
}
inline void pack_row_pairs(std::uint16_t*, const float*, std::int64_t, std::int64_t, std::int64_t) {
  fail("AMX bf16 kernels: not built for this platform");
}

#endif

}  // namespace dreambooth::cpu::amx
