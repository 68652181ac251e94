// The backend op set, declared once.
//
// Each entry is X(name, family, kind, args):
// - name: the member a backend provides (b.name(...));
// - family: the file it lives in, by the same name in every backend (and its test tag): see kOpFamilies below;
// - kind: forward (computes outputs from inputs), backward (gradients of a forward op), or other (memory fills,
//   GEMM, data movement that is its own backward, optimizer steps, reductions);
// - args: the argument list the Backend concept calls it with, in the names of the concept's requires-parameters
//   (backend.hpp): y a T*, x a const T*, s a T, n a std::size_t, i a std::int64_t, t a bool, u a std::uint64_t,
//   ids a const std::int32_t*, and the problem sizes ld / cd / gd / nd / ad / td (nn/dims.hpp).
//
// The Backend concepts (backend.hpp) are generated from these lists, so an op added here is required of every
// backend at compile time, and an op can only enter the concepts through this list. The op test driver
// (tests/unit/backend_ops_cases.hpp) runs every listed op, and fails a test for an op that has no case there.
// How to add an op end to end: docs/adding-an-op.md.
#pragma once

#include <array>
#include <cstddef>
#include <string_view>

// Fills: part of BackendMemory.
#define DREAMBOOTH_BACKEND_FILL_OPS(X)                  \
  X(fill, tensor_ops, other, (y, s, n))                 \
  X(fill_normal, tensor_ops, other, (y, n, u, u, s, s)) \
  X(fill_uniform, tensor_ops, other, (y, n, u, u, s, s))

// Elementwise arithmetic and GEMM: BackendElementwise, what a new backend implements first.
#define DREAMBOOTH_BACKEND_ELEMENTWISE_OPS(X)               \
  X(add, tensor_ops, forward, (y, x, x, n))                 \
  X(mul, tensor_ops, forward, (y, x, x, n))                 \
  X(scale, tensor_ops, forward, (y, x, s, n))               \
  X(accumulate, tensor_ops, other, (y, x, n))               \
  X(mul_backward, tensor_ops, backward, (y, y, x, x, x, n)) \
  X(gemm, gemm, other, (t, t, i, i, i, s, x, i, x, i, s, y, i))

// The neural-network ops and their backward passes: Backend, what the models need.
#define DREAMBOOTH_BACKEND_NN_OPS(X)                                                    \
  X(linear_forward, gemm, forward, (y, x, x, x, ld))                                    \
  X(linear_backward, gemm, backward, (y, y, y, x, x, x, ld))                            \
  X(conv2d_forward, conv2d, forward, (y, x, x, x, cd))                                  \
  X(conv2d_backward, conv2d, backward, (y, y, y, x, x, x, cd))                          \
  X(group_norm_forward, normalization, forward, (y, y, y, x, x, x, gd))                 \
  X(group_norm_backward, normalization, backward, (y, y, y, x, x, x, x, x, gd))         \
  X(group_norm_silu_forward, normalization, forward, (y, y, y, x, x, x, gd))            \
  X(group_norm_silu_backward, normalization, backward, (y, y, y, x, x, x, x, x, x, gd)) \
  X(layer_norm_forward, normalization, forward, (y, y, y, x, x, x, nd))                 \
  X(layer_norm_backward, normalization, backward, (y, y, y, x, x, x, x, x, nd))         \
  X(silu_forward, activations, forward, (y, x, n))                                      \
  X(silu_backward, activations, backward, (y, x, x, n))                                 \
  X(gelu_forward, activations, forward, (y, x, n))                                      \
  X(gelu_backward, activations, backward, (y, x, x, n))                                 \
  X(quick_gelu_forward, activations, forward, (y, x, n))                                \
  X(quick_gelu_backward, activations, backward, (y, x, x, n))                           \
  X(geglu_forward, activations, forward, (y, x, i, i))                                  \
  X(geglu_backward, activations, backward, (y, x, x, i, i))                             \
  X(softmax_forward, activations, forward, (y, x, i, i))                                \
  X(softmax_backward, activations, backward, (y, x, x, i, i))                           \
  X(attention_forward, attention, forward, (y, y, x, x, x, ad))                         \
  X(attention_backward, attention, backward, (y, y, y, x, x, x, x, x, x, ad))           \
  X(transpose, tensor_ops, other, (y, x, i, i, i))                                      \
  X(add_channel_bias, tensor_ops, forward, (y, x, x, i, i, i))                          \
  X(channel_sum, tensor_ops, backward, (y, x, i, i, i))                                 \
  X(upsample_nearest2x_forward, tensor_ops, forward, (y, x, i, i, i))                   \
  X(upsample_nearest2x_backward, tensor_ops, backward, (y, x, i, i, i))                 \
  X(concat_channels, tensor_ops, forward, (y, x, x, i, i, i, i))                        \
  X(split_channels, tensor_ops, backward, (y, y, x, i, i, i, i))                        \
  X(embedding_forward, tensor_ops, forward, (y, ids, x, x, i, i, i, i))                 \
  X(embedding_backward, tensor_ops, backward, (y, y, x, ids, i, i, i, i))               \
  X(mse_forward, tensor_ops, forward, (y, x, x, n))                                     \
  X(mse_backward, tensor_ops, backward, (y, y, x, x, x, n))                             \
  X(timestep_embedding_forward, tensor_ops, forward, (y, x, td))                        \
  X(clamp, tensor_ops, forward, (y, x, s, s, n))                                        \
  X(dropout, tensor_ops, other, (y, x, n, u, u, s))                                     \
  X(diagonal_gaussian_sample, tensor_ops, forward, (y, x, x, i, i, i))                  \
  X(adamw_step, optimizer, other, (y, x, y, y, n, s, s, s, s, s, s, s))                 \
  X(ema_update, optimizer, other, (y, x, n, s))                                         \
  X(squared_norm, optimizer, other, (x, n))

