// CUDA backend: construction, memory (stream-ordered pool), copies, fills, elementwise arithmetic,
// precision conversions, data movement, embeddings, MSE, timestep embedding, AdamW, norms of vectors.
#include <cstring>
#include <limits>
#include <string>

#include "cuda_impl.cuh"
#include "dreambooth/core/rng.hpp"

namespace dreambooth {

using namespace cuda_detail;

namespace {

__global__ void fill_kernel(float* x, float value, std::size_t n) { DB_GRID_STRIDE(i, n) x[i] = value; }
__global__ void fill_normal_kernel(float* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, float mean, float stddev) {
  DB_GRID_STRIDE(i, n) x[i] = mean + stddev * rng::normal(seed, offset, i);
}
__global__ void fill_uniform_kernel(float* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, float low, float high) {
  DB_GRID_STRIDE(i, n) x[i] = low + (high - low) * rng::uniform(seed, offset, i);
}
__global__ void add_kernel(float* out, const float* a, const float* b, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = a[i] + b[i]; }
__global__ void mul_kernel(float* out, const float* a, const float* b, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = a[i] * b[i]; }
__global__ void scale_kernel(float* out, const float* a, float s, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = a[i] * s; }
__global__ void accumulate_kernel(float* y, const float* x, std::size_t n) { DB_GRID_STRIDE(i, n) y[i] += x[i]; }
__global__ void mul_backward_kernel(float* da, float* db, const float* dout, const float* a, const float* b, std::size_t n) {
  DB_GRID_STRIDE(i, n) {
    if (da) da[i] = dout[i] * b[i];
    if (db) db[i] = dout[i] * a[i];
  }
}

__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(in[i]); }
__global__ void to_fp16_kernel(__half* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = __float2half_rn(in[i]); }
__global__ void from_bf16_kernel(float* out, const __nv_bfloat16* in, std::size_t n, float beta) {
  DB_GRID_STRIDE(i, n) out[i] = (beta != 0.0f ? beta * out[i] : 0.0f) + __bfloat162float(in[i]);
}
__global__ void from_fp16_kernel(float* out, const __half* in, std::size_t n, float beta) {
  DB_GRID_STRIDE(i, n) out[i] = (beta != 0.0f ? beta * out[i] : 0.0f) + __half2float(in[i]);
}

// out[n, c, r] = in[n, r, c] through 32 x 32 shared-memory tiles (coalesced reads and writes).
__global__ void transpose_kernel(float* out, const float* in, std::int64_t rows, std::int64_t cols) {
  __shared__ float tile[32][33];
  const std::int64_t n = blockIdx.z, r0 = static_cast<std::int64_t>(blockIdx.y) * 32, c0 = static_cast<std::int64_t>(blockIdx.x) * 32;
  const float* src = in + n * rows * cols;
  float* dst = out + n * rows * cols;
  for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
    const auto r = r0 + dy, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[dy][threadIdx.x] = src[r * cols + c];
  }
  __syncthreads();
  for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
    const auto c = c0 + dy, r = r0 + threadIdx.x;
    if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][dy];
  }
}

__global__ void add_channel_bias_kernel(float* out, const float* in, const float* bias, std::size_t n, std::int64_t spatial) {
  DB_GRID_STRIDE(i, n) out[i] = in[i] + bias[i / spatial];
}
// One block per (n, c) row: sums[row] = sum of in[row, :] (double accumulation, fixed order).
__global__ void row_sum_kernel(float* sums, const float* in, std::int64_t len) {
  const float* x = in + static_cast<std::int64_t>(blockIdx.x) * len;
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) sum += x[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) sums[blockIdx.x] = static_cast<float>(sum);
}

__global__ void upsample_forward_kernel(float* out, const float* in, std::size_t n, std::int64_t H, std::int64_t W) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t x = i % (2 * W), y = (i / (2 * W)) % (2 * H), p = i / (4 * H * W);
    out[i] = in[(p * H + y / 2) * W + x / 2];
  }
}
__global__ void upsample_backward_kernel(float* din, const float* dout, std::size_t n, std::int64_t H, std::int64_t W) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t x = i % W, y = (i / W) % H, p = i / (H * W);
    const float* g = dout + (p * 2 * H + 2 * y) * 2 * W + 2 * x;
    din[i] = g[0] + g[1] + g[2 * W] + g[2 * W + 1];
  }
}

