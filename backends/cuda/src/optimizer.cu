// The optimizer family on the GPU: the AdamW step and the EMA update (their element formulas nn/scalar_math.hpp's, as
// the CPU's cpu/optimizer.hpp) and squared norms of vectors (gradient clipping), deterministic two-stage sums.
#include "dreambooth/nn/scalar_math.hpp"
#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, std::size_t n, math::AdamWFactors<float> factors, float beta1,
                             float beta2, float eps) {
  DB_GRID_STRIDE(i, n) {
    float p = param[i], mi = m[i], vi = v[i];
    math::adamw_update(p, mi, vi, grad[i], factors, beta1, beta2, eps);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void ema_kernel(float* shadow, const float* param, std::size_t n, float one_minus_decay) {
  DB_GRID_STRIDE(i, n) {
    float s = shadow[i];
    math::ema_update(s, param[i], one_minus_decay);
    shadow[i] = s;
  }
}

}  // namespace

void CudaBackend::ema_update(T* shadow, const T* param, std::size_t n, T one_minus_decay) {
  if (!n) return;
  ema_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(shadow, param, n, one_minus_decay);
  check_launch("ema_update");
}

void CudaBackend::adamw_step(T* param, const T* grad, T* m, T* v, std::size_t n, T lr, T beta1, T beta2, T eps, T weight_decay, T bias_correction1,
                             T bias_correction2) {
  if (!n) return;
  const auto factors = math::adamw_factors(lr, weight_decay, bias_correction1, bias_correction2);
  adamw_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(param, grad, m, v, n, factors, beta1, beta2, eps);
  check_launch("adamw_step");
}

double CudaBackend::squared_norm(const T* x, std::size_t n) {
  Scratch partials(*this, (kReduceBlocks + 1) * sizeof(double));
  squared_difference_partials(impl_->stream, partials.get<double>(), x, nullptr, n);
  finish_sum(impl_->stream, partials.get<double>() + kReduceBlocks, nullptr, partials.get<double>(), kReduceBlocks, n);
  check_launch("squared_norm");
  double result = 0;
  copy_to_host(&result, partials.get<double>() + kReduceBlocks, sizeof result);
  return result;
}
double CudaBackend::squared_norm_sum(std::span<const T* const> tensors, std::span<const std::size_t> sizes) {
  DB_CHECK(tensors.size() == sizes.size(), "squared_norm_sum: ", tensors.size(), " tensors but ", sizes.size(), " sizes");
  const std::size_t partial_count = tensors.size() * kReduceBlocks;
  Scratch partials(*this, (partial_count + 1) * sizeof(double));
  for (std::size_t i = 0; i < tensors.size(); ++i)
    squared_difference_partials(impl_->stream, partials.get<double>() + i * kReduceBlocks, tensors[i], nullptr, sizes[i]);
  finish_sum(impl_->stream, partials.get<double>() + partial_count, nullptr, partials.get<double>(), static_cast<int>(partial_count), 0, 1024);
  check_launch("squared_norm_sum");
  double result = 0;
  copy_to_host(&result, partials.get<double>() + partial_count, sizeof result);
  return result;
}

}  // namespace dreambooth
