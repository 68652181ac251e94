// GEMMs through cuBLASLt (one cached plan per shape, precision and alignment) and the linear layer.
//
// The problems are row-major; cuBLASLt is column-major. Row-major C[M, N] = op(A) op(B) is column-major
// C^T[N, M] = op(B)^T op(A)^T with the stored matrices unchanged: cuBLASLt's "A" is our B (transposed iff
// trans_b), its "B" is our A (transposed iff trans_a).
#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

cublasComputeType_t compute_type(CudaPrecision precision) {
  switch (precision) {
    case CudaPrecision::fp32: return CUBLAS_COMPUTE_32F;  // cuBLASLt never uses TF32 for this compute type
    case CudaPrecision::tf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case CudaPrecision::bf16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    case CudaPrecision::fp16: return CUBLAS_COMPUTE_32F_FAST_16F;
  }
  return CUBLAS_COMPUTE_32F;
}

// Largest power of two (<= 256) dividing the address of every matrix of the batch (p + i * stride floats):
// what cuBLASLt's kernels may assume.
std::int64_t alignment_of(const void* p, std::int64_t stride) {
  const auto address = reinterpret_cast<std::uintptr_t>(p), stride_bytes = static_cast<std::uintptr_t>(stride) * sizeof(float);
  std::int64_t alignment = 256;
  while (alignment > 4 && (address % static_cast<std::uintptr_t>(alignment) != 0 || stride_bytes % static_cast<std::uintptr_t>(alignment) != 0))
    alignment /= 2;
  return alignment;
}

void set_layout_batch(cublasLtMatrixLayout_t layout, std::int64_t batch, std::int64_t stride) {
  const std::int32_t count = static_cast<std::int32_t>(batch);
  check_cublas(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count), "layout batch count");
  check_cublas(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride), "layout batch stride");
}

__global__ void add_row_bias_kernel(float* out, const float* bias, std::size_t n, std::int64_t cols) {
  DB_GRID_STRIDE(i, n) out[i] += bias[i % cols];
}

}  // namespace

void CudaBackend::gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
                       std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
}