__global__ void embedding_forward_kernel(float* out, const std::int32_t* ids, const float* token_table, const float* position_table, std::size_t n,
                                         std::int64_t seq, std::int64_t vocab, std::int64_t dim, int* error_flag) {
  DB_GRID_STRIDE(idx, n) {
    const std::int64_t i = idx / dim, c = idx % dim;
    const std::int32_t id = ids[i];
    if (id < 0 || id >= vocab) {
      out[idx] = 0.0f;
      if (c == 0) atomicExch(error_flag, 1);
      continue;
    }
    out[idx] = token_table[static_cast<std::int64_t>(id) * dim + c] + (position_table ? position_table[(i % seq) * dim + c] : 0.0f);
  }
}
// One thread per column: scatter-adds every position in order (deterministic where ids repeat).
__global__ void embedding_backward_kernel(float* dtoken_table, float* dposition_table, const float* dout, const std::int32_t* ids,
                                          std::int64_t positions, std::int64_t seq, std::int64_t vocab, std::int64_t dim) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= dim) return;
  for (std::int64_t i = 0; i < positions; ++i) {
    const float g = dout[i * dim + c];
    const std::int32_t id = ids[i];
    if (dtoken_table && id >= 0 && id < vocab) dtoken_table[static_cast<std::int64_t>(id) * dim + c] += g;
    if (dposition_table) dposition_table[(i % seq) * dim + c] += g;
  }
}

// Two-stage deterministic reductions: kReduceBlocks partial sums, then one block adds them in order.
constexpr int kReduceBlocks = 512;
__global__ void squared_difference_partials(double* partials, const float* a, const float* b, std::size_t n) {
  double sum = 0;
  DB_GRID_STRIDE(i, n) {
    const double d = b ? static_cast<double>(a[i]) - b[i] : static_cast<double>(a[i]);
    sum += d * d;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}
__global__ void finish_sum(double* total, float* mean_out, const double* partials, int count, std::size_t n) {
  double sum = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    if (total) *total = sum;
    if (mean_out) *mean_out = static_cast<float>(n ? sum / static_cast<double>(n) : 0.0);
  }
}
__global__ void mse_backward_kernel(float* da, float* db, const float* dloss, const float* a, const float* b, std::size_t n) {
  const float factor = dloss[0] * 2.0f / static_cast<float>(n);
  DB_GRID_STRIDE(i, n) {
    const float g = factor * (a[i] - b[i]);
    if (da) da[i] = g;
    if (db) db[i] = -g;
  }
}

// Frequencies come from the host, computed with the CPU backend's float expression (CUDA's expf may differ by
// an ulp, and t up to 1000 magnifies that past 1e-5); sin / cos are evaluated in double and rounded, as glibc's
// correctly rounded sinf / cosf give.
constexpr int kMaxFrequencies = 512;
struct Frequencies {
  float value[kMaxFrequencies];
};
__global__ void timestep_embedding_kernel(float* out, const float* timesteps, std::int64_t batch, std::int64_t dim, bool flip_sin_to_cos,
                                          Frequencies frequencies, float scale) {
  const std::int64_t half = dim / 2;
  DB_GRID_STRIDE(idx, static_cast<std::size_t>(batch * half)) {
    const std::int64_t n = idx / half, i = idx % half;
    const float angle = timesteps[n] * frequencies.value[i] * scale;
    const float s = static_cast<float>(sin(static_cast<double>(angle))), c = static_cast<float>(cos(static_cast<double>(angle)));
    out[n * dim + i] = flip_sin_to_cos ? c : s;
    out[n * dim + half + i] = flip_sin_to_cos ? s : c;
    if (i == 0 && dim % 2) out[n * dim + dim - 1] = 0.0f;
  }
}

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, std::size_t n, float decay, float step_size, float beta1,
                             float beta2, float eps, float bc2_sqrt) {
  DB_GRID_STRIDE(i, n) {
    const float g = grad[i];
    float p = param[i] * decay;
    const float mi = m[i] + (1.0f - beta1) * (g - m[i]);
    const float vi = v[i] * beta2 + (1.0f - beta2) * g * g;
    p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

std::string describe_device(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "CUDA device " + std::to_string(device);
  char memory[32];
  std::snprintf(memory, sizeof memory, "%.1f GiB", static_cast<double>(prop.totalGlobalMem) / double(1 << 30));
  return std::string(prop.name) + ", sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " + memory;
}

}  // namespace

namespace cuda_detail {
void convert_to_bf16(cudaStream_t stream, __nv_bfloat16* out, const float* in, std::size_t n) {
  if (n) to_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  check_launch("convert to bf16");
}
void convert_to_fp16(cudaStream_t stream, __half* out, const float* in, std::size_t n) {
  if (n) to_fp16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  check_launch("convert to fp16");
}
void convert_from_bf16(cudaStream_t stream, float* out, const __nv_bfloat16* in, std::size_t n, float beta) {
  if (n) from_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, in, n, beta);
  check_launch("convert from bf16");
}
void convert_from_fp16(cudaStream_t stream, float* out, const __half* in, std::size_t n, float beta) {
  if (n) from_fp16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, in, n, beta);
  check_launch("convert from fp16");
}
}  // namespace cuda_detail

