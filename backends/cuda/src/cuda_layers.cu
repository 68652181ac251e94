// Group norm, layer norm, activations, GEGLU and softmax on the GPU, plus the deterministic column /
// channel reductions that parameter gradients use. Statistics accumulate in double, as on the CPU.
#include "cuda_impl.cuh"

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
    out[base + i] = silu ? y * (1.0f / (1.0f + expf(-y))) : y;
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
    const float y = (in[index] - mean[stat]) * rstd[stat] * gamma[c] + beta[c];
    const float s = 1.0f / (1.0f + expf(-y));
    return dout[index] * s * (1.0f + y * (1.0f - s));
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

// Per-channel sums over (n, s) of an NCHW-like tensor: one block per channel, fixed order.
// value(n, c, index) gives the summand; out[c] += the sum (or = when !accumulate).
template <class Value>
__global__ void channel_reduce_kernel(float* out, Value value, std::int64_t batch, std::int64_t channels, std::int64_t spatial, bool accumulate) {
  const std::int64_t c = blockIdx.x;
  double sum = 0;
  for (std::int64_t n = 0; n < batch; ++n) {
    const std::int64_t base = (n * channels + c) * spatial;
    for (std::int64_t s = threadIdx.x; s < spatial; s += blockDim.x) sum += value(n, c, base + s);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) out[c] = static_cast<float>((accumulate ? static_cast<double>(out[c]) : 0.0) + sum);
}

struct Plain {
  const float* x;
  __device__ double operator()(std::int64_t, std::int64_t, std::int64_t i) const { return x[i]; }
};
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

// Column sums of a row-major [rows, cols] matrix in two deterministic stages: blocks of 32 columns x a chunk
// of rows write partial sums, then each column adds its partials in order.
constexpr std::int64_t kRowsPerChunk = 256;
template <class Value>
__global__ void column_partials_kernel(double* partials, Value value, std::int64_t rows, std::int64_t cols) {
  __shared__ double shared[8][33];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x, chunk = blockIdx.y;
  const std::int64_t r_end = min(rows, (chunk + 1) * kRowsPerChunk);
  double sum = 0;
  if (c < cols)
    for (std::int64_t r = chunk * kRowsPerChunk + threadIdx.y; r < r_end; r += 8) sum += value(r, c);
  shared[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double total = 0;
    for (int y = 0; y < 8; ++y) total += shared[y][threadIdx.x];
    partials[chunk * cols + c] = total;
  }
}
__global__ void column_finish_kernel(float* out, const double* partials, std::int64_t chunks, std::int64_t cols, bool accumulate) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  double total = accumulate ? static_cast<double>(out[c]) : 0.0;
  for (std::int64_t k = 0; k < chunks; ++k) total += partials[k * cols + c];
  out[c] = static_cast<float>(total);
}
struct MatrixEntry {
  const float* x;
  std::int64_t cols;
  __device__ double operator()(std::int64_t r, std::int64_t c) const { return x[r * cols + c]; }
};
struct LayerNormGammaGradient {
  const float *dout, *in, *mean, *rstd;
  std::int64_t cols;
  __device__ double operator()(std::int64_t r, std::int64_t c) const {
    return static_cast<double>(dout[r * cols + c]) * ((in[r * cols + c] - static_cast<double>(mean[r])) * rstd[r]);
  }
};

template <class Value>
void column_reduce(CudaBackend& backend, cudaStream_t stream, float* out, Value value, std::int64_t rows, std::int64_t cols, bool accumulate) {
  if (cols == 0) return;
  const std::int64_t chunks = std::max<std::int64_t>(1, (rows + kRowsPerChunk - 1) / kRowsPerChunk);
  DB_CHECK(chunks <= 65535, "CUDA column reduction: ", rows, " rows exceed the grid limit");
  Scratch partials(backend, static_cast<std::size_t>(chunks * cols) * sizeof(double));
  column_partials_kernel<<<dim3(as_blocks((cols + 31) / 32), as_blocks(chunks)), dim3(32, 8), 0, stream>>>(partials.get<double>(), value, rows, cols);
  column_finish_kernel<<<as_blocks((cols + 255) / 256), 256, 0, stream>>>(out, partials.get<double>(), chunks, cols, accumulate);
  check_launch("column reduction");
}

