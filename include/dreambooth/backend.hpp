// The Backend concept: what an execution backend provides to the generic library.
//
// A backend is an object (it may own streams, handles, workspaces). Generic components hold a
// `Backend&` and call its members; they never branch on the backend's kind. Memory is addressed by
// raw device pointers; compute runs on `Backend::value_type` (float for the CUDA backend, float or
// double for the CPU reference, which the gradient checks run in double).
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

#include "dreambooth/nn/dims.hpp"

namespace dreambooth {

// Memory: allocation, copies between host and device, fills, seeded random fills.
template <class B>
concept BackendMemory = requires(B& b, const B& cb, void* p, const void* cp, std::size_t n, typename B::value_type* x, typename B::value_type v,
                                 std::uint64_t u) {
  typename B::value_type;
  { cb.name() } -> std::convertible_to<const char*>;
  { b.allocate(n) } -> std::same_as<void*>;
  b.deallocate(p, n);
  b.copy_to_device(p, cp, n);
  b.copy_to_host(p, cp, n);
  b.copy_device(p, cp, n);
  b.synchronize();
  b.fill(x, v, n);
  b.fill_normal(x, n, u, u, v, v);
  b.fill_uniform(x, n, u, u, v, v);
};

// Elementwise arithmetic and GEMM: the minimum a compute backend brings (what a new backend implements first).
template <class B>
concept BackendElementwise = BackendMemory<B> &&
    requires(B& b, typename B::value_type* y, const typename B::value_type* x, typename B::value_type s, std::size_t n, std::int64_t i, bool t) {
  b.add(y, x, x, n);
  b.mul(y, x, x, n);
  b.scale(y, x, s, n);
  b.accumulate(y, x, n);
  b.mul_backward(y, y, x, x, x, n);
  b.gemm(t, t, i, i, i, s, x, i, x, i, s, y, i);
};

// The full set of neural-network ops with their backward passes: what the models need.
template <class B>
concept Backend = BackendElementwise<B> &&
    requires(B& b, typename B::value_type* y, const typename B::value_type* x, const std::int32_t* ids, std::size_t n, nn::LinearDims ld,
             nn::Conv2dDims cd, nn::GroupNormDims gd, nn::LayerNormDims nd, nn::AttentionDims ad, nn::TimestepEmbeddingDims td, std::int64_t i) {
  b.linear_forward(y, x, x, x, ld);
  b.linear_backward(y, y, y, x, x, x, ld);
  b.conv2d_forward(y, x, x, x, cd);
  b.conv2d_backward(y, y, y, x, x, x, cd);
  b.group_norm_forward(y, y, y, x, x, x, gd);
  b.group_norm_backward(y, y, y, x, x, x, x, x, gd);
  b.group_norm_silu_forward(y, y, y, x, x, x, gd);
  b.group_norm_silu_backward(y, y, y, x, x, x, x, x, x, gd);
  b.layer_norm_forward(y, y, y, x, x, x, nd);
  b.layer_norm_backward(y, y, y, x, x, x, x, x, nd);
  b.silu_forward(y, x, n);
  b.silu_backward(y, x, x, n);
  b.gelu_forward(y, x, n);
  b.gelu_backward(y, x, x, n);
  b.quick_gelu_forward(y, x, n);
  b.quick_gelu_backward(y, x, x, n);
  b.geglu_forward(y, x, i, i);
  b.geglu_backward(y, x, x, i, i);
  b.softmax_forward(y, x, i, i);
  b.softmax_backward(y, x, x, i, i);
  b.attention_forward(y, y, x, x, x, ad);
  b.attention_backward(y, y, y, x, x, x, x, x, x, ad);
  b.transpose(y, x, i, i, i);
  b.add_channel_bias(y, x, x, i, i, i);
  b.channel_sum(y, x, i, i, i);
  b.upsample_nearest2x_forward(y, x, i, i, i);
  b.upsample_nearest2x_backward(y, x, i, i, i);
  b.concat_channels(y, x, x, i, i, i, i);
  b.split_channels(y, y, x, i, i, i, i);
  b.embedding_forward(y, ids, x, x, i, i, i, i);
  b.embedding_backward(y, y, x, ids, i, i, i, i);
  b.mse_forward(y, x, x, n);
  b.mse_backward(y, y, x, x, x, n);
  b.timestep_embedding_forward(y, x, td);
  b.adamw_step(y, x, y, y, n, *x, *x, *x, *x, *x, *x, *x);
  { b.squared_norm(x, n) } -> std::convertible_to<double>;
};

}  // namespace dreambooth