CudaPrecision parse_cuda_precision(std::string_view text) {
  if (text == "32" || text == "fp32" || text == "32-true") return CudaPrecision::fp32;
  if (text == "tf32") return CudaPrecision::tf32;
  if (text == "bf16" || text == "bf16-mixed") return CudaPrecision::bf16;
  if (text == "16" || text == "fp16" || text == "16-mixed") return CudaPrecision::fp16;
  fail("unknown precision \"", std::string(text), "\" (expected 32, tf32, bf16 or 16)");
}
const char* to_string(CudaPrecision precision) {
  switch (precision) {
    case CudaPrecision::fp32: return "fp32";
    case CudaPrecision::tf32: return "tf32";
    case CudaPrecision::bf16: return "bf16";
    case CudaPrecision::fp16: return "fp16";
  }
  return "?";
}

void CudaBackend::Impl::destroy_plans() {
  for (auto& [key, plan] : gemm_plans) {
    if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.c) cublasLtMatrixLayoutDestroy(plan.c);
    if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
  }
  gemm_plans.clear();
  for (auto& [key, plan] : conv_plans) {
    if (plan.x) cudnnDestroyTensorDescriptor(plan.x);
    if (plan.y) cudnnDestroyTensorDescriptor(plan.y);
    if (plan.w) cudnnDestroyFilterDescriptor(plan.w);
    if (plan.conv) cudnnDestroyConvolutionDescriptor(plan.conv);
  }
  conv_plans.clear();
}

CudaBackend::Impl::~Impl() {
  if (stream) cudaStreamSynchronize(stream);
  destroy_plans();
  if (lt_workspace) cudaFree(lt_workspace);
  if (error_flag) cudaFree(error_flag);
  if (cudnn) cudnnDestroy(cudnn);
  if (lt) cublasLtDestroy(lt);
  if (cublas) cublasDestroy(cublas);
  if (stream) cudaStreamDestroy(stream);
}

void CudaBackend::Impl::check_error_flag() {
  int flag = 0;
  check_cuda(cudaMemcpyAsync(&flag, error_flag, sizeof flag, cudaMemcpyDeviceToHost, stream), "read error flag");
  check_cuda(cudaStreamSynchronize(stream), "read error flag");
  if (flag) {
    check_cuda(cudaMemsetAsync(error_flag, 0, sizeof(int), stream), "reset error flag");
    fail("CUDA backend: embedding: a token id is outside the vocabulary");
  }
}

int CudaBackend::device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return count;
}

