// Attention in bf16 on AMX (amx_bf16.hpp's kernel): the algorithm of attention_bf16.hpp (per (image, head) task,
// blocks of query rows, softmax and its gradient in fp32, products in bf16 summed in fp32) with each head's keys and
// values packed once into the kernel's panel layout (the backward: once per chunk of keys) instead of once per product,
// and the probabilities written straight into it. The key and value gradients accumulate transposed ([Dp, chunk]: the
// query block is the product's depth) and are transposed back once per chunk. The scale multiplies the scores before
// the softmax and the query / key gradients after their products.
//
// Tasks run on one thread each from start to end, so results do not depend on the schedule or the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "dreambooth/backends/cpu/amx_bf16.hpp"
#include "dreambooth/backends/cpu/gemm_bf16.hpp"
#include "dreambooth/backends/cpu/parallel.hpp"
#include "dreambooth/backends/cpu/softmax_rows.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu {

namespace attention_amx_detail {

template <class T>
using Buffer = std::vector<T, Eigen::aligned_allocator<T>>;
using Bf16 = Buffer<std::uint16_t>;

// Query rows per block: a multiple of 32 (the depth of the key and value gradients' products).
constexpr std::int64_t kQueryBlock = 64;
// Keys per chunk of the backward: a multiple of 32; the chunk's P, dS and gradients (~0.9 MiB at 512) stay in L2.
constexpr std::int64_t kKeyChunk = 512;

template <class T>
T* sized(Buffer<T>& buffer, std::int64_t count) {
  if (static_cast<std::int64_t>(buffer.size()) < count) buffer.resize(static_cast<std::size_t>(count));
  return buffer.data();
}

// A block of `rows` of one head's vectors, x[r, d] = src[r * ld + d] (d < head_dim), as the kernel's first operand:
// bf16 row-major [R, Dp], the padding rows and columns zero.
inline void block_to_bf16(Bf16& out, const float* src, std::int64_t rows, std::int64_t R, std::int64_t head_dim, std::int64_t ld, std::int64_t Dp) {
  auto* o = sized(out, R * Dp);
  to_bf16_rows(o, src, rows, head_dim, ld, Dp);
  std::fill(o + rows * Dp, o + R * Dp, std::uint16_t{0});
}

// x^T [Dp, R] of a bf16 [R, Dp] block, both row-major.
inline void transpose_bf16(Bf16& out, const std::uint16_t* x, std::int64_t R, std::int64_t Dp) {
  auto* o = sized(out, R * Dp);
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < Dp; ++c) o[c * R + r] = x[r * Dp + c];
}

// dst[t * ld + d] = scale * acc[d * ldacc + t] for t < length, d < head_dim: a [Dp, T] accumulator back to [T, H*Dh].
inline void transpose_out(float* dst, std::int64_t ld, const float* acc, std::int64_t ldacc, std::int64_t length, std::int64_t head_dim,
                          float scale) {
  for (std::int64_t t = 0; t < length; ++t)
    for (std::int64_t d = 0; d < head_dim; ++d) dst[t * ld + d] = scale * acc[d * ldacc + t];
}

}  // namespace attention_amx_detail

