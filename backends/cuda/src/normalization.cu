// The normalization family on the GPU: group norm (alone and fused with the SiLU that follows it in the ResNet
// blocks) and layer norm, forward and backward. Statistics accumulate in double, as on the CPU
// (cpu/normalization.hpp); parameter gradients use the deterministic reductions of internal.cuh.
#include "dreambooth/nn/scalar_math.hpp"
#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

constexpr int kNormThreads = 512;

// One block per normalised run: batch n, group g of C / G channels times S positions, contiguous in memory.
// Layer norm is the case S = 1, G = 1 (a run per row, affine index = column).
// With `silu`, out = silu(normalised) (the fused group norm + SiLU of the ResNet blocks).
__global__ void norm_forward_kernel(float* out, float* mean_out, float* rstd_out, const float* in, const float* gamma, const float* beta,
                                    std::int64_t channels, std::int64_t spatial, std::int64_t groups, double eps, bool silu) {
  const std::int64_t run = blockIdx.x, g = run % groups, group_channels = channels / groups, len = group_channels * spatial;
  const std::int64_t base = run * len;  // (n * C + g * Cg) * S
  const float* x = in + base;
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) sum += x[i];
  const double mean = block_sum(sum) / static_cast<double>(len);
  double sq = 0;
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const double d = x[i] - mean;
    sq += d * d;
  }
  const double rstd = 1.0 / sqrt(block_sum(sq) / static_cast<double>(len) + eps);  // biased variance, as PyTorch
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const std::int64_t c = g * group_channels + i / spatial;
    const float y = static_cast<float>((x[i] - mean) * rstd) * gamma[c] + beta[c];
    out[base + i] = silu ? math::silu(y) : y;
  }
  if (threadIdx.x == 0) {
    mean_out[run] = static_cast<float>(mean);
    rstd_out[run] = static_cast<float>(rstd);
  }
}

// The gradient reaching the normalised output y at element `index` (channel c, statistics `stat`): dout itself, or
// through the fused SiLU, dout * silu'(y) with y recomputed from the input and the saved statistics.
struct OutputGradient {
  const float* dout;
  __device__ float operator()(std::int64_t index, std::int64_t, std::int64_t) const { return dout[index]; }
};
struct SiluOutputGradient {
  const float *dout, *in, *mean, *rstd, *gamma, *beta;
  __device__ float operator()(std::int64_t index, std::int64_t c, std::int64_t stat) const {
    const float y = math::normalized_affine(in[index], mean[stat], rstd[stat], gamma[c], beta[c]);
    return math::silu_backward(dout[index], y);
  }
};

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * gamma; one block per run.
template <class Gradient>
__global__ void norm_backward_input_kernel(float* din, Gradient dy, const float* in, const float* mean_in, const float* rstd_in, const float* gamma,
                                           std::int64_t channels, std::int64_t spatial, std::int64_t groups) {
  const std::int64_t run = blockIdx.x, g = run % groups, group_channels = channels / groups, len = group_channels * spatial;
  const std::int64_t base = run * len;
  const double mean = mean_in[run], rstd = rstd_in[run];
  double sum_dxhat = 0, sum_dxhat_xhat = 0;
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const std::int64_t c = g * group_channels + i / spatial;
    const double xhat = (in[base + i] - mean) * rstd, dxhat = static_cast<double>(dy(base + i, c, run)) * gamma[c];
    sum_dxhat += dxhat;
    sum_dxhat_xhat += dxhat * xhat;
  }
  const double mean_dxhat = block_sum(sum_dxhat) / static_cast<double>(len);
  const double mean_dxhat_xhat = block_sum(sum_dxhat_xhat) / static_cast<double>(len);
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const std::int64_t c = g * group_channels + i / spatial;
    const double xhat = (in[base + i] - mean) * rstd, dxhat = static_cast<double>(dy(base + i, c, run)) * gamma[c];
    din[base + i] = static_cast<float>(rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
  }
}

// dgamma summand of a group norm: dy * xhat with the (n, group) statistics; dbeta summand: dy.
template <class Gradient>
struct GroupNormGammaGradient {
  Gradient dy;
  const float *in, *mean, *rstd;
  std::int64_t groups, group_channels;
  __device__ double operator()(std::int64_t n, std::int64_t c, std::int64_t i) const {
    const std::int64_t stat = n * groups + c / group_channels;
    return static_cast<double>(dy(i, c, stat)) * ((in[i] - static_cast<double>(mean[stat])) * rstd[stat]);
  }
};
template <class Gradient>
struct GroupNormBetaGradient {
  Gradient dy;
  std::int64_t groups, group_channels;
  __device__ double operator()(std::int64_t n, std::int64_t c, std::int64_t i) const { return dy(i, c, n * groups + c / group_channels); }
};