CudaBackend::CudaBackend(CudaOptions options) : impl_(std::make_unique<Impl>()) {
  const int count = device_count();
  DB_CHECK(count > 0, "CUDA backend: no CUDA device is available on this machine");
  DB_CHECK(options.device >= 0 && options.device < count, "CUDA backend: device ", options.device, " requested but ", count, " present");
  auto& s = *impl_;
  s.options = options;
  s.description = describe_device(options.device);
  check_cuda(cudaSetDevice(options.device), "cudaSetDevice");
  check_cuda(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  // The device's default pool keeps freed memory for reuse instead of returning it at each synchronisation.
  check_cuda(cudaDeviceGetDefaultMemPool(&s.pool, options.device), "cudaDeviceGetDefaultMemPool");
  std::uint64_t keep_all = std::numeric_limits<std::uint64_t>::max();
  check_cuda(cudaMemPoolSetAttribute(s.pool, cudaMemPoolAttrReleaseThreshold, &keep_all), "cudaMemPoolSetAttribute");
  check_cublas(cublasCreate(&s.cublas), "cublasCreate");
  check_cublas(cublasSetStream(s.cublas, s.stream), "cublasSetStream");
  check_cublas(cublasLtCreate(&s.lt), "cublasLtCreate");
  check_cudnn(cudnnCreate(&s.cudnn), "cudnnCreate");
  check_cudnn(cudnnSetStream(s.cudnn, s.stream), "cudnnSetStream");
  check_cuda(cudaMalloc(&s.lt_workspace, s.lt_workspace_bytes), "cudaMalloc (cuBLASLt workspace)");
  check_cuda(cudaMalloc(&s.error_flag, sizeof(int)), "cudaMalloc (error flag)");
  check_cuda(cudaMemset(s.error_flag, 0, sizeof(int)), "cudaMemset");
  set_precision(options.precision);
}

CudaBackend::~CudaBackend() = default;

std::string_view CudaBackend::device_description() const { return impl_->description; }
CudaPrecision CudaBackend::precision() const { return impl_->options.precision; }
void CudaBackend::set_precision(CudaPrecision precision) {
  impl_->options.precision = precision;
  // The legacy cuBLAS handle serves only fallbacks; keep its math mode consistent with the precision.
  check_cublas(cublasSetMathMode(impl_->cublas, precision == CudaPrecision::fp32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

// --- memory ---
void* CudaBackend::allocate(std::size_t bytes) {
  void* p = nullptr;
  auto status = cudaMallocAsync(&p, bytes ? bytes : 1, impl_->stream);
  if (status == cudaErrorMemoryAllocation) {  // memory outside the pool (cuDNN, cuBLAS) may need the pool's idle blocks
    cudaGetLastError();
    check_cuda(cudaStreamSynchronize(impl_->stream), "synchronize");
    check_cuda(cudaMemPoolTrimTo(impl_->pool, 0), "cudaMemPoolTrimTo");
    status = cudaMallocAsync(&p, bytes ? bytes : 1, impl_->stream);
  }
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    fail("CUDA backend: out of device memory allocating ", bytes, " bytes (", impl_->in_use, " bytes in use, ", bytes_reserved(),
         " reserved by the pool)");
  }
  check_cuda(status, "cudaMallocAsync");
  impl_->in_use += bytes;
  impl_->peak = std::max(impl_->peak, impl_->in_use);
  return p;
}
void CudaBackend::deallocate(void* p, std::size_t bytes) {
  if (!p) return;
  impl_->in_use -= bytes;
  check_cuda(cudaFreeAsync(p, impl_->stream), "cudaFreeAsync");
}
void CudaBackend::release_cached() {
  check_cuda(cudaStreamSynchronize(impl_->stream), "synchronize");
  check_cuda(cudaMemPoolTrimTo(impl_->pool, 0), "cudaMemPoolTrimTo");
}
std::size_t CudaBackend::bytes_in_use() const { return impl_->in_use; }
std::size_t CudaBackend::peak_bytes() const { return impl_->peak; }
void CudaBackend::reset_peak() {
  impl_->peak = impl_->in_use;
  std::uint64_t zero = 0;
  cudaMemPoolSetAttribute(impl_->pool, cudaMemPoolAttrReservedMemHigh, &zero);
}
std::size_t CudaBackend::bytes_reserved() const {
  std::uint64_t value = 0;
  cudaMemPoolGetAttribute(impl_->pool, cudaMemPoolAttrReservedMemCurrent, &value);
  return value;
}
std::size_t CudaBackend::peak_bytes_reserved() const {
  std::uint64_t value = 0;
  cudaMemPoolGetAttribute(impl_->pool, cudaMemPoolAttrReservedMemHigh, &value);
  return value;
}
void CudaBackend::copy_to_device(void* dst, const void* src, std::size_t bytes) {
  if (!bytes) return;
  check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, impl_->stream), "copy to device");
  check_cuda(cudaStreamSynchronize(impl_->stream), "copy to device");  // the host buffer may go away after return
}
void CudaBackend::copy_to_host(void* dst, const void* src, std::size_t bytes) {
  if (bytes) check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, impl_->stream), "copy to host");
  impl_->check_error_flag();  // synchronises the stream
}
void CudaBackend::copy_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes) check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, impl_->stream), "device copy");
}
void CudaBackend::synchronize() { impl_->check_error_flag(); }

