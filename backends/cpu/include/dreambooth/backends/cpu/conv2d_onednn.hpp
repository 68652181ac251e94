// 2-D convolution through oneDNN's convolution primitives: forward, backward data and backward weights, for the CPU
// backend's bf16 compute (--precision bf16). The operands are reordered from the backend's fp32 NCHW / OIHW storage
// into the layout and type oneDNN's kernel for this CPU asks for (bf16, blocked or channels-last: its AMX or
// AVX512-BF16 kernels), products are accumulated in fp32, and the results come back as fp32 NCHW / OIHW: the
// output, the input gradient (assigned) and the weight gradient (accumulated, as conv2d_backward's contract).
// Rounding to bf16 is oneDNN's reorder, round to nearest even, as torch's float -> bfloat16.
//
// Primitives are made once per geometry and pass (making one costs far more than running a small one) and kept; the
// reordered operands live in buffers reused from call to call (fresh allocations of this size would page-fault every
// step). Calls are serialised: convolutions run one at a time, each on all of OpenMP's threads.
#pragma once

#if DREAMBOOTH_WITH_ONEDNN

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include <dnnl.hpp>

#include "dreambooth/core/error.hpp"
#include "dreambooth/nn/dims.hpp"

namespace dreambooth::cpu {

namespace conv_onednn_detail {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// A 64-byte-aligned byte buffer that only grows.
class Buffer {
 public:
  void* get(std::size_t bytes) {
    if (bytes > size_) {
      const std::size_t rounded = (bytes + 63) / 64 * 64;
      data_.reset(static_cast<std::byte*>(std::aligned_alloc(64, rounded)));
      if (!data_) fail("convolution (oneDNN): out of memory for a ", rounded, "-byte operand buffer");
      size_ = rounded;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  std::size_t size_ = 0;
};

enum class Pass { forward, backward_data, backward_weights };

// One pass's primitive with its descriptor (the one of its pass set, the others empty).
struct Primitive {
  dnnl::convolution_forward::primitive_desc forward;
  dnnl::convolution_backward_data::primitive_desc backward_data;
  dnnl::convolution_backward_weights::primitive_desc backward_weights;
  dnnl::primitive primitive;
};

class Convolutions {
 public:
  static Convolutions& instance() {
    static Convolutions c;
    return c;
  }

  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mutex;
  Buffer buffers[3];

  // The primitive for (geometry, pass, with bias, compute type), made on first use.
  const Primitive& get(const nn::Conv2dDims& d, Pass pass, bool bias, dt compute) {
    const auto key =
        std::make_tuple(d.batch, d.in_channels, d.height, d.width, d.out_channels, d.kernel_h, d.kernel_w, d.stride_h, d.stride_w, d.pad_h, d.pad_w,
                        d.padding_bottom(), d.padding_right(), static_cast<int>(pass), bias, static_cast<int>(compute));
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    try {
      return cache_.emplace(key, make(d, pass, bias, compute)).first->second;
    } catch (const dnnl::error& e) {
      fail("convolution ", d.in_channels, "->", d.out_channels, " ", d.kernel_h, "x", d.kernel_w, " on ", d.batch, "x", d.height, "x", d.width,
           ": oneDNN could not make a primitive: ", e.what());
    }
  }

  static dnnl::memory::dims src_dims(const nn::Conv2dDims& d) { return {d.batch, d.in_channels, d.height, d.width}; }
  static dnnl::memory::dims weight_dims(const nn::Conv2dDims& d) { return {d.out_channels, d.in_channels, d.kernel_h, d.kernel_w}; }
  static dnnl::memory::dims dst_dims(const nn::Conv2dDims& d) { return {d.batch, d.out_channels, d.out_height(), d.out_width()}; }

 private:
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                         std::int64_t, std::int64_t, std::int64_t, std::int64_t, int, bool, int>;
  std::map<Key, Primitive> cache_;

  dnnl::convolution_forward::primitive_desc forward_desc(const nn::Conv2dDims& d, bool bias, dt compute) const {
    const dnnl::memory::desc src(src_dims(d), compute, tag::any), weights(weight_dims(d), compute, tag::any), dst(dst_dims(d), dt::f32, tag::any),
        bias_md = bias ? dnnl::memory::desc({d.out_channels}, dt::f32, tag::x) : dnnl::memory::desc();
    const dnnl::memory::dims strides{d.stride_h, d.stride_w}, pad_l{d.pad_h, d.pad_w}, pad_r{d.padding_bottom(), d.padding_right()};
    return {dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, weights, bias_md, dst,
                                            strides, pad_l, pad_r),
            engine};
  }

  Primitive make(const nn::Conv2dDims& d, Pass pass, bool bias, dt compute) const {
    const dnnl::memory::dims strides{d.stride_h, d.stride_w}, pad_l{d.pad_h, d.pad_w}, pad_r{d.padding_bottom(), d.padding_right()};
    const dnnl::memory::desc src(src_dims(d), compute, tag::any), weights(weight_dims(d), compute, tag::any), dst(dst_dims(d), compute, tag::any);
    switch (pass) {
      case Pass::forward: {
        Primitive p;
        p.forward = forward_desc(d, bias, compute);
        p.primitive = dnnl::convolution_forward(p.forward);
        return p;
      }
      case Pass::backward_data: {
        const dnnl::memory::desc diff_src(src_dims(d), dt::f32, tag::any);
        Primitive p;
        p.backward_data = {dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, diff_src, weights, dst, strides, pad_l, pad_r),
                           engine, forward_desc(d, false, compute)};
        p.primitive = dnnl::convolution_backward_data(p.backward_data);
        return p;
      }
      case Pass::backward_weights: {
        const dnnl::memory::desc diff_weights(weight_dims(d), dt::f32, tag::any),
            diff_bias = bias ? dnnl::memory::desc({d.out_channels}, dt::f32, tag::x) : dnnl::memory::desc();
        Primitive p;
        p.backward_weights = {
            dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src, diff_weights, diff_bias, dst, strides, pad_l, pad_r),
            engine, forward_desc(d, false, compute)};
        p.primitive = dnnl::convolution_backward_weights(p.backward_weights);
        return p;
      }
    }
    fail("convolution (oneDNN): unknown pass");
  }
};

// `user` as `desc` wants it: the user's memory itself when the layouts agree, else reordered (and converted) into
// `buffer`.
inline dnnl::memory as_desc(Convolutions& c, dnnl::memory user, const dnnl::memory::desc& desc, Buffer& buffer) {
  if (user.get_desc() == desc) return user;
  dnnl::memory converted(desc, c.engine, buffer.get(desc.get_size()));
  dnnl::reorder(user, converted).execute(c.stream, user, converted);
  return converted;
}

// to = from (accumulate: to += from), converting the layout.
inline void reorder_back(Convolutions& c, dnnl::memory from, dnnl::memory to, bool accumulate) {
  if (!accumulate && from.get_desc() == to.get_desc()) return;
  dnnl::primitive_attr attr;
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  dnnl::reorder(dnnl::reorder::primitive_desc(from, to, attr)).execute(c.stream, from, to);
}

inline dnnl::memory user_memory(Convolutions& c, const dnnl::memory::dims& dims, tag layout, const float* data) {
  return dnnl::memory({dims, dt::f32, layout}, c.engine, const_cast<float*>(data));
}

}  // namespace conv_onednn_detail