template <class Gradient>
void group_norm_backward_with(cudaStream_t stream, float* din, float* dgamma, float* dbeta, Gradient dy, const float* in, const float* mean,
                              const float* rstd, const float* gamma, const nn::GroupNormDims& d) {
  const std::int64_t group_channels = d.channels / d.groups;
  if (din)
    norm_backward_input_kernel<<<as_blocks(d.batch * d.groups), kNormThreads, 0, stream>>>(din, dy, in, mean, rstd, gamma, d.channels, d.spatial,
                                                                                           d.groups);
  if (dgamma)
    channel_reduce_kernel<<<as_blocks(d.channels), kThreads, 0, stream>>>(
        dgamma, GroupNormGammaGradient<Gradient>{dy, in, mean, rstd, d.groups, group_channels}, d.batch, d.channels, d.spatial, true);
  if (dbeta)
    channel_reduce_kernel<<<as_blocks(d.channels), kThreads, 0, stream>>>(dbeta, GroupNormBetaGradient<Gradient>{dy, d.groups, group_channels},
                                                                          d.batch, d.channels, d.spatial, true);
  check_launch("group_norm_backward");
}

struct LayerNormGammaGradient {
  const float *dout, *in, *mean, *rstd;
  std::int64_t cols;
  __device__ double operator()(std::int64_t r, std::int64_t c) const {
    return static_cast<double>(dout[r * cols + c]) * ((in[r * cols + c] - static_cast<double>(mean[r])) * rstd[r]);
  }
};

// Checks that the channels split into the groups; false when there is nothing to normalise.
bool has_group_norm_runs(const nn::GroupNormDims& d) {
  DB_CHECK(d.groups > 0 && d.channels % d.groups == 0, "group_norm: ", d.channels, " channels do not split into ", d.groups, " groups");
  return d.batch * d.groups != 0;
}

void launch_group_norm_forward(cudaStream_t stream, float* out, float* mean, float* rstd, const float* in, const float* gamma, const float* beta,
                               const nn::GroupNormDims& d, bool silu, const char* what) {
  if (!has_group_norm_runs(d)) return;
  norm_forward_kernel<<<as_blocks(d.batch * d.groups), kNormThreads, 0, stream>>>(out, mean, rstd, in, gamma, beta, d.channels, d.spatial, d.groups,
                                                                                  d.eps, silu);
  check_launch(what);
}

}  // namespace

// --- normalisation ---
void CudaBackend::group_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
  launch_group_norm_forward(impl_->stream, out, mean, rstd, in, gamma, beta, d, /*silu=*/false, "group_norm_forward");
}
void CudaBackend::group_norm_silu_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
  launch_group_norm_forward(impl_->stream, out, mean, rstd, in, gamma, beta, d, /*silu=*/true, "group_norm_silu_forward");
}
void CudaBackend::group_norm_silu_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                                           const T* beta, const nn::GroupNormDims& d) {
  if (!has_group_norm_runs(d)) return;
  group_norm_backward_with(impl_->stream, din, dgamma, dbeta, SiluOutputGradient{dout, in, mean, rstd, gamma, beta}, in, mean, rstd, gamma, d);
}
void CudaBackend::group_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                                      const nn::GroupNormDims& d) {
  if (!has_group_norm_runs(d)) return;
  group_norm_backward_with(impl_->stream, din, dgamma, dbeta, OutputGradient{dout}, in, mean, rstd, gamma, d);
}
void CudaBackend::layer_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::LayerNormDims& d) {
  if (d.rows == 0) return;
  norm_forward_kernel<<<as_blocks(d.rows), kThreads, 0, impl_->stream>>>(out, mean, rstd, in, gamma, beta, d.dim, 1, 1, d.eps, false);
  check_launch("layer_norm_forward");
}
void CudaBackend::layer_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                                      const nn::LayerNormDims& d) {
  if (d.rows == 0) return;
  if (din)
    norm_backward_input_kernel<<<as_blocks(d.rows), kThreads, 0, impl_->stream>>>(din, OutputGradient{dout}, in, mean, rstd, gamma, d.dim, 1, 1);
  check_launch("layer_norm_backward");
  if (dgamma) column_reduce(*this, impl_->stream, dgamma, LayerNormGammaGradient{dout, in, mean, rstd, d.dim}, d.rows, d.dim, true);
  if (dbeta) column_reduce(*this, impl_->stream, dbeta, MatrixEntry{dout, d.dim}, d.rows, d.dim, true);
}

}  // namespace dreambooth
