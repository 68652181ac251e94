// Multi-head scaled-dot-product attention on the CPU, memory-efficient (flash-style) forward and backward.
//
// Work runs per (image, head) and per block of query rows: the score matrix exists only as one
// [block, Tk] tile at a time (2 MiB at SD's 4096 tokens), never as [Tq, Tk] per head. Forward saves the
// log-sum-exp of every query row; backward recomputes the probabilities from it:
//   P = exp(scale * Q K^T - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
//   dQ += scale * dS K, dK += scale * dS^T Q.
// The backward runs over blocks of kKeyBlock keys, and within each over the query blocks (flash attention's backward
// order): the key block's gradients accumulate in [Dh, kKeyBlock] buffers that stay in the core's cache, and dQ
// accumulates over the key blocks. Accumulating a whole head's [Dh, Tk] gradients per query block instead ran their two
// products at half the others' rate (SD's 64x64 self-attention backward: 1.19 -> 0.87 s on 2 Zen 3 cores).
// Under a bf16 GemmComputeScope (the backend's --precision bf16) the products run in bf16 instead (attention_bf16.hpp)
// once there are at least kMinBf16Keys keys: below that (the 77-token text context of cross-attention) oneDNN's per-call
// cost exceeds what bf16 saves, and those attentions stay fp32.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "dreambooth/backends/cpu/attention_amx.hpp"
#include "dreambooth/backends/cpu/attention_bf16.hpp"
#include "dreambooth/backends/cpu/gemm.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/backends/cpu/serial_matmul.hpp"
#include "dreambooth/backends/cpu/softmax_rows.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu {

namespace attention_detail {
constexpr std::int64_t kQueryBlock = 128;
constexpr std::int64_t kKeyBlock = 256;  // the backward's
constexpr std::int64_t kMinBf16Keys = 256;

// Whether a float attention of these dimensions runs its products in bf16 (a bf16 scope, outside parallel regions).
inline bool in_bf16(const nn::AttentionDims& d) {
#if DREAMBOOTH_WITH_ONEDNN
  return gemm_compute() == GemmCompute::bf16 && !omp_in_parallel() && d.kv_len >= kMinBf16Keys;
#else
  (void)d;
  return false;
#endif
}

// Score tiles have rows padded to a multiple of 16 elements in Eigen-aligned memory: Eigen's vectorised
// reductions (the softmax sums) peel unaligned heads, so an address-dependent start would make the summation
// order, and the result, differ between threads and runs.
template <class T>
using Tile = std::vector<T, Eigen::aligned_allocator<T>>;
inline std::int64_t tile_stride(std::int64_t kv_len) { return (kv_len + 15) / 16 * 16; }

// One product of a (image, head) task, on the calling thread: in float with oneDNN, its fp32 matmul (jit kernels:
// about 100-116 GFLOP/s on 2 Zen 3 cores at SD's shapes, against 70-84 for Eigen's); otherwise cpu::gemm (Eigen inside
// a parallel region).
template <class T>
void product(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
             std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
#if DREAMBOOTH_WITH_ONEDNN
  if constexpr (std::is_same_v<T, float>) {
    if (m > 0 && n > 0 && k > 0) {
      SerialMatmuls::instance().run(SerialMatmuls::DataType::f32, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
  }
#endif
  gemm<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// S[rows, cols] (row stride ldS) = scale * Q_blk K_blk^T for the query rows from first_row and the keys from
// first_key, with -inf where a key comes after its query when causal.
template <class T>
void scores(T* S, std::int64_t ldS, const T* q_blk, const T* k_blk, std::int64_t rows, std::int64_t cols, std::int64_t first_row,
            std::int64_t first_key, const nn::AttentionDims& d) {
  const auto ld = d.heads * d.head_dim;
  product<T>(false, true, rows, cols, d.head_dim, static_cast<T>(d.effective_scale()), q_blk, ld, k_blk, ld, T(0), S, ldS);
  if (d.causal)
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto visible = std::clamp<std::int64_t>(first_row + r + 1 - first_key, 0, cols);
      std::fill(S + r * ldS + visible, S + r * ldS + cols, -std::numeric_limits<T>::infinity());
    }
}
}  // namespace attention_detail

// out[N, Tq, H*Dh], lse[N, H, Tq] from q[N, Tq, H*Dh], k / v[N, Tk, H*Dh].
template <class T>
void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, const nn::AttentionDims& d) {
  using namespace attention_detail;
#if DREAMBOOTH_WITH_ONEDNN
  if constexpr (std::is_same_v<T, float>) {
    if (in_bf16(d)) return amx::amx_bf16_available() ? attention_forward_amx(out, lse, q, k, v, d) : attention_forward_bf16(out, lse, q, k, v, d);
  }
#endif
  const GemmComputeScope fp32_products(GemmCompute::fp32);  // this path's GEMMs fp32 also when they run serially
  const auto ld = d.heads * d.head_dim, ldS = tile_stride(d.kv_len);
#pragma omp parallel if (parallel_worth(d.batch * d.heads * d.q_len * d.kv_len))
  {
    Tile<T> S(static_cast<std::size_t>(kQueryBlock * ldS));
#pragma omp for collapse(2) schedule(dynamic)
    for (std::int64_t n = 0; n < d.batch; ++n)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        const T* k_head = k + n * d.kv_len * ld + h * d.head_dim;
        const T* v_head = v + n * d.kv_len * ld + h * d.head_dim;
        for (std::int64_t q0 = 0; q0 < d.q_len; q0 += kQueryBlock) {
          const auto rows = std::min(kQueryBlock, d.q_len - q0);
          scores(S.data(), ldS, q + (n * d.q_len + q0) * ld + h * d.head_dim, k_head, rows, d.kv_len, q0, 0, d);
          for (std::int64_t r = 0; r < rows; ++r) lse[(n * d.heads + h) * d.q_len + q0 + r] = softmax_row(S.data() + r * ldS, d.kv_len);
          product<T>(false, false, rows, d.head_dim, d.kv_len, T(1), S.data(), ldS, v_head, ld, T(0), out + (n * d.q_len + q0) * ld + h * d.head_dim,
                     ld);
        }
      }
  }
}

