// bf16 GEMMs on the CPU: C = alpha * op(A) op(B) + beta * C with A and B rounded to bfloat16 (round to nearest even),
// products accumulated in fp32 and C in fp32, as PyTorch's CPU autocast and the CUDA backend's bf16 mode compute them.
// Through oneDNN's matmul (Debian's libdnnl-dev), which picks its kernel for the CPU at run time: AMX tiles on Intel
// Sapphire Rapids and later, AVX512-BF16 on AMD Zen 4 and Intel Cooper Lake; on a CPU with neither,
// bf16_gemm_isa() reports no native kernel and --precision bf16 is refused (a bf16 emulation would be slower than fp32).
//
// Which GEMMs run in bf16: cpu::gemm reads the calling thread's GemmCompute (GemmComputeScope, set by the CPU backend
// around each op when its compute precision is bf16); GEMMs called inside an OpenMP parallel region (attention's per-head
// products) stay fp32 on Eigen's kernels.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#if DREAMBOOTH_WITH_ONEDNN
#include <dnnl.hpp>
#endif

#include "dreambooth/core/error.hpp"

namespace dreambooth::cpu {

enum class GemmCompute { fp32, bf16 };

// The calling thread's GEMM compute precision (fp32 unless a GemmComputeScope says otherwise).
inline GemmCompute& gemm_compute() {
  thread_local GemmCompute compute = GemmCompute::fp32;
  return compute;
}

struct GemmComputeScope {
  GemmCompute before;
  explicit GemmComputeScope(GemmCompute c) : before(gemm_compute()) { gemm_compute() = c; }
  ~GemmComputeScope() { gemm_compute() = before; }
  GemmComputeScope(const GemmComputeScope&) = delete;
  GemmComputeScope& operator=(const GemmComputeScope&) = delete;
};

// float -> bfloat16 bits, rounded to nearest even (NaN stays NaN), as torch's float -> bfloat16 conversion.
inline std::uint16_t to_bf16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu)) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}
// rows x cols of x (row stride ld) -> out (row stride out_ld) as bf16, nearest even; the columns from cols to out_ld
// zeroed. With AVX512-BF16, 16 at a time by VCVTNEPS2BF16: the same rounding, but float denormals (below 1.2e-38) read
// as zero, which no activation or weight is near.
inline void to_bf16_rows(std::uint16_t* out, const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t out_ld) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * ld;
    std::uint16_t* o = out + r * out_ld;
    std::int64_t c = 0;
#if defined(__AVX512BF16__)
    for (; c + 16 <= cols; c += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(in + c)));
#endif
    for (; c < cols; ++c) o[c] = to_bf16(in[c]);
    std::fill(o + cols, o + out_ld, std::uint16_t{0});
  }
}

inline float from_bf16(std::uint16_t value) {
  const std::uint32_t bits = static_cast<std::uint32_t>(value) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

#if DREAMBOOTH_WITH_ONEDNN

namespace detail {

struct Bf16Matmul {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mutex;
  // primitives by (trans_a, trans_b, m, n, k, ldc, alpha, beta): creating one costs far more than running a small one
  struct Made {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul matmul;
  };
  std::map<std::tuple<bool, bool, std::int64_t, std::int64_t, std::int64_t, std::int64_t, float, float>, Made> cache;
  std::vector<std::uint16_t> a16, b16;  // the operands rounded to bf16, packed (the GEMMs run one at a time)

  static Bf16Matmul& instance() {
    static Bf16Matmul m;
    return m;
  }

  dnnl::matmul::primitive_desc describe(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t ldc, float alpha,
                                        float beta) const {
    using dt = dnnl::memory::data_type;
    // op(A) [m, k] over the packed A (stored [k, m] when transposed), op(B) [k, n] likewise, C [m, n] with row stride ldc
    const dnnl::memory::desc a({m, k}, dt::bf16, trans_a ? dnnl::memory::dims{1, m} : dnnl::memory::dims{k, 1});
    const dnnl::memory::desc b({k, n}, dt::bf16, trans_b ? dnnl::memory::dims{1, k} : dnnl::memory::dims{n, 1});
    const dnnl::memory::desc c({m, n}, dt::f32, dnnl::memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(beta);
      attr.set_post_ops(ops);
    }
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, engine);
  }
};

// Packs a rows x cols matrix with leading dimension ld into bf16, rows x cols dense.
inline void pack_bf16(std::vector<std::uint16_t>& out, const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  out.resize(static_cast<std::size_t>(rows * cols));
  std::uint16_t* o = out.data();
#pragma omp parallel for if (rows * cols > (1 << 16))
  for (std::int64_t r = 0; r < rows; ++r) to_bf16_rows(o + r * cols, x + r * ld, 1, cols, ld, cols);
}

}  // namespace detail

// The kernel oneDNN runs a bf16 GEMM with on this CPU ("brg:avx512_core_amx_bf16", ...); empty when it has no native
// bf16 kernel (a CPU without AVX512-BF16 or AMX) or none could be made.
inline std::string bf16_gemm_isa() {
  static const std::string isa = [] {
    try {
      const auto pd = detail::Bf16Matmul::instance().describe(false, false, 64, 64, 64, 64, 1.0f, 0.0f);
      std::string info = pd.impl_info_str();
      return info.find("bf16") != std::string::npos ? info : std::string();
    } catch (const dnnl::error&) {
      return std::string();
    }
  }();
  return isa;
}

// C[M, N] = alpha * op(A) * op(B) + beta * C with bf16 operands, fp32 accumulation (row-major, as cpu::gemm).
inline void gemm_bf16(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a, std::int64_t lda,
                      const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  auto& mm = detail::Bf16Matmul::instance();
  std::lock_guard lock(mm.mutex);
  detail::pack_bf16(mm.a16, a, trans_a ? k : m, trans_a ? m : k, lda);
  detail::pack_bf16(mm.b16, b, trans_b ? n : k, trans_b ? k : n, ldb);
  const auto key = std::make_tuple(trans_a, trans_b, m, n, k, ldc, alpha, beta);
  auto it = mm.cache.find(key);
  if (it == mm.cache.end()) {
    try {
      auto pd = mm.describe(trans_a, trans_b, m, n, k, ldc, alpha, beta);
      it = mm.cache.emplace(key, detail::Bf16Matmul::Made{pd, dnnl::matmul(pd)}).first;
    } catch (const dnnl::error& e) {
      fail("bf16 GEMM ", m, "x", n, "x", k, ": oneDNN could not make a matmul: ", e.what());
    }
  }
  const auto& pd = it->second.pd;
  dnnl::memory A(pd.src_desc(), mm.engine, mm.a16.data()), B(pd.weights_desc(), mm.engine, mm.b16.data()), C(pd.dst_desc(), mm.engine, c);
  it->second.matmul.execute(mm.stream, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
  mm.stream.wait();
}

#else

inline std::string bf16_gemm_isa() { return {}; }
inline void gemm_bf16(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*, std::int64_t, const float*, std::int64_t, float,
                      float*, std::int64_t) {
  fail("bf16 GEMMs on the CPU need oneDNN: this build has none (Debian: apt-get install libdnnl-dev, then reconfigure)");
}

#endif

}  // namespace dreambooth::cpu
