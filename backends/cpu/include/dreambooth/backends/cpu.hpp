// The CPU reference backend: Eigen GEMMs plus plain loops, threaded with OpenMP. This class holds the memory; each op
// is defined in cpu/<family>.hpp, its family as listed in backend_ops.hpp (the CUDA backend: src/<family>.cu).
//
// CpuBackendT<float> (alias CpuBackend) is what programs use; CpuBackendT<double> exists so that the
// gradient checks run the very same kernels in double precision against central finite differences.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "dreambooth/backend.hpp"
#include "dreambooth/backends/cpu/activations.hpp"
#include "dreambooth/backends/cpu/attention.hpp"
#include "dreambooth/backends/cpu/conv2d.hpp"
#include "dreambooth/backends/cpu/gemm.hpp"
#include "dreambooth/backends/cpu/normalization.hpp"
#include "dreambooth/backends/cpu/optimizer.hpp"
#include "dreambooth/backends/cpu/tensor_ops.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/core/text.hpp"

namespace dreambooth {

template <class Scalar>
class CpuBackendT {
 public:
  using value_type = Scalar;
  using T = Scalar;

  const char* name() const { return "cpu"; }
  // Tensors live in host memory: their pointers can be read and written by any host code (a gradient summed in place
  // over the processes, train/gradient_sum.hpp).
  static constexpr bool host_memory = true;

  CpuBackendT() = default;
  // The GEMMs' compute precision (linear layers, convolutions, gemm): fp32, or bf16 operands with fp32 accumulation
  // (cpu/gemm_bf16.hpp; float only, and only where bf16_gemm_isa() names a kernel). Storage stays fp32.
  void set_compute(cpu::GemmCompute compute) {
    DB_CHECK((compute == cpu::GemmCompute::fp32 || std::is_same_v<T, float>), "the CPU backend computes bf16 GEMMs in float only");
    compute_ = compute;
  }
  cpu::GemmCompute compute() const { return compute_; }
  CpuBackendT(const CpuBackendT&) = delete;
  CpuBackendT& operator=(const CpuBackendT&) = delete;
  ~CpuBackendT() { release_cached(); }

  // --- memory (host memory, 64-byte aligned) ---
  // Freed blocks are kept by size and handed out again: a training step allocates the same shapes every step,
  // and returning large blocks to the system costs a page fault per 4 KiB when they come back (measured: the SD
  // UNet forward ran 17 s with fresh pages, 12 s with reuse). release_cached() gives them back.
  void* allocate(std::size_t bytes) {
    const std::size_t rounded = (bytes + 63) / 64 * 64;
    void* p = nullptr;
    if (auto it = cache_.find(rounded); it != cache_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      bytes_cached_ -= rounded;
    } else {
      p = std::aligned_alloc(64, rounded ? rounded : 64);
      if (!p) {  // give the cached blocks back and try once more, then say how much was asked for
        release_cached();
        p = std::aligned_alloc(64, rounded ? rounded : 64);
      }
      if (!p)
        fail("out of host memory: a tensor of ", text::format_bytes(rounded), " could not be allocated (", text::format_bytes(bytes_in_use_),
             " in use by tensors); a smaller model.data.resolution, micro batch or image, or gradient checkpointing, needs less");
    }
    bytes_in_use_ += bytes;
    peak_bytes_ = std::max(peak_bytes_, bytes_in_use_);
    return p;
  }
  void deallocate(void* p, std::size_t bytes) {
    const std::size_t rounded = (bytes + 63) / 64 * 64;
    cache_[rounded].push_back(p);
    bytes_cached_ += rounded;
    bytes_in_use_ -= bytes;
  }
  // Returns the cached free blocks and the ops' workspace to the system.
  void release_cached() {
    for (auto& [size, blocks] : cache_)
      for (void* p : blocks) std::free(p);
    cache_.clear();
    bytes_cached_ = 0;
    workspace_.release();
  }
  std::size_t bytes_cached() const { return bytes_cached_; }
  // The convolutions' scratch block (cpu/workspace.hpp), kept between calls; not counted in bytes_in_use / peak_bytes.
  std::size_t workspace_bytes() const { return workspace_.bytes(); }
  // Memory accounting of this backend object's allocations (for memory plans and peak figures).
  std::size_t bytes_in_use() const { return bytes_in_use_; }
  std::size_t peak_bytes() const { return peak_bytes_; }
  void reset_peak() { peak_bytes_ = bytes_in_use_; }
  void copy_to_device(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  void copy_device(void* dst, const void* src, std::size_t bytes) { std::memmove(dst, src, bytes); }
  void synchronize() {}
  void fill(T* x, T value, std::size_t n) { cpu::fill(x, value, n); }
  void fill_normal(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T mean, T stddev) {
    cpu::fill_normal(x, n, seed, offset, mean, stddev);
  }
  void fill_uniform(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T low, T high) {
    cpu::fill_uniform(x, n, seed, offset, low, high);
  }

  // --- elementwise and GEMM ---
  void add(T* out, const T* a, const T* b, std::size_t n) { cpu::add(out, a, b, n); }
  void mul(T* out, const T* a, const T* b, std::size_t n) { cpu::mul(out, a, b, n); }
  void scale(T* out, const T* a, T s, std::size_t n) { cpu::scale(out, a, s, n); }
  void accumulate(T* y, const T* x, std::size_t n) { cpu::accumulate(y, x, n); }
  void mul_backward(T* da, T* db, const T* dout, const T* a, const T* b, std::size_t n) { cpu::mul_backward(da, db, dout, a, b, n); }
  void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
            std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
    const cpu::GemmComputeScope scope(compute_);
    cpu::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  // --- linear ---
  void linear_forward(T* out, const T* in, const T* weight, const T* bias, const nn::LinearDims& d) {
    const cpu::GemmComputeScope scope(compute_);
    cpu::linear_forward(out, in, weight, bias, d);
  }
  void linear_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::LinearDims& d) {
    const cpu::GemmComputeScope scope(compute_);
    cpu::linear_backward(din, dweight, dbias, dout, in, weight, d);
  }