// out[N, Tq, H*Dh], lse[N, H, Tq] from q[N, Tq, H*Dh], k / v[N, Tk, H*Dh]; products on AMX.
inline void attention_forward_amx(float* out, float* lse, const float* q, const float* k, const float* v, const nn::AttentionDims& d) {
  using namespace attention_amx_detail;
  const auto ld = d.heads * d.head_dim, Dh = d.head_dim, Dp = amx::round_up(Dh), Tp = amx::round_up(d.kv_len), R = kQueryBlock;
  const float scale = static_cast<float>(d.effective_scale());
#pragma omp parallel if (parallel_worth(d.batch * d.heads * d.q_len * d.kv_len))
  {
    Buffer<float> S(static_cast<std::size_t>(R * Tp)), o(static_cast<std::size_t>(R * Dp));
    Bf16 k_panels(static_cast<std::size_t>(Dp * Tp)), v_panels(static_cast<std::size_t>(Tp * Dp)), q16, p16(static_cast<std::size_t>(R * Tp));
#pragma omp for collapse(2) schedule(dynamic)
    for (std::int64_t n = 0; n < d.batch; ++n)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        const auto kv_offset = n * d.kv_len * ld + h * Dh;
        amx::pack_panels(k_panels.data(), k + kv_offset, Dh, d.kv_len, 1, ld);  // K^T [Dp, Tp]
        amx::pack_panels(v_panels.data(), v + kv_offset, d.kv_len, Dh, ld, 1);  // V [Tp, Dp]
        for (std::int64_t q0 = 0; q0 < d.q_len; q0 += R) {
          const auto rows = std::min(R, d.q_len - q0);
          const auto q_offset = (n * d.q_len + q0) * ld + h * Dh;
          block_to_bf16(q16, q + q_offset, rows, R, Dh, ld, Dp);
          amx::gemm(R, Tp, Dp, q16.data(), Dp, k_panels.data(), S.data(), Tp, false);
          for (std::int64_t r = 0; r < rows; ++r) {
            float* row = S.data() + r * Tp;
            const auto visible = d.causal ? std::min(q0 + r + 1, d.kv_len) : d.kv_len;
            Eigen::Map<Eigen::ArrayXf, Eigen::AlignedMax>(row, visible) *= scale;
            lse[(n * d.heads + h) * d.q_len + q0 + r] = attention_detail::softmax_row(row, visible);
            std::fill(row + visible, row + Tp, 0.0f);
          }
          to_bf16_rows(p16.data(), S.data(), rows, Tp, Tp, Tp);
          std::fill(p16.begin() + rows * Tp, p16.begin() + R * Tp, std::uint16_t{0});
          amx::gemm(R, Dp, Tp, p16.data(), Tp, v_panels.data(), o.data(), Dp, false);
          for (std::int64_t r = 0; r < rows; ++r) std::copy_n(o.data() + r * Dp, Dh, out + q_offset + r * ld);
        }
      }
  }
}

