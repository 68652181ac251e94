// The CUDA backend (plugin): declared here in plain C++, defined in backends/cuda/src/*.cu, so that
// translation units that use it never include CUDA headers. Link dreambooth::cuda.
//
// Status: memory, copies, fills (the same Philox streams as the CPU), elementwise ops and GEMM through
// cuBLAS. The neural-network ops arrive op by op (issue: the CUDA / cuDNN backend); until then it
// satisfies BackendElementwise, not the full Backend concept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "dreambooth/backend.hpp"

namespace dreambooth {

class CudaBackend {
 public:
  using value_type = float;
  using T = float;

  // Uses the given device; throws dreambooth::Error when no CUDA device is present.
  explicit CudaBackend(int device = 0);
  ~CudaBackend();
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const { return "cuda"; }
  // Number of CUDA devices visible (0 when there is no driver or no GPU); never throws.
  static int device_count();

  void* allocate(std::size_t bytes);
  void deallocate(void* p, std::size_t bytes);
  void copy_to_device(void* dst, const void* src, std::size_t bytes);
  void copy_to_host(void* dst, const void* src, std::size_t bytes);
  void copy_device(void* dst, const void* src, std::size_t bytes);
  void synchronize();
  void fill(T* x, T value, std::size_t n);
  void fill_normal(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T mean, T stddev);
  void fill_uniform(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T low, T high);

  void add(T* out, const T* a, const T* b, std::size_t n);
  void mul(T* out, const T* a, const T* b, std::size_t n);
  void scale(T* out, const T* a, T s, std::size_t n);
  void accumulate(T* y, const T* x, std::size_t n);
  void mul_backward(T* da, T* db, const T* dout, const T* a, const T* b, std::size_t n);
  // Row-major C[M, N] = alpha op(A) op(B) + beta C, as the CPU backend's gemm (full fp32, no TF32).
  void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
            std::int64_t ldb, T beta, T* c, std::int64_t ldc);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

static_assert(BackendElementwise<CudaBackend>);

}  // namespace dreambooth