  // --- convolution ---
  void conv2d_forward(T* out, const T* in, const T* weight, const T* bias, const nn::Conv2dDims& d) {
    const cpu::GemmComputeScope scope(compute_);
    cpu::conv2d_forward(workspace_, out, in, weight, bias, d);
  }
  void conv2d_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::Conv2dDims& d) {
    const cpu::GemmComputeScope scope(compute_);
    cpu::conv2d_backward(workspace_, din, dweight, dbias, dout, in, weight, d);
  }

  // --- normalisation ---
  void group_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
    cpu::group_norm_forward(out, mean, rstd, in, gamma, beta, d);
  }
  void group_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                           const nn::GroupNormDims& d) {
    cpu::group_norm_backward(din, dgamma, dbeta, dout, in, mean, rstd, gamma, d);
  }
  void group_norm_silu_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
    cpu::group_norm_silu_forward(out, mean, rstd, in, gamma, beta, d);
  }
  void group_norm_silu_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma, const T* beta,
                                const nn::GroupNormDims& d) {
    const auto bytes = static_cast<std::size_t>(d.batch * d.channels * d.spatial) * sizeof(T);  // dy scratch, counted in the peak
    T* dy = static_cast<T*>(allocate(bytes));
    cpu::group_norm_silu_backward(din, dgamma, dbeta, dout, in, mean, rstd, gamma, beta, d, dy);
    deallocate(dy, bytes);
  }
  void layer_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::LayerNormDims& d) {
    cpu::layer_norm_forward(out, mean, rstd, in, gamma, beta, d);
  }
  void layer_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                           const nn::LayerNormDims& d) {
    cpu::layer_norm_backward(din, dgamma, dbeta, dout, in, mean, rstd, gamma, d);
  }

  // --- activations ---
  void silu_forward(T* out, const T* in, std::size_t n) { cpu::silu_forward(out, in, n); }
  void silu_backward(T* din, const T* dout, const T* in, std::size_t n) { cpu::silu_backward(din, dout, in, n); }
  void gelu_forward(T* out, const T* in, std::size_t n) { cpu::gelu_forward(out, in, n); }
  void gelu_backward(T* din, const T* dout, const T* in, std::size_t n) { cpu::gelu_backward(din, dout, in, n); }
  void quick_gelu_forward(T* out, const T* in, std::size_t n) { cpu::quick_gelu_forward(out, in, n); }
  void quick_gelu_backward(T* din, const T* dout, const T* in, std::size_t n) { cpu::quick_gelu_backward(din, dout, in, n); }
  void geglu_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) { cpu::geglu_forward(out, in, rows, dim); }
  void geglu_backward(T* din, const T* dout, const T* in, std::int64_t rows, std::int64_t dim) { cpu::geglu_backward(din, dout, in, rows, dim); }
  void softmax_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) { cpu::softmax_forward(out, in, rows, dim); }
  void softmax_backward(T* din, const T* dout, const T* out, std::int64_t rows, std::int64_t dim) {
    cpu::softmax_backward(din, dout, out, rows, dim);
  }

  // --- attention ---
  void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, const nn::AttentionDims& d) {
    DB_CHECK(!d.causal || d.q_len == d.kv_len, "attention: a causal mask needs as many queries as keys (", d.q_len, " vs ", d.kv_len, ")");
    const cpu::GemmComputeScope scope(compute_);
    cpu::attention_forward(out, lse, q, k, v, d);
  }
  void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                          const nn::AttentionDims& d) {
    const cpu::GemmComputeScope scope(compute_);
    cpu::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, d);
  }

  // --- data movement, embeddings, loss ---
  void transpose(T* out, const T* in, std::int64_t batch, std::int64_t rows, std::int64_t cols) { cpu::transpose(out, in, batch, rows, cols); }
  void add_channel_bias(T* out, const T* in, const T* bias, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
    cpu::add_channel_bias(out, in, bias, batch, channels, spatial);
  }
  void channel_sum(T* sums, const T* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
    cpu::channel_sum(sums, in, batch, channels, spatial);
  }
  void upsample_nearest2x_forward(T* out, const T* in, std::int64_t planes, std::int64_t H, std::int64_t W) {
    cpu::upsample_nearest2x_forward(out, in, planes, H, W);
  }
  void upsample_nearest2x_backward(T* din, const T* dout, std::int64_t planes, std::int64_t H, std::int64_t W) {
    cpu::upsample_nearest2x_backward(din, dout, planes, H, W);
  }
  void concat_channels(T* out, const T* a, const T* b, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
    cpu::concat_channels(out, a, b, outer, ca, cb, inner);
  }
  void split_channels(T* a, T* b, const T* in, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
    cpu::split_channels(a, b, in, outer, ca, cb, inner);
  }
  void embedding_forward(T* out, const std::int32_t* ids, const T* token_table, const T* position_table, std::int64_t batch, std::int64_t seq,
                         std::int64_t vocab, std::int64_t dim) {
    cpu::embedding_forward(out, ids, token_table, position_table, batch, seq, vocab, dim);
  }
  void embedding_backward(T* dtoken_table, T* dposition_table, const T* dout, const std::int32_t* ids, std::int64_t batch, std::int64_t seq,
                          std::int64_t vocab, std::int64_t dim) {
    cpu::embedding_backward(dtoken_table, dposition_table, dout, ids, batch, seq, vocab, dim);
  }
  void mse_forward(T* loss, const T* a, const T* b, std::size_t n) { cpu::mse_forward(loss, a, b, n); }
  void mse_backward(T* da, T* db, const T* dloss, const T* a, const T* b, std::size_t n) { cpu::mse_backward(da, db, dloss, a, b, n); }
  void timestep_embedding_forward(T* out, const T* timesteps, const nn::TimestepEmbeddingDims& d) {
    cpu::timestep_embedding_forward(out, timesteps, d);
  }
  void clamp(T* out, const T* in, T low, T high, std::size_t n) { cpu::clamp(out, in, low, high, n); }
  void dropout(T* out, const T* in, std::size_t n, std::uint64_t seed, std::uint64_t offset, T p) { cpu::dropout(out, in, n, seed, offset, p); }
  void diagonal_gaussian_sample(T* latents, const T* moments, const T* eps, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
    cpu::diagonal_gaussian_sample(latents, moments, eps, batch, channels, spatial);
  }

  // --- optimisation ---
  void adamw_step(T* param, const T* grad, T* m, T* v, std::size_t n, T lr, T beta1, T beta2, T eps, T weight_decay, T bias_correction1,
                  T bias_correction2) {
    cpu::adamw_step(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2);
  }
  void ema_update(T* shadow, const T* param, std::size_t n, T one_minus_decay) { cpu::ema_update(shadow, param, n, one_minus_decay); }
  double squared_norm(const T* x, std::size_t n) { return cpu::squared_norm(x, n); }

 private:
  std::size_t bytes_in_use_ = 0;
  std::size_t peak_bytes_ = 0;
  std::size_t bytes_cached_ = 0;
  cpu::Workspace workspace_;
  std::unordered_map<std::size_t, std::vector<void*>> cache_;
  cpu::GemmCompute compute_ = cpu::GemmCompute::fp32;
};

using CpuBackend = CpuBackendT<float>;

static_assert(Backend<CpuBackendT<float>>);
static_assert(Backend<CpuBackendT<double>>);

}  // namespace dreambooth