// out[N, K, P, Q] = conv(in[N, C, H, W], weight[K, C, R, S]) + bias[K] (bias may be null), operands in `compute`.
inline void conv2d_forward_onednn(float* out, const float* in, const float* weight, const float* bias, const nn::Conv2dDims& d,
                                  dnnl::memory::data_type compute) {
  using namespace conv_onednn_detail;
  auto& c = Convolutions::instance();
  std::lock_guard lock(c.mutex);
  const auto& p = c.get(d, Pass::forward, bias != nullptr, compute);
  const auto& pd = p.forward;
  const auto src = as_desc(c, user_memory(c, Convolutions::src_dims(d), tag::nchw, in), pd.src_desc(), c.buffers[0]);
  const auto wei = as_desc(c, user_memory(c, Convolutions::weight_dims(d), tag::oihw, weight), pd.weights_desc(), c.buffers[1]);
  const auto user_dst = user_memory(c, Convolutions::dst_dims(d), tag::nchw, out);
  const dnnl::memory dst =
      pd.dst_desc() == user_dst.get_desc() ? user_dst : dnnl::memory(pd.dst_desc(), c.engine, c.buffers[2].get(pd.dst_desc().get_size()));
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (bias) args.emplace(DNNL_ARG_BIAS, user_memory(c, {d.out_channels}, tag::x, bias));
  p.primitive.execute(c.stream, args);
  reorder_back(c, dst, user_dst, false);
  c.stream.wait();
}

// din[N, C, H, W] (assigned) and dweight[K, C, R, S] (accumulated); either may be null. (The bias gradient, dout's
// channel sums, is conv2d_backward's own.)
inline void conv2d_backward_onednn(float* din, float* dweight, const float* dout, const float* in, const float* weight, const nn::Conv2dDims& d,
                                   dnnl::memory::data_type compute) {
  using namespace conv_onednn_detail;
  auto& c = Convolutions::instance();
  std::lock_guard lock(c.mutex);
  const auto user_dout = user_memory(c, Convolutions::dst_dims(d), tag::nchw, dout);
  dnnl::memory dout_converted;  // diff_dst as the backward-data pass took it, reused by the weights pass when alike
  if (din) {
    const auto& p = c.get(d, Pass::backward_data, false, compute);
    const auto& pd = p.backward_data;
    dout_converted = as_desc(c, user_dout, pd.diff_dst_desc(), c.buffers[0]);
    const auto wei = as_desc(c, user_memory(c, Convolutions::weight_dims(d), tag::oihw, weight), pd.weights_desc(), c.buffers[1]);
    const auto user_din = user_memory(c, Convolutions::src_dims(d), tag::nchw, din);
    const dnnl::memory diff_src = pd.diff_src_desc() == user_din.get_desc()
                                      ? user_din
                                      : dnnl::memory(pd.diff_src_desc(), c.engine, c.buffers[2].get(pd.diff_src_desc().get_size()));
    p.primitive.execute(c.stream, {{DNNL_ARG_DIFF_DST, dout_converted}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, diff_src}});
    reorder_back(c, diff_src, user_din, false);
  }
  if (dweight) {
    const auto& p = c.get(d, Pass::backward_weights, false, compute);
    const auto& pd = p.backward_weights;
    const dnnl::memory diff_dst =
        din && dout_converted.get_desc() == pd.diff_dst_desc() ? dout_converted : as_desc(c, user_dout, pd.diff_dst_desc(), c.buffers[0]);
    const auto src = as_desc(c, user_memory(c, Convolutions::src_dims(d), tag::nchw, in), pd.src_desc(), c.buffers[1]);
    const dnnl::memory diff_weights(pd.diff_weights_desc(), c.engine, c.buffers[2].get(pd.diff_weights_desc().get_size()));
    p.primitive.execute(c.stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
    reorder_back(c, diff_weights, user_memory(c, Convolutions::weight_dims(d), tag::oihw, dweight), true);
  }
  c.stream.wait();
}

}  // namespace dreambooth::cpu

#endif
