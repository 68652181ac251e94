// The CUDA backend (plugin): declared here in plain C++, defined in backends/cuda/src/*.cu (backend.cu: the class and
// memory; each op in the <family>.cu of its family in backend_ops.hpp, as the CPU backend's cpu/<family>.hpp), so
// that translation units that use it never include CUDA headers. Link dreambooth::cuda.
//
// Every op of the Backend concept runs on the device, on one stream:
// - GEMMs (linear layers, attention tiles) through cuBLASLt, one plan per shape, cached;
// - convolutions through cuDNN (forward, backward data, backward filter), the algorithm found once per
//   shape (fastest deterministic one) and cached;
// - attention tiled over query blocks with the log-sum-exp saved (never the [Tq, Tk] score matrix of a
//   whole head set at once), backward recomputing the probabilities, as the CPU backend does;
// - norms, activations, softmax, AdamW and the small ops as CUDA kernels; reductions are deterministic
//   (fixed order, no float atomics), so two runs give the same bits.
// Storage is fp32 everywhere (master weights, gradients, optimizer state, activations). The compute
// precision of the GEMMs and convolutions is an option: fp32 (exact, no TF32: parity with the CPU),
// tf32, bf16 or fp16 (tensor cores, inputs rounded to 16 bits, fp32 accumulation; what autocast does
// for these ops). Norms, softmax, losses and the optimizer always compute in fp32 or wider.
// Memory comes from a stream-ordered pool that keeps freed blocks (an arena; release_cached() returns them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "dreambooth/backend.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth {

// Compute precision of GEMMs and convolutions (storage stays fp32).
enum class CudaPrecision { fp32, tf32, bf16, fp16 };

// "32" / "fp32" / "32-true", "tf32", "bf16" / "bf16-mixed", "16" / "fp16" / "16-mixed"; throws naming the value otherwise.
CudaPrecision parse_cuda_precision(std::string_view text);
const char* to_string(CudaPrecision precision);

struct CudaOptions {
  int device = 0;
  CudaPrecision precision = CudaPrecision::fp32;
  // Bytes of score tile per attention chunk (the forward uses one tile, the backward two).
  std::size_t attention_tile_bytes = std::size_t(256) << 20;
  // Largest cuDNN workspace an algorithm may ask for.
  std::size_t conv_workspace_limit = std::size_t(2) << 30;
};

class NcclCommunicator;  // cuda_nccl.hpp: sums gradients on the backend's stream

class CudaBackend {
 public:
  using value_type = float;
  using T = float;

  // Uses the given device; throws dreambooth::Error when no CUDA device is present.
  explicit CudaBackend(CudaOptions options = {});
  explicit CudaBackend(int device) : CudaBackend(CudaOptions{.device = device}) {}
  ~CudaBackend();
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const { return "cuda"; }
  // Number of CUDA devices visible (0 when there is no driver or no GPU); never throws.
  static int device_count();
  // "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB".
  std::string_view device_description() const;

  CudaPrecision precision() const;
  void set_precision(CudaPrecision precision);

  // --- memory ---
  void* allocate(std::size_t bytes);
  void deallocate(void* p, std::size_t bytes);
  void release_cached();
  std::size_t bytes_in_use() const;
  std::size_t peak_bytes() const;
  void reset_peak();
  // Device memory the pool holds (in use + cached), and the most it has held.
  std::size_t bytes_reserved() const;
  std::size_t peak_bytes_reserved() const;
  void copy_to_device(void* dst, const void* src, std::size_t bytes);
  void copy_to_host(void* dst, const void* src, std::size_t bytes);
  void copy_device(void* dst, const void* src, std::size_t bytes);
  // Waits for the stream; reports a device-side error (a token id outside the vocabulary) raised since the last call.
  void synchronize();
  void fill(T* x, T value, std::size_t n);
  void fill_normal(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T mean, T stddev);
  void fill_uniform(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T low, T high);