// Every op, in the order above.
#define DREAMBOOTH_BACKEND_OPS(X)       \
  DREAMBOOTH_BACKEND_FILL_OPS(X)        \
  DREAMBOOTH_BACKEND_ELEMENTWISE_OPS(X) \
  DREAMBOOTH_BACKEND_NN_OPS(X)

// One requirement of a Backend concept: `b.name(args);` (used inside the concepts' requires-expressions).
#define DREAMBOOTH_DETAIL_REQUIRE_OP(name, family, kind, args) b.name args;

namespace dreambooth {

enum class OpKind { forward, backward, other };

struct OpInfo {
  std::string_view name;
  std::string_view family;
  OpKind kind;
};

#define DREAMBOOTH_DETAIL_OP_INFO(name, family, kind, args) OpInfo{#name, #family, OpKind::kind},
// The op list as data: what the test driver and the benchmark iterate over.
inline constexpr auto kBackendOps = std::to_array<OpInfo>({DREAMBOOTH_BACKEND_OPS(DREAMBOOTH_DETAIL_OP_INFO)});
#undef DREAMBOOTH_DETAIL_OP_INFO

constexpr const char* to_string(OpKind kind) { return kind == OpKind::forward ? "forward" : kind == OpKind::backward ? "backward" : "other"; }

// The listed op of that name, or nullptr.
constexpr const OpInfo* find_backend_op(std::string_view name) {
  for (const auto& op : kBackendOps)
    if (op.name == name) return &op;
  return nullptr;
}

// The op families, each one file by the same name in every backend:
//   family         CPU backend (backends/cpu/include/dreambooth/backends/)   CUDA backend (backends/cuda/src/)
//   tensor_ops     cpu/tensor_ops.hpp                                        tensor_ops.cu
//   gemm           cpu/gemm.hpp                                              gemm.cu
//   conv2d         cpu/conv2d.hpp                                            conv2d.cu
//   normalization  cpu/normalization.hpp                                     normalization.cu
//   activations    cpu/activations.hpp                                       activations.cu
//   attention      cpu/attention.hpp                                         attention.cu
//   optimizer      cpu/optimizer.hpp                                         optimizer.cu
// (cpu.hpp / backend.cu hold each backend's class and memory; the scalar formulas both compute are written once in
// nn/scalar_math.hpp.) A new family needs its file in every backend and a line here.
inline constexpr std::array<std::string_view, 7> kOpFamilies = {"tensor_ops",  "gemm",      "conv2d",   "normalization",
                                                                "activations", "attention", "optimizer"};

namespace detail {
constexpr bool op_families_known() {
  for (const auto& op : kBackendOps) {
    bool known = false;
    for (const auto family : kOpFamilies) known = known || op.family == family;
    if (!known) return false;
  }
  return true;
}
constexpr bool op_names_unique() {
  for (std::size_t i = 0; i < kBackendOps.size(); ++i)
    for (std::size_t j = i + 1; j < kBackendOps.size(); ++j)
      if (kBackendOps[i].name == kBackendOps[j].name) return false;
  return true;
}
}  // namespace detail
static_assert(detail::op_names_unique(), "an op is listed twice in backend_ops.hpp");
static_assert(detail::op_families_known(), "an op's family is not in kOpFamilies (a family is a file in every backend)");

}  // namespace dreambooth
