// Multi-head attention on the GPU, memory-efficient in the flash-attention manner: the work runs per
// image and per chunk of query rows (all heads at once), so the scores exist only as one
// [heads, chunk, Tk] tile (CudaOptions::attention_tile_bytes), never as the [heads, Tq, Tk] matrix.
// Forward saves the log-sum-exp of each query row; backward recomputes the probabilities from it:
//   P = exp(scale * Q K^T - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
//   dQ = scale * dS K, dK += scale * dS^T Q.
// The tile GEMMs are strided-batched cuBLASLt calls over the heads (heads are interleaved in the
// [N, T, H * Dh] layout: head h starts at column h * Dh, so the batch stride is Dh), at the backend's
// compute precision; the softmax runs in fp32.
#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

// Rows of a [heads, rows, ldS] tile, one block per (head, row): P = softmax(S) in place, lse saved.
// Causal: key j > first_row + r is masked out.
__global__ void tile_softmax_kernel(float* tile, float* lse, std::int64_t rows, std::int64_t ldS, std::int64_t kv_len, std::int64_t q_len,
                                    std::int64_t first_row, bool causal) {
  const std::int64_t h = blockIdx.x / rows, r = blockIdx.x % rows;
  float* s = tile + static_cast<std::int64_t>(blockIdx.x) * ldS;
  const std::int64_t visible = causal ? min(kv_len, first_row + r + 1) : kv_len;
  float max = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < visible; j += blockDim.x) max = fmaxf(max, s[j]);
  max = block_max(max);
  float sum = 0;
  for (std::int64_t j = threadIdx.x; j < visible; j += blockDim.x) sum += (s[j] = expf(s[j] - max));
  sum = block_sum(sum);
  const float inv = 1.0f / sum;
  for (std::int64_t j = threadIdx.x; j < kv_len; j += blockDim.x) s[j] = j < visible ? s[j] * inv : 0.0f;
  if (threadIdx.x == 0) lse[h * q_len + first_row + r] = max + logf(sum);
}

// P = exp(S - lse) in place (0 where masked).
__global__ void tile_probabilities_kernel(float* tile, const float* lse, std::int64_t rows, std::int64_t ldS, std::int64_t kv_len, std::int64_t q_len,
                                          std::int64_t first_row, bool causal) {
  const std::int64_t h = blockIdx.x / rows, r = blockIdx.x % rows;
  float* s = tile + static_cast<std::int64_t>(blockIdx.x) * ldS;
  const float l = lse[h * q_len + first_row + r];
  const std::int64_t visible = causal ? min(kv_len, first_row + r + 1) : kv_len;
  for (std::int64_t j = threadIdx.x; j < kv_len; j += blockDim.x) s[j] = j < visible ? expf(s[j] - l) : 0.0f;
}

// dS = P * (dP - rowsum(dO * O)) in place of dP; dout / out rows of head h at column h * Dh, row stride ld.
__global__ void tile_score_gradient_kernel(float* dP, const float* P, const float* dout, const float* out, std::int64_t rows, std::int64_t ldS,
                                           std::int64_t kv_len, std::int64_t ld, std::int64_t head_dim) {
  const std::int64_t h = blockIdx.x / rows, r = blockIdx.x % rows;
  const float* g = dout + r * ld + h * head_dim;
  const float* o = out + r * ld + h * head_dim;
  float dot = 0;
  for (std::int64_t c = threadIdx.x; c < head_dim; c += blockDim.x) dot += g[c] * o[c];
  dot = block_sum(dot);
  float* ds = dP + static_cast<std::int64_t>(blockIdx.x) * ldS;
  const float* p = P + static_cast<std::int64_t>(blockIdx.x) * ldS;
  for (std::int64_t j = threadIdx.x; j < kv_len; j += blockDim.x) ds[j] = p[j] * (ds[j] - dot);
}

// Query rows per chunk so that one [heads, rows, ldS] fp32 tile fits the budget (at least 1, at most Tq).
std::int64_t chunk_rows(const nn::AttentionDims& d, std::int64_t ldS, std::size_t tile_bytes) {
  const auto per_row = static_cast<std::size_t>(d.heads * ldS) * sizeof(float);
  auto rows = static_cast<std::int64_t>(tile_bytes / std::max<std::size_t>(per_row, 1));
  if (rows >= 64) rows = rows / 64 * 64;
  return std::clamp<std::int64_t>(rows, 1, d.q_len);
}

}  // namespace