  // --- elementwise and GEMM ---
  void add(T* out, const T* a, const T* b, std::size_t n);
  void mul(T* out, const T* a, const T* b, std::size_t n);
  void scale(T* out, const T* a, T s, std::size_t n);
  void accumulate(T* y, const T* x, std::size_t n);
  void mul_backward(T* da, T* db, const T* dout, const T* a, const T* b, std::size_t n);
  // Row-major C[M, N] = alpha op(A) op(B) + beta C, as the CPU backend's gemm, at the compute precision.
  void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
            std::int64_t ldb, T beta, T* c, std::int64_t ldc);
  // `batch` GEMMs, operand i at a + i * stride_a (likewise b, c).
  void gemm_strided_batched(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                            std::int64_t stride_a, const T* b, std::int64_t ldb, std::int64_t stride_b, T beta, T* c, std::int64_t ldc,
                            std::int64_t stride_c, std::int64_t batch);

  // --- layers (same contracts as the CPU backend; see backend.hpp) ---
  void linear_forward(T* out, const T* in, const T* weight, const T* bias, const nn::LinearDims& d);
  void linear_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::LinearDims& d);
  void conv2d_forward(T* out, const T* in, const T* weight, const T* bias, const nn::Conv2dDims& d);
  void conv2d_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::Conv2dDims& d);
  void group_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d);
  void group_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                           const nn::GroupNormDims& d);
  // silu(group_norm(in)) in one pass; backward recomputes the normalised value from in and the statistics.
  void group_norm_silu_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d);
  void group_norm_silu_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma, const T* beta,
                                const nn::GroupNormDims& d);
  void layer_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::LayerNormDims& d);
  void layer_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                           const nn::LayerNormDims& d);
  void silu_forward(T* out, const T* in, std::size_t n);
  void silu_backward(T* din, const T* dout, const T* in, std::size_t n);
  void gelu_forward(T* out, const T* in, std::size_t n);
  void gelu_backward(T* din, const T* dout, const T* in, std::size_t n);
  void quick_gelu_forward(T* out, const T* in, std::size_t n);
  void quick_gelu_backward(T* din, const T* dout, const T* in, std::size_t n);
  void geglu_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim);
  void geglu_backward(T* din, const T* dout, const T* in, std::int64_t rows, std::int64_t dim);
  void softmax_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim);
  void softmax_backward(T* din, const T* dout, const T* out, std::int64_t rows, std::int64_t dim);
  void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, const nn::AttentionDims& d);
  void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                          const nn::AttentionDims& d);

  // --- data movement, embeddings, loss ---
  void transpose(T* out, const T* in, std::int64_t batch, std::int64_t rows, std::int64_t cols);
  void add_channel_bias(T* out, const T* in, const T* bias, std::int64_t batch, std::int64_t channels, std::int64_t spatial);
  void channel_sum(T* sums, const T* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial);
  void upsample_nearest2x_forward(T* out, const T* in, std::int64_t planes, std::int64_t H, std::int64_t W);
  void upsample_nearest2x_backward(T* din, const T* dout, std::int64_t planes, std::int64_t H, std::int64_t W);
  void concat_channels(T* out, const T* a, const T* b, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner);
  void split_channels(T* a, T* b, const T* in, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner);
  // ids live in device memory; an id outside [0, vocab) gives zeros and is reported by the next synchronize() / copy_to_host().
  void embedding_forward(T* out, const std::int32_t* ids, const T* token_table, const T* position_table, std::int64_t batch, std::int64_t seq,
                         std::int64_t vocab, std::int64_t dim);
  void embedding_backward(T* dtoken_table, T* dposition_table, const T* dout, const std::int32_t* ids, std::int64_t batch, std::int64_t seq,
                          std::int64_t vocab, std::int64_t dim);
  void mse_forward(T* loss, const T* a, const T* b, std::size_t n);
  void mse_backward(T* da, T* db, const T* dloss, const T* a, const T* b, std::size_t n);
  void timestep_embedding_forward(T* out, const T* timesteps, const nn::TimestepEmbeddingDims& d);
  void clamp(T* out, const T* in, T low, T high, std::size_t n);
  void dropout(T* out, const T* in, std::size_t n, std::uint64_t seed, std::uint64_t offset, T p);
  void diagonal_gaussian_sample(T* latents, const T* moments, const T* eps, std::int64_t batch, std::int64_t channels, std::int64_t spatial);

  // --- optimisation ---
  // One fused kernel: decoupled weight decay, both moments and the update, as torch.optim.AdamW.
  void adamw_step(T* param, const T* grad, T* m, T* v, std::size_t n, T lr, T beta1, T beta2, T eps, T weight_decay, T bias_correction1,
                  T bias_correction2);
  // The EMA of the trained weights: shadow -= one_minus_decay * (shadow - param) (diffusers' EMAModel.step).
  void ema_update(T* shadow, const T* param, std::size_t n, T one_minus_decay);
  // sum(x^2) in double (a deterministic two-stage reduction; synchronises to return it).
  double squared_norm(const T* x, std::size_t n);
  // The sum of squared_norm over several tensors with one synchronisation (the global gradient norm).
  double squared_norm_sum(std::span<const T* const> tensors, std::span<const std::size_t> sizes);

  struct Impl;  // defined in src/internal.cuh

 private:
  friend class NcclCommunicator;
  std::unique_ptr<Impl> impl_;
};

static_assert(Backend<CudaBackend>);

}  // namespace dreambooth