__device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }
__device__ float gelu_derivative(float x) {
  return 0.5f * (1.0f + erff(x * 0.70710678118654752440f)) + x * 0.39894228040143267794f * expf(-0.5f * x * x);
}

__global__ void silu_forward_kernel(float* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = in[i] * sigmoid(in[i]); }
__global__ void silu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n) {
  DB_GRID_STRIDE(i, n) {
    const float s = sigmoid(in[i]);
    din[i] = dout[i] * s * (1.0f + in[i] * (1.0f - s));
  }
}
__global__ void gelu_forward_kernel(float* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = gelu(in[i]); }
__global__ void gelu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n) {
  DB_GRID_STRIDE(i, n) din[i] = dout[i] * gelu_derivative(in[i]);
}
__global__ void quick_gelu_forward_kernel(float* out, const float* in, std::size_t n) {
  DB_GRID_STRIDE(i, n) out[i] = in[i] * sigmoid(1.702f * in[i]);
}
__global__ void quick_gelu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n) {
  DB_GRID_STRIDE(i, n) {
    const float s = sigmoid(1.702f * in[i]);
    din[i] = dout[i] * (s + 1.702f * in[i] * s * (1.0f - s));
  }
}
// in[N, 2D] = [a | b], out[N, D] = a * gelu(b).
__global__ void geglu_forward_kernel(float* out, const float* in, std::size_t n, std::int64_t dim) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t r = i / dim, c = i % dim;
    out[i] = in[r * 2 * dim + c] * gelu(in[r * 2 * dim + dim + c]);
  }
}
__global__ void geglu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n, std::int64_t dim) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t r = i / dim, c = i % dim;
    const float a = in[r * 2 * dim + c], b = in[r * 2 * dim + dim + c], g = dout[i];
    din[r * 2 * dim + c] = g * gelu(b);
    din[r * 2 * dim + dim + c] = g * a * gelu_derivative(b);
  }
}

// One block per row: max-subtracted softmax.
__global__ void softmax_forward_kernel(float* out, const float* in, std::int64_t dim) {
  const float* x = in + static_cast<std::int64_t>(blockIdx.x) * dim;
  float* y = out + static_cast<std::int64_t>(blockIdx.x) * dim;
  float max = -INFINITY;
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) max = fmaxf(max, x[i]);
  max = block_max(max);
  float sum = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += (y[i] = expf(x[i] - max));
  const float inv = 1.0f / block_sum(sum);
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) y[i] *= inv;
}
__global__ void softmax_backward_kernel(float* din, const float* dout, const float* out, std::int64_t dim) {
  const std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * dim;
  float dot = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) dot += dout[base + i] * out[base + i];
  dot = block_sum(dot);
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) din[base + i] = out[base + i] * (dout[base + i] - dot);
}

}  // namespace

namespace cuda_detail {
void column_sums(CudaBackend& backend, cudaStream_t stream, float* out, const float* in, std::int64_t rows, std::int64_t cols, bool accumulate) {
  column_reduce(backend, stream, out, MatrixEntry{in, cols}, rows, cols, accumulate);
}
void channel_sums_accumulate(cudaStream_t stream, float* out, const float* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  if (channels == 0) return;
  channel_reduce_kernel<<<as_blocks(channels), kThreads, 0, stream>>>(out, Plain{in}, batch, channels, spatial, true);
  check_launch("channel sums");
}
}  // namespace cuda_detail