void CudaBackend::attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, const nn::AttentionDims& d) {
  DB_CHECK(!d.causal || d.q_len == d.kv_len, "attention: a causal mask needs as many queries as keys (", d.q_len, " vs ", d.kv_len, ")");
  if (d.batch * d.heads * d.q_len == 0) return;
  DB_CHECK(d.kv_len > 0, "attention: no keys");
  const std::int64_t ld = d.heads * d.head_dim, ldS = (d.kv_len + 7) / 8 * 8;  // 32-byte aligned tile rows
  const std::int64_t chunk = chunk_rows(d, ldS, impl_->options.attention_tile_bytes);
  const float scale = static_cast<float>(d.effective_scale());
  Scratch tile(*this, static_cast<std::size_t>(d.heads * chunk * ldS) * sizeof(float));
  for (std::int64_t n = 0; n < d.batch; ++n) {
    const T* k_n = k + n * d.kv_len * ld;
    const T* v_n = v + n * d.kv_len * ld;
    for (std::int64_t q0 = 0; q0 < d.q_len; q0 += chunk) {
      const std::int64_t rows = std::min(chunk, d.q_len - q0);
      const auto q_offset = (n * d.q_len + q0) * ld;
      // S[h] = scale Q_blk[h] K[h]^T: [rows, Tk] per head
      gemm_strided_batched(false, true, rows, d.kv_len, d.head_dim, scale, q + q_offset, ld, d.head_dim, k_n, ld, d.head_dim, 0.0f, tile.get<T>(),
                           ldS, rows * ldS, d.heads);
      tile_softmax_kernel<<<as_blocks(d.heads * rows), kThreads, 0, impl_->stream>>>(tile.get<T>(), lse + n * d.heads * d.q_len, rows, ldS, d.kv_len,
                                                                                     d.q_len, q0, d.causal);
      check_launch("attention softmax");
      // O_blk[h] = P[h] V[h]
      gemm_strided_batched(false, false, rows, d.head_dim, d.kv_len, 1.0f, tile.get<T>(), ldS, rows * ldS, v_n, ld, d.head_dim, 0.0f, out + q_offset,
                           ld, d.head_dim, d.heads);
    }
  }
}

void CudaBackend::attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                                     const nn::AttentionDims& d) {
  if (d.batch * d.heads == 0 || (!dq && !dk && !dv)) return;
  const std::int64_t ld = d.heads * d.head_dim, ldS = (d.kv_len + 7) / 8 * 8;
  if (d.q_len == 0) {  // no queries: no gradient reaches the keys and values
    if (dk) fill(dk, 0.0f, static_cast<std::size_t>(d.batch * d.kv_len * ld));
    if (dv) fill(dv, 0.0f, static_cast<std::size_t>(d.batch * d.kv_len * ld));
    return;
  }
  const std::int64_t chunk = chunk_rows(d, ldS, impl_->options.attention_tile_bytes);
  const float scale = static_cast<float>(d.effective_scale());
  const auto tile_bytes = static_cast<std::size_t>(d.heads * chunk * ldS) * sizeof(float);
  Scratch P(*this, tile_bytes), dP(*this, tile_bytes);
  for (std::int64_t n = 0; n < d.batch; ++n) {
    const auto kv_offset = n * d.kv_len * ld;
    for (std::int64_t q0 = 0; q0 < d.q_len; q0 += chunk) {
      const std::int64_t rows = std::min(chunk, d.q_len - q0);
      const auto q_offset = (n * d.q_len + q0) * ld;
      const float beta = q0 == 0 ? 0.0f : 1.0f;  // the first chunk assigns dK / dV, later ones add
      gemm_strided_batched(false, true, rows, d.kv_len, d.head_dim, scale, q + q_offset, ld, d.head_dim, k + kv_offset, ld, d.head_dim, 0.0f,
                           P.get<T>(), ldS, rows * ldS, d.heads);
      tile_probabilities_kernel<<<as_blocks(d.heads * rows), kThreads, 0, impl_->stream>>>(P.get<T>(), lse + n * d.heads * d.q_len, rows, ldS,
                                                                                           d.kv_len, d.q_len, q0, d.causal);
      check_launch("attention probabilities");
      // dV[h] += P[h]^T dO_blk[h]: [Tk, Dh]
      if (dv)
        gemm_strided_batched(true, false, d.kv_len, d.head_dim, rows, 1.0f, P.get<T>(), ldS, rows * ldS, dout + q_offset, ld, d.head_dim, beta,
                             dv + kv_offset, ld, d.head_dim, d.heads);
      if (!dq && !dk) continue;
      // dP[h] = dO_blk[h] V[h]^T: [rows, Tk], then dS in place
      gemm_strided_batched(false, true, rows, d.kv_len, d.head_dim, 1.0f, dout + q_offset, ld, d.head_dim, v + kv_offset, ld, d.head_dim, 0.0f,
                           dP.get<T>(), ldS, rows * ldS, d.heads);
      tile_score_gradient_kernel<<<as_blocks(d.heads * rows), kThreads, 0, impl_->stream>>>(dP.get<T>(), P.get<T>(), dout + q_offset, out + q_offset,
                                                                                            rows, ldS, d.kv_len, ld, d.head_dim);
      check_launch("attention score gradient");
      // dQ_blk[h] = scale dS[h] K[h]; dK[h] += scale dS[h]^T Q_blk[h]
      if (dq)
        gemm_strided_batched(false, false, rows, d.head_dim, d.kv_len, scale, dP.get<T>(), ldS, rows * ldS, k + kv_offset, ld, d.head_dim, 0.0f,
                             dq + q_offset, ld, d.head_dim, d.heads);
      if (dk)
        gemm_strided_batched(true, false, d.kv_len, d.head_dim, rows, scale, dP.get<T>(), ldS, rows * ldS, q + q_offset, ld, d.head_dim, beta,
                             dk + kv_offset, ld, d.head_dim, d.heads);
    }
  }
}

}  // namespace dreambooth