// --- fills and elementwise ---
void CudaBackend::fill(T* x, T value, std::size_t n) {
  if (n) fill_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, value, n);
  check_launch("fill");
}
void CudaBackend::fill_normal(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T mean, T stddev) {
  if (n) fill_normal_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, n, seed, offset, mean, stddev);
  check_launch("fill_normal");
}
void CudaBackend::fill_uniform(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T low, T high) {
  if (n) fill_uniform_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, n, seed, offset, low, high);
  check_launch("fill_uniform");
}
void CudaBackend::add(T* out, const T* a, const T* b, std::size_t n) {
  if (n) add_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, b, n);
  check_launch("add");
}
void CudaBackend::mul(T* out, const T* a, const T* b, std::size_t n) {
  if (n) mul_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, b, n);
  check_launch("mul");
}
void CudaBackend::scale(T* out, const T* a, T s, std::size_t n) {
  if (n) scale_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, s, n);
  check_launch("scale");
}
void CudaBackend::accumulate(T* y, const T* x, std::size_t n) {
  if (n) accumulate_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(y, x, n);
  check_launch("accumulate");
}
void CudaBackend::mul_backward(T* da, T* db, const T* dout, const T* a, const T* b, std::size_t n) {
  if (n && (da || db)) mul_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(da, db, dout, a, b, n);
  check_launch("mul_backward");
}