// --- normalisation ---
void CudaBackend::group_norm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
  DB_CHECK(d.groups > 0 && d.channels % d.groups == 0, "group_norm: ", d.channels, " channels do not split into ", d.groups, " groups");
  if (d.batch * d.groups == 0) return;
  norm_forward_kernel<<<as_blocks(d.batch * d.groups), kNormThreads, 0, impl_->stream>>>(out, mean, rstd, in, gamma, beta, d.channels, d.spatial,
                                                                                         d.groups, d.eps, false);
  check_launch("group_norm_forward");
}
void CudaBackend::group_norm_silu_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta, const nn::GroupNormDims& d) {
  DB_CHECK(d.groups > 0 && d.channels % d.groups == 0, "group_norm: ", d.channels, " channels do not split into ", d.groups, " groups");
  if (d.batch * d.groups == 0) return;
  norm_forward_kernel<<<as_blocks(d.batch * d.groups), kNormThreads, 0, impl_->stream>>>(out, mean, rstd, in, gamma, beta, d.channels, d.spatial,
                                                                                         d.groups, d.eps, true);
  check_launch("group_norm_silu_forward");
}
void CudaBackend::group_norm_silu_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                                           const T* beta, const nn::GroupNormDims& d) {
  DB_CHECK(d.groups > 0 && d.channels % d.groups == 0, "group_norm: ", d.channels, " channels do not split into ", d.groups, " groups");
  if (d.batch * d.groups == 0) return;
  group_norm_backward_with(impl_->stream, din, dgamma, dbeta, SiluOutputGradient{dout, in, mean, rstd, gamma, beta}, in, mean, rstd, gamma, d);
}
void CudaBackend::group_norm_backward(T* din, T* dgamma, T* dbeta, const T* dout, const T* in, const T* mean, const T* rstd, const T* gamma,
                                      const nn::GroupNormDims& d) {
  DB_CHECK(d.groups > 0 && d.channels % d.groups == 0, "group_norm: ", d.channels, " channels do not split into ", d.groups, " groups");
  if (d.batch * d.groups == 0) return;
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

// --- activations ---
void CudaBackend::silu_forward(T* out, const T* in, std::size_t n) {
  if (n) silu_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, n);
  check_launch("silu_forward");
}
void CudaBackend::silu_backward(T* din, const T* dout, const T* in, std::size_t n) {
  if (n) silu_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(din, dout, in, n);
  check_launch("silu_backward");
}
void CudaBackend::gelu_forward(T* out, const T* in, std::size_t n) {
  if (n) gelu_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, n);
  check_launch("gelu_forward");
}
void CudaBackend::gelu_backward(T* din, const T* dout, const T* in, std::size_t n) {
  if (n) gelu_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(din, dout, in, n);
  check_launch("gelu_backward");
}
void CudaBackend::quick_gelu_forward(T* out, const T* in, std::size_t n) {
  if (n) quick_gelu_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, n);
  check_launch("quick_gelu_forward");
}
void CudaBackend::quick_gelu_backward(T* din, const T* dout, const T* in, std::size_t n) {
  if (n) quick_gelu_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(din, dout, in, n);
  check_launch("quick_gelu_backward");
}
void CudaBackend::geglu_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) {
  const auto n = static_cast<std::size_t>(rows * dim);
  if (n) geglu_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, n, dim);
  check_launch("geglu_forward");
}
void CudaBackend::geglu_backward(T* din, const T* dout, const T* in, std::int64_t rows, std::int64_t dim) {
  const auto n = static_cast<std::size_t>(rows * dim);
  if (n) geglu_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(din, dout, in, n, dim);
  check_launch("geglu_backward");
}
void CudaBackend::softmax_forward(T* out, const T* in, std::int64_t rows, std::int64_t dim) {
  if (rows * dim == 0) return;
  softmax_forward_kernel<<<as_blocks(rows), kThreads, 0, impl_->stream>>>(out, in, dim);
  check_launch("softmax_forward");
}
void CudaBackend::softmax_backward(T* din, const T* dout, const T* out, std::int64_t rows, std::int64_t dim) {
  if (rows * dim == 0) return;
  softmax_backward_kernel<<<as_blocks(rows), kThreads, 0, impl_->stream>>>(din, dout, out, dim);
  check_launch("softmax_backward");
}

}  // namespace dreambooth
