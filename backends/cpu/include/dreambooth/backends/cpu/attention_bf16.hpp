// Attention in bf16 on the CPU (--precision bf16): the same memory-efficient algorithm as attention.hpp, per (image,
// head) and block of query rows, with its products (scores Q K^T and output P V; in the backward also dP = dO V^T,
// dV = P^T dO, dQ = dS K, dK = dS^T Q) on oneDNN's bf16 matmul kernels (AMX or AVX512-BF16): operands rounded to bf16
// (nearest even), products accumulated in fp32; the softmax, its statistics and its gradient stay fp32 (PyTorch's CPU
// flash attention under bf16 autocast does the same).
//
// Each (image, head) is one task of an OpenMP loop, run on one thread from start to end: a task's arithmetic never
// depends on the thread count or the schedule, so results are identical run to run. The matmuls inside a task run
// single-threaded (oneDNN does not nest OpenMP), each thread with its own stream and scratchpad.
#pragma once

#if DREAMBOOTH_WITH_ONEDNN

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <dnnl.hpp>

#include "dreambooth/backends/cpu/gemm_bf16.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/backends/cpu/serial_matmul.hpp"
#include "dreambooth/backends/cpu/softmax_rows.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu {

namespace attention_bf16_detail {

using Bf16 = std::vector<std::uint16_t>;

inline void matmul(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const Bf16& a, std::int64_t lda,
                   const Bf16& b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  SerialMatmuls::instance().run(dnnl::memory::data_type::bf16, trans_a, trans_b, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c, ldc);
}

// rows x cols of x (row stride ld) -> out, bf16, rows `out_ld` apart, the padding columns zero.
inline void to_bf16_rows(Bf16& out, const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t out_ld) {
  if (static_cast<std::int64_t>(out.size()) < rows * out_ld) out.resize(static_cast<std::size_t>(rows * out_ld));
  cpu::to_bf16_rows(out.data(), x, rows, cols, ld, out_ld);
}

// The head dimension the bf16 products run at: Dh rounded up to a multiple of 32, the padding zero (a zero column adds
// nothing to a dot product). AMX multiplies bf16 in tiles 32 deep: at SD's Dh = 40 the padded products run about twice
// as fast as the unpadded ones.
inline std::int64_t padded_head_dim(std::int64_t head_dim) { return (head_dim + 31) / 32 * 32; }

// rows x cols of x (row stride ld) -> y (row stride ldy), fp32.
inline void copy_rows(float* y, std::int64_t ldy, const float* x, std::int64_t ld, std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = 0; r < rows; ++r) std::copy_n(x + r * ld, cols, y + r * ldy);
}

// Query rows per block: the P and dP tiles, 1 MiB each at 4096 keys, stay in L2; the backward ran 1.5-1.9x faster
// than with 128 rows on the 2-core Xeon (2 MiB of L2 per core), 32 and 48 rows slower.
constexpr std::int64_t kQueryBlock = 64;

template <class T>
using Tile = std::vector<T, Eigen::aligned_allocator<T>>;
inline std::int64_t tile_stride(std::int64_t kv_len) { return (kv_len + 31) / 32 * 32; }

// S[rows, Tk] = scale * Q_blk K^T from the bf16 query block and keys ([rows, Dp] and [Tk, Dp]), -inf above the
// diagonal when causal.
inline void scores(float* S, std::int64_t ldS, const Bf16& q16, const Bf16& k16, std::int64_t rows, std::int64_t first_row,
                   const nn::AttentionDims& d) {
  const auto Dp = padded_head_dim(d.head_dim);
  matmul(false, true, rows, d.kv_len, Dp, static_cast<float>(d.effective_scale()), q16, Dp, k16, Dp, 0.0f, S, ldS);
  if (d.causal)
    for (std::int64_t r = 0; r < rows; ++r)
      std::fill(S + r * ldS + std::min(first_row + r + 1, d.kv_len), S + r * ldS + d.kv_len, -std::numeric_limits<float>::infinity());
}

}  // namespace attention_bf16_detail

// out[N, Tq, H*Dh], lse[N, H, Tq] from q[N, Tq, H*Dh], k / v[N, Tk, H*Dh]; products in bf16.
inline void attention_forward_bf16(float* out, float* lse, const float* q, const float* k, const float* v, const nn::AttentionDims& d) {
  using namespace attention_bf16_detail;
  const auto ld = d.heads * d.head_dim, Dh = d.head_dim, Dp = padded_head_dim(Dh), ldS = tile_stride(d.kv_len);
#pragma omp parallel if (parallel_worth(d.batch * d.heads * d.q_len * d.kv_len))
  {
    Tile<float> S(static_cast<std::size_t>(kQueryBlock * ldS));
    std::vector<float> o(static_cast<std::size_t>(kQueryBlock * Dp));
    Bf16 q16, k16, v16, p16;
#pragma omp for collapse(2) schedule(dynamic)
    for (std::int64_t n = 0; n < d.batch; ++n)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        const auto kv_offset = n * d.kv_len * ld + h * Dh;
        to_bf16_rows(k16, k + kv_offset, d.kv_len, Dh, ld, Dp);
        to_bf16_rows(v16, v + kv_offset, d.kv_len, Dh, ld, Dp);
        for (std::int64_t q0 = 0; q0 < d.q_len; q0 += kQueryBlock) {
          const auto rows = std::min(kQueryBlock, d.q_len - q0);
          const auto q_offset = (n * d.q_len + q0) * ld + h * Dh;
          to_bf16_rows(q16, q + q_offset, rows, Dh, ld, Dp);
          scores(S.data(), ldS, q16, k16, rows, q0, d);
          for (std::int64_t r = 0; r < rows; ++r)
            lse[(n * d.heads + h) * d.q_len + q0 + r] = attention_detail::softmax_row(S.data() + r * ldS, d.kv_len);
          to_bf16_rows(p16, S.data(), rows, d.kv_len, ldS, ldS);
          matmul(false, false, rows, Dp, d.kv_len, 1.0f, p16, ldS, v16, Dp, 0.0f, o.data(), Dp);
          copy_rows(out + q_offset, ld, o.data(), Dp, rows, Dh);
        }
      }
  }
}