// dq[N, Tq, H*Dh], dk / dv[N, Tk, H*Dh] assigned, from dout, the forward inputs, out and lse (a null one is skipped).
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                        const nn::AttentionDims& d) {
  using namespace attention_detail;
  if (!dq && !dk && !dv) return;
#if DREAMBOOTH_WITH_ONEDNN
  if constexpr (std::is_same_v<T, float>) {
    if (in_bf16(d))
      return amx::amx_bf16_available() ? attention_backward_amx(dq, dk, dv, dout, q, k, v, out, lse, d)
                                       : attention_backward_bf16(dq, dk, dv, dout, q, k, v, out, lse, d);
  }
#endif
  const GemmComputeScope fp32_products(GemmCompute::fp32);
  const auto ld = d.heads * d.head_dim, Dh = d.head_dim, key_block = std::min(kKeyBlock, d.kv_len), ldS = tile_stride(key_block);
  const T scale = static_cast<T>(d.effective_scale());
  const bool score_gradient = dq || dk;
#pragma omp parallel if (parallel_worth(d.batch * d.heads * d.q_len * d.kv_len))
  {
    Tile<T> P(static_cast<std::size_t>(kQueryBlock * ldS)), dP(P.size());
    // a key block's gradients, transposed: dK^T, dV^T[Dh, key_block] += scale Q_blk^T dS, dO_blk^T P (the products with
    // the keys as columns run about twice as fast as dK += dS^T Q_blk with Dh columns)
    std::vector<T> dk_t(static_cast<std::size_t>(dk ? Dh * key_block : 0)), dv_t(static_cast<std::size_t>(dv ? Dh * key_block : 0));
    std::vector<T> out_dot(static_cast<std::size_t>(score_gradient ? d.q_len : 0));  // rowsum(dO * O) of the head
#pragma omp for collapse(2) schedule(dynamic)
    for (std::int64_t n = 0; n < d.batch; ++n)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        const auto q_head = n * d.q_len * ld + h * Dh, kv_head = n * d.kv_len * ld + h * Dh;
        const T* head_lse = lse + (n * d.heads + h) * d.q_len;
        for (std::int64_t r = 0; r < (score_gradient ? d.q_len : 0); ++r) {
          T dot = 0;
          for (std::int64_t c = 0; c < Dh; ++c) dot += dout[q_head + r * ld + c] * out[q_head + r * ld + c];
          out_dot[static_cast<std::size_t>(r)] = dot;
        }
        if (dq)
          for (std::int64_t r = 0; r < d.q_len; ++r) std::fill_n(dq + q_head + r * ld, Dh, T(0));
        for (std::int64_t k0 = 0; k0 < d.kv_len; k0 += key_block) {
          const auto cols = std::min(key_block, d.kv_len - k0);
          const T* k_blk = k + kv_head + k0 * ld;
          const T* v_blk = v + kv_head + k0 * ld;
          std::fill(dk_t.begin(), dk_t.end(), T(0));
          std::fill(dv_t.begin(), dv_t.end(), T(0));
          for (std::int64_t q0 = 0; q0 < d.q_len; q0 += kQueryBlock) {
            const auto rows = std::min(kQueryBlock, d.q_len - q0);
            if (d.causal && k0 > q0 + rows - 1) continue;  // every key of the block after every query: P = 0
            const auto q_offset = q_head + q0 * ld;
            scores(P.data(), ldS, q + q_offset, k_blk, rows, cols, q0, k0, d);
            for (std::int64_t r = 0; r < rows; ++r) probabilities_row(P.data() + r * ldS, cols, head_lse[q0 + r]);
            if (dv) product<T>(true, false, Dh, cols, rows, T(1), dout + q_offset, ld, P.data(), ldS, T(1), dv_t.data(), key_block);
            if (!score_gradient) continue;
            product<T>(false, true, rows, cols, Dh, T(1), dout + q_offset, ld, v_blk, ld, T(0), dP.data(), ldS);
            for (std::int64_t r = 0; r < rows; ++r) {
              const T dot = out_dot[static_cast<std::size_t>(q0 + r)];
              const T* p = P.data() + r * ldS;
              T* ds = dP.data() + r * ldS;
              for (std::int64_t j = 0; j < cols; ++j) ds[j] = p[j] * (ds[j] - dot);
            }
            if (dq) product<T>(false, false, rows, Dh, cols, scale, dP.data(), ldS, k_blk, ld, T(1), dq + q_offset, ld);
            if (dk) product<T>(true, false, Dh, cols, rows, scale, q + q_offset, ld, dP.data(), ldS, T(1), dk_t.data(), key_block);
          }
          for (std::int64_t j = 0; j < cols; ++j)
            for (std::int64_t c = 0; c < Dh; ++c) {
              if (dk) dk[kv_head + (k0 + j) * ld + c] = dk_t[static_cast<std::size_t>(c * key_block + j)];
              if (dv) dv[kv_head + (k0 + j) * ld + c] = dv_t[static_cast<std::size_t>(c * key_block + j)];
            }
        }
      }
  }
}

}  // namespace dreambooth::cpu