// --- data movement ---
void CudaBackend::transpose(T* out, const T* in, std::int64_t batch, std::int64_t rows, std::int64_t cols) {
  if (batch == 0 || rows == 0 || cols == 0) return;
  DB_CHECK(batch <= 65535 && (rows + 31) / 32 <= 65535, "CUDA transpose: ", batch, " x ", rows, " rows exceed the grid limit");
  const dim3 grid(as_blocks((cols + 31) / 32), as_blocks((rows + 31) / 32), as_blocks(batch)), block(32, 8);
  transpose_kernel<<<grid, block, 0, impl_->stream>>>(out, in, rows, cols);
  check_launch("transpose");
}
void CudaBackend::add_channel_bias(T* out, const T* in, const T* bias, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  const auto n = static_cast<std::size_t>(batch * channels * spatial);
  if (n) add_channel_bias_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, bias, n, spatial);
  check_launch("add_channel_bias");
}
void CudaBackend::channel_sum(T* sums, const T* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  if (batch * channels == 0) return;
  row_sum_kernel<<<as_blocks(batch * channels), kThreads, 0, impl_->stream>>>(sums, in, spatial);
  check_launch("channel_sum");
}
void CudaBackend::upsample_nearest2x_forward(T* out, const T* in, std::int64_t planes, std::int64_t H, std::int64_t W) {
  const auto n = static_cast<std::size_t>(planes * 4 * H * W);
  if (n) upsample_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, n, H, W);
  check_launch("upsample_nearest2x_forward");
}
void CudaBackend::upsample_nearest2x_backward(T* din, const T* dout, std::int64_t planes, std::int64_t H, std::int64_t W) {
  const auto n = static_cast<std::size_t>(planes * H * W);
  if (n) upsample_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(din, dout, n, H, W);
  check_launch("upsample_nearest2x_backward");
}
// Both are strided 2-D copies: `outer` rows of (channels * inner) floats with different pitches.
void CudaBackend::concat_channels(T* out, const T* a, const T* b, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
  if (outer == 0) return;
  const std::size_t row_out = static_cast<std::size_t>((ca + cb) * inner) * sizeof(T);
  const std::size_t row_a = static_cast<std::size_t>(ca * inner) * sizeof(T), row_b = static_cast<std::size_t>(cb * inner) * sizeof(T);
  if (row_a)
    check_cuda(cudaMemcpy2DAsync(out, row_out, a, row_a, row_a, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
               "concat_channels");
  if (row_b)
    check_cuda(
        cudaMemcpy2DAsync(out + ca * inner, row_out, b, row_b, row_b, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
        "concat_channels");
}
void CudaBackend::split_channels(T* a, T* b, const T* in, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
  if (outer == 0) return;
  const std::size_t row_in = static_cast<std::size_t>((ca + cb) * inner) * sizeof(T);
  const std::size_t row_a = static_cast<std::size_t>(ca * inner) * sizeof(T), row_b = static_cast<std::size_t>(cb * inner) * sizeof(T);
  if (a && row_a)
    check_cuda(cudaMemcpy2DAsync(a, row_a, in, row_in, row_a, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
               "split_channels");
  if (b && row_b)
    check_cuda(cudaMemcpy2DAsync(b, row_b, in + ca * inner, row_in, row_b, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
               "split_channels");
}

// --- embeddings, loss, timesteps ---
void CudaBackend::embedding_forward(T* out, const std::int32_t* ids, const T* token_table, const T* position_table, std::int64_t batch,
                                    std::int64_t seq, std::int64_t vocab, std::int64_t dim) {
  const auto n = static_cast<std::size_t>(batch * seq * dim);
  if (n)
    embedding_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, ids, token_table, position_table, n, seq, vocab, dim,
                                                                            impl_->error_flag);
  check_launch("embedding_forward");
}
void CudaBackend::embedding_backward(T* dtoken_table, T* dposition_table, const T* dout, const std::int32_t* ids, std::int64_t batch,
                                     std::int64_t seq, std::int64_t vocab, std::int64_t dim) {
  if (dim == 0 || batch * seq == 0 || (!dtoken_table && !dposition_table)) return;
  embedding_backward_kernel<<<as_blocks((dim + 127) / 128), 128, 0, impl_->stream>>>(dtoken_table, dposition_table, dout, ids, batch * seq, seq,
                                                                                     vocab, dim);
  check_launch("embedding_backward");
}
void CudaBackend::mse_forward(T* loss, const T* a, const T* b, std::size_t n) {
  Scratch partials(*this, kReduceBlocks * sizeof(double));
  squared_difference_partials<<<kReduceBlocks, kThreads, 0, impl_->stream>>>(partials.get<double>(), a, b, n);
  finish_sum<<<1, kThreads, 0, impl_->stream>>>(nullptr, loss, partials.get<double>(), kReduceBlocks, n);
  check_launch("mse_forward");
}
void CudaBackend::mse_backward(T* da, T* db, const T* dloss, const T* a, const T* b, std::size_t n) {
  if (n && (da || db)) mse_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(da, db, dloss, a, b, n);
  check_launch("mse_backward");
}
double CudaBackend::squared_norm(const T* x, std::size_t n) {
  Scratch partials(*this, (kReduceBlocks + 1) * sizeof(double));
  squared_difference_partials<<<kReduceBlocks, kThreads, 0, impl_->stream>>>(partials.get<double>(), x, nullptr, n);
  finish_sum<<<1, kThreads, 0, impl_->stream>>>(partials.get<double>() + kReduceBlocks, nullptr, partials.get<double>(), kReduceBlocks, n);
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
    squared_difference_partials<<<kReduceBlocks, kThreads, 0, impl_->stream>>>(partials.get<double>() + i * kReduceBlocks, tensors[i], nullptr,
                                                                               sizes[i]);
  finish_sum<<<1, 1024, 0, impl_->stream>>>(partials.get<double>() + partial_count, nullptr, partials.get<double>(), static_cast<int>(partial_count),
                                            0);
  check_launch("squared_norm_sum");
  double result = 0;
  copy_to_host(&result, partials.get<double>() + partial_count, sizeof result);
  return result;
}
void CudaBackend::timestep_embedding_forward(T* out, const T* timesteps, const nn::TimestepEmbeddingDims& d) {
  const std::int64_t half = d.dim / 2;
  if (d.batch == 0) return;
  if (half == 0) {
    fill(out, 0.0f, static_cast<std::size_t>(d.batch * d.dim));
    return;
  }
  DB_CHECK(half <= kMaxFrequencies, "CUDA timestep embedding: dim ", d.dim, " exceeds ", 2 * kMaxFrequencies);
  // The same float32 arithmetic as diffusers (and the CPU backend).
  Frequencies frequencies{};
  for (std::int64_t i = 0; i < half; ++i) {
    const float exponent =
        static_cast<float>(-std::log(d.max_period)) * static_cast<float>(i) / static_cast<float>(static_cast<double>(half) - d.downscale_freq_shift);
    frequencies.value[i] = std::exp(exponent);
  }
  timestep_embedding_kernel<<<blocks_for(static_cast<std::size_t>(d.batch * half)), kThreads, 0, impl_->stream>>>(
      out, timesteps, d.batch, d.dim, d.flip_sin_to_cos, frequencies, static_cast<float>(d.scale));
  check_launch("timestep_embedding_forward");
}

// --- optimisation ---
void CudaBackend::adamw_step(T* param, const T* grad, T* m, T* v, std::size_t n, T lr, T beta1, T beta2, T eps, T weight_decay, T bias_correction1,
                             T bias_correction2) {
  if (!n) return;
  const T decay = T(1) - lr * weight_decay, step_size = lr / bias_correction1, bc2_sqrt = std::sqrt(bias_correction2);
  adamw_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(param, grad, m, v, n, decay, step_size, beta1, beta2, eps, bc2_sqrt);
  check_launch("adamw_step");
}

}  // namespace dreambooth
