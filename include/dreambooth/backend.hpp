// The Backend concept: what an execution backend provides to the generic library.
//
// A backend is an object (it may own streams, handles, workspaces). Generic components hold a
// `Backend&` and call its members; they never branch on the backend's kind. Memory is addressed by
// raw device pointers; compute runs on `Backend::value_type` (float for the CUDA backend, float or
// double for the CPU reference, which the gradient checks run in double).
//
// The ops themselves are listed once, in backend_ops.hpp (name, family, kind, argument list): the concepts below are
// generated from that list, and the op test driver (tests/unit/test_backend_ops.cpp) runs every op in it.
//
// Conventions shared by every op (see docs/adding-an-op.md):
// - tensors are contiguous and row-major; the shape of every pointer is written beside it;
// - forward ops overwrite their outputs;
// - backward ops ASSIGN input (activation) gradients and ACCUMULATE (+=) parameter gradients;
//   a null gradient pointer means "not needed" and is skipped;
// - statistics that backward needs (mean / rstd, log-sum-exp) are written by forward.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "dreambooth/backend_ops.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth {

// Memory: allocation, copies between host and device, fills, seeded random fills.
template <class B>
concept BackendMemory = requires(B& b, const B& cb, void* p, const void* cp, std::size_t n, typename B::value_type* y, typename B::value_type s,
                                 std::uint64_t u) {
  typename B::value_type;
  { cb.name() } -> std::convertible_to<const char*>;
  { b.allocate(n) } -> std::same_as<void*>;
  b.deallocate(p, n);
  b.copy_to_device(p, cp, n);
  b.copy_to_host(p, cp, n);
  b.copy_device(p, cp, n);
  b.synchronize();
  DREAMBOOTH_BACKEND_FILL_OPS(DREAMBOOTH_DETAIL_REQUIRE_OP)
};

// Elementwise arithmetic and GEMM: the minimum a compute backend brings (what a new backend implements first).
template <class B>
concept BackendElementwise = BackendMemory<B> &&
    requires(B& b, typename B::value_type* y, const typename B::value_type* x, typename B::value_type s, std::size_t n, std::int64_t i, bool t) {
  DREAMBOOTH_BACKEND_ELEMENTWISE_OPS(DREAMBOOTH_DETAIL_REQUIRE_OP)
};

// The full set of neural-network ops with their backward passes: what the models need.
template <class B>
concept Backend = BackendElementwise<B> &&
    requires(B& b, typename B::value_type* y, const typename B::value_type* x, typename B::value_type s, const std::int32_t* ids, std::size_t n,
             nn::LinearDims ld, nn::Conv2dDims cd, nn::GroupNormDims gd, nn::LayerNormDims nd, nn::AttentionDims ad, nn::TimestepEmbeddingDims td,
             std::int64_t i, std::uint64_t u) {
  DREAMBOOTH_BACKEND_NN_OPS(DREAMBOOTH_DETAIL_REQUIRE_OP) { b.squared_norm(x, n) } -> std::convertible_to<double>;
};

}  // namespace dreambooth
