// CUDA backend: memory, fills, elementwise kernels and cuBLAS GEMM.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "dreambooth/backends/cuda.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/core/rng.hpp"

namespace dreambooth {

namespace {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) fail("CUDA backend: ", what, ": ", cudaGetErrorString(status));
}
void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("CUDA backend: ", what, ": cuBLAS status ", static_cast<int>(status));
}

constexpr int kThreads = 256;
unsigned blocks_for(std::size_t n) {
  const std::size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535u * 32u ? b : 65535u * 32u);
}

// Grid-stride loops: any n with a bounded grid.
__global__ void fill_kernel(float* x, float value, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    x[i] = value;
}
__global__ void fill_normal_kernel(float* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, float mean, float stddev) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    x[i] = mean + stddev * rng::normal(seed, offset, i);
}
__global__ void fill_uniform_kernel(float* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, float low, float high) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    x[i] = low + (high - low) * rng::uniform(seed, offset, i);
}
__global__ void add_kernel(float* out, const float* a, const float* b, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}
__global__ void mul_kernel(float* out, const float* a, const float* b, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] * b[i];
}
__global__ void scale_kernel(float* out, const float* a, float s, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] * s;
}
__global__ void accumulate_kernel(float* y, const float* x, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}
__global__ void mul_backward_kernel(float* da, float* db, const float* dout, const float* a, const float* b, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (da) da[i] = dout[i] * b[i];
    if (db) db[i] = dout[i] * a[i];
  }
}

}  // namespace

struct CudaBackend::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
};

int CudaBackend::device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return count;
}

CudaBackend::CudaBackend(int device) : impl_(std::make_unique<Impl>()) {
  const int count = device_count();
  DB_CHECK(count > 0, "CUDA backend: no CUDA device is available on this machine");
  DB_CHECK(device >= 0 && device < count, "CUDA backend: device ", device, " requested but ", count, " present");
  impl_->device = device;
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  check_cuda(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check_cublas(cublasCreate(&impl_->cublas), "cublasCreate");
  check_cublas(cublasSetStream(impl_->cublas, impl_->stream), "cublasSetStream");
  check_cublas(cublasSetMathMode(impl_->cublas, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");  // exact fp32, no TF32
}

CudaBackend::~CudaBackend() {
  if (impl_->cublas) cublasDestroy(impl_->cublas);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

void* CudaBackend::allocate(std::size_t bytes) {
  void* p = nullptr;
  check_cuda(cudaMallocAsync(&p, bytes ? bytes : 1, impl_->stream), "cudaMallocAsync");
  return p;
}
void CudaBackend::deallocate(void* p, std::size_t) {
  if (p) cudaFreeAsync(p, impl_->stream);
}
void CudaBackend::copy_to_device(void* dst, const void* src, std::size_t bytes) {
  check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, impl_->stream), "copy to device");
  check_cuda(cudaStreamSynchronize(impl_->stream), "copy to device");  // the host buffer may go away after return
}
void CudaBackend::copy_to_host(void* dst, const void* src, std::size_t bytes) {
  check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, impl_->stream), "copy to host");
  check_cuda(cudaStreamSynchronize(impl_->stream), "copy to host");
}
void CudaBackend::copy_device(void* dst, const void* src, std::size_t bytes) {
  check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, impl_->stream), "device copy");
}
void CudaBackend::synchronize() { check_cuda(cudaStreamSynchronize(impl_->stream), "synchronize"); }

void CudaBackend::fill(T* x, T value, std::size_t n) {
  if (n) fill_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, value, n);
  check_cuda(cudaGetLastError(), "fill");
}
void CudaBackend::fill_normal(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T mean, T stddev) {
  if (n) fill_normal_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, n, seed, offset, mean, stddev);
  check_cuda(cudaGetLastError(), "fill_normal");
}
void CudaBackend::fill_uniform(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T low, T high) {
  if (n) fill_uniform_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, n, seed, offset, low, high);
  check_cuda(cudaGetLastError(), "fill_uniform");
}
void CudaBackend::add(T* out, const T* a, const T* b, std::size_t n) {
  if (n) add_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, b, n);
  check_cuda(cudaGetLastError(), "add");
}
void CudaBackend::mul(T* out, const T* a, const T* b, std::size_t n) {
  if (n) mul_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, b, n);
  check_cuda(cudaGetLastError(), "mul");
}
void CudaBackend::scale(T* out, const T* a, T s, std::size_t n) {
  if (n) scale_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, s, n);
  check_cuda(cudaGetLastError(), "scale");
}
void CudaBackend::accumulate(T* y, const T* x, std::size_t n) {
  if (n) accumulate_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(y, x, n);
  check_cuda(cudaGetLastError(), "accumulate");
}
void CudaBackend::mul_backward(T* da, T* db, const T* dout, const T* a, const T* b, std::size_t n) {
  if (n) mul_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(da, db, dout, a, b, n);
  check_cuda(cudaGetLastError(), "mul_backward");
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands, keep the flags.
void CudaBackend::gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
                       std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  check_cublas(cublasSgemm_64(impl_->cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a,
                              lda, &beta, c, ldc),
               "cublasSgemm");
}

}  // namespace dreambooth
