// Internals of the CUDA backend shared by its translation units: the Impl object (stream, library
// handles, plan caches, memory accounting), error checks, launch helpers and the deterministic reductions.
// The backend's class and memory are in backend.cu; each op is in the <family>.cu its family in backend_ops.hpp names
// (the CPU backend's cpu/<family>.hpp); the element formulas both backends compute are in nn/scalar_math.hpp.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "dreambooth/backends/cuda.hpp"
#include "dreambooth/core/error.hpp"

namespace dreambooth::cuda_detail {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) fail("CUDA backend: ", what, ": ", cudaGetErrorString(status));
}
inline void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("CUDA backend: ", what, ": cuBLAS status ", static_cast<int>(status));
}
inline void check_cudnn(cudnnStatus_t status, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS) fail("CUDA backend: ", what, ": ", cudnnGetErrorString(status));
}
inline void check_launch(const char* what) { check_cuda(cudaGetLastError(), what); }

constexpr int kThreads = 256;
// Blocks for a grid-stride loop over n elements (bounded: the loop covers the rest).
inline unsigned blocks_for(std::size_t n, int threads = kThreads) {
  const std::size_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535u * 16u ? (b ? b : 1) : 65535u * 16u);
}
inline unsigned as_blocks(std::int64_t n) { return static_cast<unsigned>(n); }

#define DB_GRID_STRIDE(i, n)                                                                     \
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)

// Sum of one value per thread over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
template <class V>
__device__ V block_sum(V value) {
  __shared__ V warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  V total = 0;
  for (int w = 0; w < warps; ++w) total += warp_sums[w];  // same order in every thread: deterministic
  return total;
}
template <class V>
__device__ V block_max(V value) {
  __shared__ V warp_max[32];
  for (int offset = 16; offset > 0; offset /= 2) value = max(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) warp_max[warp] = value;
  __syncthreads();
  V total = warp_max[0];
  for (int w = 1; w < warps; ++w) total = max(total, warp_max[w]);
  return total;
}

// cuBLASLt plan of one GEMM shape (row-major problem mapped to column-major, see gemm.cu).
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;  // false: cuBLASLt found none; cublasGemmStridedBatchedEx runs it instead
};
using GemmKey = std::array<std::int64_t, 16>;

// The algorithm cuDNN's search chose for one pass of a convolution (found = false until searched).
template <class Algo>
struct ConvAlgorithm {
  bool found = false;
  Algo algo{};
  std::size_t workspace = 0;
  cudnnMathType_t math{};
};

// cuDNN plan of one convolution shape at one precision.
struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  ConvAlgorithm<cudnnConvolutionFwdAlgo_t> forward;
  ConvAlgorithm<cudnnConvolutionBwdDataAlgo_t> backward_data;
  ConvAlgorithm<cudnnConvolutionBwdFilterAlgo_t> backward_filter;
};
using ConvKey = std::array<std::int64_t, 12>;

}  // namespace dreambooth::cuda_detail

namespace dreambooth {

struct CudaBackend::Impl {
  CudaOptions options;
  std::string description;
  cudaStream_t stream = nullptr;
  cudaMemPool_t pool = nullptr;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t lt = nullptr;
  cudnnHandle_t cudnn = nullptr;
  void* lt_workspace = nullptr;
  std::size_t lt_workspace_bytes = std::size_t(64) << 20;
  int* error_flag = nullptr;  // device int: set by kernels that meet bad input (token ids)
  std::size_t in_use = 0, peak = 0;
  std::map<cuda_detail::GemmKey, cuda_detail::GemmPlan> gemm_plans;
  std::map<cuda_detail::ConvKey, cuda_detail::ConvPlan> conv_plans;

  ~Impl();
  void destroy_plans();
  void check_error_flag();
};

namespace cuda_detail {

// A temporary device buffer from the backend's pool, released (stream-ordered) at scope exit.
class Scratch {
 public:
  Scratch(CudaBackend& backend, std::size_t bytes) : backend_(&backend), bytes_(bytes), data_(bytes ? backend.allocate(bytes) : nullptr) {}
  ~Scratch() {
    if (data_) backend_->deallocate(data_, bytes_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class V = void>
  V* get() const {
    return static_cast<V*>(data_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  CudaBackend* backend_;
  std::size_t bytes_;
  void* data_;
};

// Conversions between the fp32 storage and the 16-bit compute types (backend.cu).
void convert_to_bf16(cudaStream_t stream, __nv_bfloat16* out, const float* in, std::size_t n);
void convert_to_fp16(cudaStream_t stream, __half* out, const float* in, std::size_t n);
// out = beta * out + float(in) (beta 0 assigns).
void convert_from_bf16(cudaStream_t stream, float* out, const __nv_bfloat16* in, std::size_t n, float beta);
void convert_from_fp16(cudaStream_t stream, float* out, const __half* in, std::size_t n, float beta);

// --- deterministic reductions (the summands given by functors: parameter gradients of norms, biases) ---

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

// Column sums of a row-major [rows, cols] matrix in two deterministic stages: blocks of 32 columns x a chunk
// of rows write partial sums, then each column adds its partials in order.
inline constexpr std::int64_t kRowsPerChunk = 256;
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
// out[c] = (accumulate ? out[c] : 0) + the sum over k of partials[k * cols + c], in order (tensor_ops.cu).
void column_finish(cudaStream_t stream, float* out, const double* partials, std::int64_t chunks, std::int64_t cols, bool accumulate);
struct MatrixEntry {
  const float* x;
  std::int64_t cols;
  __device__ double operator()(std::int64_t r, std::int64_t c) const { return x[r * cols + c]; }
};

template <class Value>
void column_reduce(CudaBackend& backend, cudaStream_t stream, float* out, Value value, std::int64_t rows, std::int64_t cols, bool accumulate) {
  if (cols == 0) return;
  const std::int64_t chunks = std::max<std::int64_t>(1, (rows + kRowsPerChunk - 1) / kRowsPerChunk);
  DB_CHECK(chunks <= 65535, "CUDA column reduction: ", rows, " rows exceed the grid limit");
  Scratch partials(backend, static_cast<std::size_t>(chunks * cols) * sizeof(double));
  column_partials_kernel<<<dim3(as_blocks((cols + 31) / 32), as_blocks(chunks)), dim3(32, 8), 0, stream>>>(partials.get<double>(), value, rows, cols);
  column_finish(stream, out, partials.get<double>(), chunks, cols, accumulate);
  check_launch("column reduction");
}

// Deterministic per-column sums: out[c] (+)= sum over rows r of in[r * cols + c] (tensor_ops.cu).
void column_sums(CudaBackend& backend, cudaStream_t stream, float* out, const float* in, std::int64_t rows, std::int64_t cols, bool accumulate);
// out[c] += sum over n, s of in[(n * C + c) * S + s] (the bias gradient of an NCHW tensor).
void channel_sums_accumulate(cudaStream_t stream, float* out, const float* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial);

// Two-stage sums of squares (mean-squared error, squared norms; tensor_ops.cu): kReduceBlocks blocks write partial
// sums of (a - b)^2 (of a^2 when b is null) into partials[kReduceBlocks]; then one block of `threads` adds `count`
// partials in order into *total and / or *mean_out = total / n (either may be null).
inline constexpr int kReduceBlocks = 512;
void squared_difference_partials(cudaStream_t stream, double* partials, const float* a, const float* b, std::size_t n);
void finish_sum(cudaStream_t stream, double* total, float* mean_out, const double* partials, int count, std::size_t n, int threads = kThreads);

}  // namespace cuda_detail
}  // namespace dreambooth