// dq[N, Tq, H*Dh], dk / dv[N, Tk, H*Dh] assigned, from dout, the forward inputs, out and lse (a null one is skipped);
// products on AMX. Keys in chunks of kKeyChunk, each chunk's key and value gradients accumulated over every query
// block while they stay in L2; the query gradient accumulated over the chunks.
inline void attention_backward_amx(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                                   const float* out, const float* lse, const nn::AttentionDims& d) {
  using namespace attention_amx_detail;
  if (!dq && !dk && !dv) return;
  const auto ld = d.heads * d.head_dim, Dh = d.head_dim, Dp = amx::round_up(Dh), R = kQueryBlock;
  const auto Tq = (d.q_len + R - 1) / R * R, Kc = std::min(kKeyChunk, amx::round_up(d.kv_len));
  const float scale = static_cast<float>(d.effective_scale());
#pragma omp parallel if (parallel_worth(d.batch * d.heads * d.q_len * d.kv_len))
  {
    // per query block and chunk: P, dP / dS [R, Kc]; the chunk's gradients transposed, [Dp, Kc]; per head: dQ [Tq, Dp]
    Buffer<float> P(static_cast<std::size_t>(R * Kc)), dS(P.size()), dk_t(static_cast<std::size_t>(Dp * Kc)), dv_t(dk_t.size()), dq_acc, D;
    Bf16 k_panels(static_cast<std::size_t>(Dp * Kc)), vt_panels(k_panels.size()), kn_panels(k_panels.size()), q16, do16, qt16, dot16,
        pairs(static_cast<std::size_t>(R * Kc)), ds16(pairs.size());
#pragma omp for collapse(2) schedule(dynamic)
    for (std::int64_t n = 0; n < d.batch; ++n)
      for (std::int64_t h = 0; h < d.heads; ++h) {
        const auto kv_offset = n * d.kv_len * ld + h * Dh, q_offset = n * d.q_len * ld + h * Dh;
        const float* head_lse = lse + (n * d.heads + h) * d.q_len;
        // the head's queries and output gradients in bf16, [Tq, Dp] and transposed [Dp, Tq]; D = rowsum(dO o O)
        block_to_bf16(q16, q + q_offset, d.q_len, Tq, Dh, ld, Dp);
        block_to_bf16(do16, dout + q_offset, d.q_len, Tq, Dh, ld, Dp);
        if (dk) transpose_bf16(qt16, q16.data(), Tq, Dp);
        if (dv) transpose_bf16(dot16, do16.data(), Tq, Dp);
        sized(D, Tq);
        for (std::int64_t r = 0; r < Tq; ++r) {
          float dot = 0;
          if (r < d.q_len)
            for (std::int64_t c = 0; c < Dh; ++c) dot += dout[q_offset + r * ld + c] * out[q_offset + r * ld + c];
          D[r] = dot;
        }
        if (dq) std::fill_n(sized(dq_acc, Tq * Dp), Tq * Dp, 0.0f);
        for (std::int64_t c0 = 0; c0 < d.kv_len; c0 += Kc) {
          const auto cols = std::min(Kc, d.kv_len - c0), Cp = amx::round_up(cols);
          const float* k_chunk = k + kv_offset + c0 * ld;
          amx::pack_panels(k_panels.data(), k_chunk, Dh, cols, 1, ld);                                 // K^T [Dp, Cp]: the scores
          if (dq || dk) amx::pack_panels(vt_panels.data(), v + kv_offset + c0 * ld, Dh, cols, 1, ld);  // V^T [Dp, Cp]: dP
          if (dq) amx::pack_panels(kn_panels.data(), k_chunk, cols, Dh, ld, 1);                        // K [Cp, Dp]: dQ
          if (dk) std::fill_n(dk_t.data(), Dp * Cp, 0.0f);
          if (dv) std::fill_n(dv_t.data(), Dp * Cp, 0.0f);
          for (std::int64_t q0 = 0; q0 < d.q_len; q0 += R) {
            if (d.causal && q0 + R <= c0) continue;  // every key of the chunk lies above these rows' diagonal
            const auto rows = std::min(R, d.q_len - q0);
            // P = exp(scale S - lse), zero past the keys, above the diagonal (causal) and on the padding rows
            amx::gemm(R, Cp, Dp, q16.data() + q0 * Dp, Dp, k_panels.data(), P.data(), Cp, false);
            for (std::int64_t r = 0; r < R; ++r) {
              float* row = P.data() + r * Cp;
              const auto visible = r >= rows ? 0 : d.causal ? std::clamp<std::int64_t>(q0 + r + 1 - c0, 0, cols) : cols;
              if (visible > 0) {
                Eigen::Map<Eigen::ArrayXf, Eigen::AlignedMax> p(row, visible);
                p = (p * scale - head_lse[q0 + r]).exp();
              }
              std::fill(row + visible, row + Cp, 0.0f);
            }
            if (dv) {  // dV^T [Dp, Cp] += dO^T [Dp, R] P [R, Cp]
              amx::pack_row_pairs(pairs.data(), P.data(), R, Cp, Cp);
              amx::gemm(Dp, Cp, R, dot16.data() + q0, Tq, pairs.data(), dv_t.data(), Cp, true);
            }
            if (!dq && !dk) continue;
            // dS = P (dP - D), dP = dO V^T (zero where P is)
            amx::gemm(R, Cp, Dp, do16.data() + q0 * Dp, Dp, vt_panels.data(), dS.data(), Cp, false);
            for (std::int64_t r = 0; r < R; ++r) {
              Eigen::Map<const Eigen::ArrayXf, Eigen::AlignedMax> p(P.data() + r * Cp, Cp);
              Eigen::Map<Eigen::ArrayXf, Eigen::AlignedMax> ds(dS.data() + r * Cp, Cp);
              ds = p * (ds - D[q0 + r]);
            }
            if (dq) {  // dQ [R, Dp] += dS [R, Cp] K [Cp, Dp]
              to_bf16_rows(ds16.data(), dS.data(), R, Cp, Cp, Cp);
              amx::gemm(R, Dp, Cp, ds16.data(), Cp, kn_panels.data(), dq_acc.data() + q0 * Dp, Dp, true);
            }
            if (dk) {  // dK^T [Dp, Cp] += Q^T [Dp, R] dS [R, Cp]
              amx::pack_row_pairs(pairs.data(), dS.data(), R, Cp, Cp);
              amx::gemm(Dp, Cp, R, qt16.data() + q0, Tq, pairs.data(), dk_t.data(), Cp, true);
            }
          }
          if (dk) transpose_out(dk + kv_offset + c0 * ld, ld, dk_t.data(), Cp, cols, Dh, scale);
          if (dv) transpose_out(dv + kv_offset + c0 * ld, ld, dv_t.data(), Cp, cols, Dh, 1.0f);
        }
        if (dq)
          for (std::int64_t r = 0; r < d.q_len; ++r)
            for (std::int64_t c = 0; c < Dh; ++c) dq[q_offset + r * ld + c] = scale * dq_acc[r * Dp + c];
      }
  }
}

}  // namespace dreambooth::cpu