// dq[N, Tq, H*Dh], dk / dv[N, Tk, H*Dh] assigned, from dout, the forward inputs, out and lse (a null one is skipped);
// products in bf16.
inline void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                                    const float* out, const float* lse, const nn::AttentionDims& d) {
  using namespace attention_bf16_detail;
  if (!dq && !dk && !dv) return;
  const auto ld = d.heads * d.head_dim, Dh = d.head_dim, Dp = padded_head_dim(Dh), ldS = tile_stride(d.kv_len);
  const float scale = static_cast<float>(d.effective_scale());
#pragma omp parallel if (parallel_worth(d.batch * d.heads * d.q_len * d.kv_len))
  {
    Tile<float> P(static_cast<std::size_t>(kQueryBlock * ldS)), dP(P.size());
    Bf16 q16, k16, v16, do16, p16, ds16;
    std::vector<float> dk_head, dv_head, dq_block(static_cast<std::size_t>(kQueryBlock * Dp));  // [Tk, Dp] over the query blocks; [rows, Dp]
#pragma omp for collapse(2) schedule(dynamic)
    for (std::int64_t n = 0; n < d.batch; ++n)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        const auto kv_offset = n * d.kv_len * ld + h * Dh;
        to_bf16_rows(k16, k + kv_offset, d.kv_len, Dh, ld, Dp);
        to_bf16_rows(v16, v + kv_offset, d.kv_len, Dh, ld, Dp);
        if (dk) dk_head.assign(static_cast<std::size_t>(d.kv_len * Dp), 0.0f);
        if (dv) dv_head.assign(static_cast<std::size_t>(d.kv_len * Dp), 0.0f);
        for (std::int64_t q0 = 0; q0 < d.q_len; q0 += kQueryBlock) {
          const auto rows = std::min(kQueryBlock, d.q_len - q0);
          const auto q_offset = (n * d.q_len + q0) * ld + h * Dh;
          to_bf16_rows(q16, q + q_offset, rows, Dh, ld, Dp);
          to_bf16_rows(do16, dout + q_offset, rows, Dh, ld, Dp);
          scores(P.data(), ldS, q16, k16, rows, q0, d);
          for (std::int64_t r = 0; r < rows; ++r)
            attention_detail::probabilities_row(P.data() + r * ldS, d.kv_len, lse[(n * d.heads + h) * d.q_len + q0 + r]);
          if (dv) {
            to_bf16_rows(p16, P.data(), rows, d.kv_len, ldS, ldS);
            matmul(true, false, d.kv_len, Dp, rows, 1.0f, p16, ldS, do16, Dp, 1.0f, dv_head.data(), Dp);
          }
          if (!dq && !dk) continue;
          matmul(false, true, rows, d.kv_len, Dp, 1.0f, do16, Dp, v16, Dp, 0.0f, dP.data(), ldS);
          for (std::int64_t r = 0; r < rows; ++r) {
            float dot = 0;
            for (std::int64_t c = 0; c < Dh; ++c) dot += dout[q_offset + r * ld + c] * out[q_offset + r * ld + c];
            Eigen::Map<const Eigen::ArrayXf, Eigen::AlignedMax> p(P.data() + r * ldS, d.kv_len);
            Eigen::Map<Eigen::ArrayXf, Eigen::AlignedMax> ds(dP.data() + r * ldS, d.kv_len);
            ds = p * (ds - dot);
          }
          to_bf16_rows(ds16, dP.data(), rows, d.kv_len, ldS, ldS);
          if (dq) {
            matmul(false, false, rows, Dp, d.kv_len, scale, ds16, ldS, k16, Dp, 0.0f, dq_block.data(), Dp);
            copy_rows(dq + q_offset, ld, dq_block.data(), Dp, rows, Dh);
          }
          if (dk) matmul(true, false, d.kv_len, Dp, rows, scale, ds16, ldS, q16, Dp, 1.0f, dk_head.data(), Dp);
        }
        if (dk) copy_rows(dk + kv_offset, ld, dk_head.data(), Dp, d.kv_len, Dh);
        if (dv) copy_rows(dv + kv_offset, ld, dv_head.data(), Dp, d.kv_len, Dh);
      }
  }
}

}  // namespace dreambooth::cpu

#endif