void CudaBackend::gemm_strided_batched(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
                                       std::int64_t lda, std::int64_t stride_a, const T* b, std::int64_t ldb, std::int64_t stride_b, T beta, T* c,
                                       std::int64_t ldc, std::int64_t stride_c, std::int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {  // C = beta C (zeros when beta = 0, whatever C held)
    for (std::int64_t i = 0; i < batch; ++i) {
      T* ci = c + i * stride_c;
      if (beta == 0.0f) {
        check_cuda(cudaMemset2DAsync(ci, static_cast<std::size_t>(ldc) * sizeof(T), 0, static_cast<std::size_t>(n) * sizeof(T),
                                     static_cast<std::size_t>(m), impl_->stream),
                   "gemm with k = 0");
      } else {
        DB_CHECK(ldc == n, "CUDA gemm: k = 0 with beta != 0 needs a contiguous C");
        scale(ci, ci, beta, static_cast<std::size_t>(m * n));
      }
    }
    return;
  }
  auto& s = *impl_;
  const CudaPrecision precision = s.options.precision;
  const GemmKey key{trans_a,
                    trans_b,
                    m,
                    n,
                    k,
                    lda,
                    ldb,
                    ldc,
                    stride_a,
                    stride_b,
                    stride_c,
                    batch,
                    static_cast<std::int64_t>(precision),
                    alignment_of(a, stride_a),
                    alignment_of(b, stride_b),
                    alignment_of(c, stride_c)};
  auto [it, inserted] = s.gemm_plans.try_emplace(key);
  GemmPlan& plan = it->second;
  if (inserted) {
    try {
      check_cublas(cublasLtMatmulDescCreate(&plan.desc, compute_type(precision), CUDA_R_32F), "cublasLtMatmulDescCreate");
      const cublasOperation_t op_lt_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_lt_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
      check_cublas(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_lt_a, sizeof op_lt_a), "matmul transa");
      check_cublas(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_lt_b, sizeof op_lt_b), "matmul transb");
      // Stored (column-major) shapes: our B is [k x n] row-major = [n x k] column-major (transposed: [k x n]).
      check_cublas(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_32F, static_cast<std::uint64_t>(trans_b ? k : n),
                                              static_cast<std::uint64_t>(trans_b ? n : k), ldb),
                   "layout A");
      check_cublas(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_32F, static_cast<std::uint64_t>(trans_a ? m : k),
                                              static_cast<std::uint64_t>(trans_a ? k : m), lda),
                   "layout B");
      check_cublas(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, static_cast<std::uint64_t>(n), static_cast<std::uint64_t>(m), ldc), "layout C");
      if (batch > 1) {
        set_layout_batch(plan.a, batch, stride_b);
        set_layout_batch(plan.b, batch, stride_a);
        set_layout_batch(plan.c, batch, stride_c);
      }
      cublasLtMatmulPreference_t preference = nullptr;
      check_cublas(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
      const std::uint64_t workspace = s.lt_workspace_bytes;
      const std::uint32_t align_a = static_cast<std::uint32_t>(key[14]), align_b = static_cast<std::uint32_t>(key[13]),
                          align_c = static_cast<std::uint32_t>(key[15]);
      // Every preference must hold (an algorithm chosen without the alignment limits could need stricter alignment than
      // the operands have); where one cannot be set, no cuBLASLt algorithm is taken and the GEMM goes to cuBLAS below.
      const bool preferences_set =
          cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace) ==
              CUBLAS_STATUS_SUCCESS &&
          cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a) ==
              CUBLAS_STATUS_SUCCESS &&
          cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b) ==
              CUBLAS_STATUS_SUCCESS &&
          cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c) ==
              CUBLAS_STATUS_SUCCESS &&
          cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c) ==
              CUBLAS_STATUS_SUCCESS;
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const auto status = preferences_set
                              ? cublasLtMatmulAlgoGetHeuristic(s.lt, plan.desc, plan.a, plan.b, plan.c, plan.c, preference, 1, &result, &found)
                              : CUBLAS_STATUS_NOT_SUPPORTED;
      cublasLtMatmulPreferenceDestroy(preference);
      if (status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
        plan.algo = result.algo;
        plan.has_algo = true;
      }
    } catch (...) {
      s.gemm_plans.erase(it);
      throw;
    }
  }
  if (plan.has_algo) {
    check_cublas(cublasLtMatmul(s.lt, plan.desc, &alpha, b, plan.a, a, plan.b, &beta, c, plan.c, c, plan.c, &plan.algo, s.lt_workspace,
                                s.lt_workspace_bytes, s.stream),
                 "cublasLtMatmul");
    return;
  }
  // No cuBLASLt algorithm for this shape / alignment: the classic API, same compute type.
  check_cublas(
      cublasGemmStridedBatchedEx(s.cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                                 static_cast<int>(m), static_cast<int>(k), &alpha, b, CUDA_R_32F, static_cast<int>(ldb), stride_b, a, CUDA_R_32F,
                                 static_cast<int>(lda), stride_a, &beta, c, CUDA_R_32F, static_cast<int>(ldc), stride_c, static_cast<int>(batch),
                                 precision == CudaPrecision::fp32 ? CUBLAS_COMPUTE_32F_PEDANTIC : compute_type(precision), CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
}

// out[N, OC] = in[N, IC] weight[OC, IC]^T + bias[OC]
void CudaBackend::linear_forward(T* out, const T* in, const T* weight, const T* bias, const nn::LinearDims& d) {
  gemm(false, true, d.rows, d.out_features, d.in_features, 1.0f, in, d.in_features, weight, d.in_features, 0.0f, out, d.out_features);
  const auto n = static_cast<std::size_t>(d.rows * d.out_features);
  if (bias && n) add_row_bias_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, bias, n, d.out_features);
  check_launch("linear bias");
}

void CudaBackend::linear_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::LinearDims& d) {
  if (din) gemm(false, false, d.rows, d.in_features, d.out_features, 1.0f, dout, d.out_features, weight, d.in_features, 0.0f, din, d.in_features);
  if (dweight) gemm(true, false, d.out_features, d.in_features, d.rows, 1.0f, dout, d.out_features, in, d.in_features, 1.0f, dweight, d.in_features);
  if (dbias) column_sums(*this, impl_->stream, dbias, dout, d.rows, d.out_features, true);
}

}  // namespace dreambooth
