// The CUDA backend's class: construction, memory (stream-ordered pool), copies, the error flag, precision
// conversions. The ops are in the file of their family (backend_ops.hpp): tensor_ops.cu, gemm.cu, conv2d.cu,
// normalization.cu, activations.cu, attention.cu, optimizer.cu.
#include <cstring>
#include <limits>
#include <string>

#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(in[i]); }
__global__ void to_fp16_kernel(__half* out, const float* in, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = __float2half_rn(in[i]); }
__global__ void from_bf16_kernel(float* out, const __nv_bfloat16* in, std::size_t n, float beta) {
  DB_GRID_STRIDE(i, n) out[i] = (beta != 0.0f ? beta * out[i] : 0.0f) + __bfloat162float(in[i]);
}
__global__ void from_fp16_kernel(float* out, const __half* in, std::size_t n, float beta) {
  DB_GRID_STRIDE(i, n) out[i] = (beta != 0.0f ? beta * out[i] : 0.0f) + __half2float(in[i]);
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
  // On the backend's stream, which does not synchronise with the legacy default stream, and finished before any op
  // can raise the flag or check_error_flag read it.
  check_cuda(cudaMemsetAsync(s.error_flag, 0, sizeof(int), s.stream), "cudaMemsetAsync (error flag)");
  check_cuda(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
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

}  // namespace dreambooth
