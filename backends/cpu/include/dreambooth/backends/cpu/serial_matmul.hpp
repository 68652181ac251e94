// oneDNN matmuls run on the calling thread alone, for tasks of an OpenMP loop (attention's per-(image, head) products):
// C[m, n] (fp32, row stride ldc) = alpha * op(A) op(B) + beta * C with A and B row-major, fp32 or bf16 (leading
// dimensions lda, ldb; op(A) [m, k] stored [k, m] when trans_a, op(B) [k, n] stored [n, k] when trans_b). oneDNN does
// not nest OpenMP, so a matmul called inside a parallel region runs serially; each thread has its own stream and
// scratchpad, and primitives are made once per shape and shared. A task's result depends only on its operands.
#pragma once

#if DREAMBOOTH_WITH_ONEDNN

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <dnnl.hpp>

#include "dreambooth/core/error.hpp"

namespace dreambooth::cpu {

class SerialMatmuls {
 public:
  using DataType = dnnl::memory::data_type;

  static SerialMatmuls& instance() {
    static SerialMatmuls s;
    return s;
  }

  // A and B of `operands` type (f32 or bf16), C fp32.
  void run(DataType operands, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const void* a,
           std::int64_t lda, const void* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
    const Made& made = get(std::make_tuple(operands, trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta));
    thread_local dnnl::stream stream(engine_);
    thread_local std::vector<std::uint8_t> scratch;
    const auto scratch_bytes = made.pd.scratchpad_desc().get_size();
    if (scratch.size() < scratch_bytes) scratch.resize(scratch_bytes);
    dnnl::memory A(made.pd.src_desc(), engine_, const_cast<void*>(a)), B(made.pd.weights_desc(), engine_, const_cast<void*>(b)),
        C(made.pd.dst_desc(), engine_, c), S(made.pd.scratchpad_desc(), engine_, scratch.data());
    made.matmul.execute(stream, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}, {DNNL_ARG_SCRATCHPAD, S}});
    stream.wait();
  }

 private:
  using Key = std::tuple<DataType, bool, bool, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, float, float>;
  struct Made {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul matmul;
  };
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  std::mutex mutex_;
  std::map<Key, Made> cache_;  // std::map: references stay valid while other threads insert

  const Made& get(const Key& key) {
    std::lock_guard lock(mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    const auto [operands, trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta] = key;
    const dnnl::memory::desc A({m, k}, operands, trans_a ? dnnl::memory::dims{1, lda} : dnnl::memory::dims{lda, 1});
    const dnnl::memory::desc B({k, n}, operands, trans_b ? dnnl::memory::dims{1, ldb} : dnnl::memory::dims{ldb, 1});
    const dnnl::memory::desc C({m, n}, DataType::f32, dnnl::memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(beta);
      attr.set_post_ops(ops);
    }
    try {
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(A, B, C), attr, engine_);
      return cache_.emplace(key, Made{pd, dnnl::matmul(pd)}).first->second;
    } catch (const dnnl::error& e) {
      fail("oneDNN could not make a ", operands == DataType::bf16 ? "bf16" : "fp32", " ", m, "x", n, "x", k, " matmul on one thread: ", e.what());
    }
  }
};

}  // namespace dreambooth::cpu

#endif
