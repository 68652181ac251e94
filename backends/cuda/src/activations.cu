// The activations family on the GPU: SiLU, GELU (erf), quick GELU, GEGLU and softmax, forward and backward. The
// element formulas are nn/scalar_math.hpp's, the ones the CPU backend (cpu/activations.hpp) computes.
#include "dreambooth/nn/scalar_math.hpp"
#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

__global__ void silu_forward_kernel(float* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = math::silu(in[i]); }
__global__ void silu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n) {
  DB_GRID_STRIDE(i, n) din[i] = math::silu_backward(dout[i], in[i]);
}
__global__ void gelu_forward_kernel(float* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = math::gelu(in[i]); }
__global__ void gelu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n) {
  DB_GRID_STRIDE(i, n) din[i] = dout[i] * math::gelu_derivative(in[i]);
}
__global__ void quick_gelu_forward_kernel(float* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = math::quick_gelu(in[i]); }
__global__ void quick_gelu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n) {
  DB_GRID_STRIDE(i, n) din[i] = math::quick_gelu_backward(dout[i], in[i]);
}
// in[N, 2D] = [a | b], out[N, D] = a * gelu(b).
__global__ void geglu_forward_kernel(float* out, const float* in, std::size_t n, std::int64_t dim) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t r = i / dim, c = i % dim;
    out[i] = in[r * 2 * dim + c] * math::gelu(in[r * 2 * dim + dim + c]);
  }
}
__global__ void geglu_backward_kernel(float* din, const float* dout, const float* in, std::size_t n, std::int64_t dim) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t r = i / dim, c = i % dim;
    const float a = in[r * 2 * dim + c], b = in[r * 2 * dim + dim + c], g = dout[i];
    din[r * 2 * dim + c] = g * math::gelu(b);
    din[r * 2 * dim + dim + c] = g * a * math::gelu_derivative(b);
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
