// 2-D convolution through cuDNN: forward, backward data and backward filter, each with its algorithm
// found once per shape and precision (cudnnFind*: the fastest deterministic algorithm within the workspace
// limit) and cached. Bias and its gradient are our kernels.
//
// Precision: fp32 runs cuDNN in fp32 with FMA math only (no TF32: parity with the CPU backend); tf32 lets
// cuDNN use TF32 tensor cores; bf16 / fp16 round the operands to 16 bits (kept in scratch buffers for the
// call), run the tensor-core kernels with fp32 accumulation and widen the result back into the fp32 output
// (the weight gradient is added to the fp32 gradient, as autocast's master-weight gradients are).
// cuDNN's legacy API pads symmetrically; the VAE downsampler's (0, 1, 0, 1) padding is done by copying the
// input into a zero-padded scratch tensor (and cropping the input gradient back).
#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

struct Geometry {
  std::int64_t padded_h, padded_w, pad_h, pad_w;  // the cuDNN problem: input padded_h x padded_w, symmetric pad
  bool explicit_padding;
};
Geometry geometry_of(const nn::Conv2dDims& d) {
  if (d.symmetric()) return {d.height, d.width, d.pad_h, d.pad_w, false};
  return {d.height + d.pad_h + d.padding_bottom(), d.width + d.pad_w + d.padding_right(), 0, 0, true};
}

// out[N, C, Hp, Wp] = in[N, C, H, W] placed at (top, left), zeros around.
__global__ void pad_kernel(float* out, const float* in, std::size_t n, std::int64_t H, std::int64_t W, std::int64_t Hp, std::int64_t Wp,
                           std::int64_t top, std::int64_t left) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t x = i % Wp, y = (i / Wp) % Hp, plane = i / (Hp * Wp), sy = y - top, sx = x - left;
    out[i] = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? in[(plane * H + sy) * W + sx] : 0.0f;
  }
}
// out[N, C, H, W] = in[N, C, Hp, Wp] at (top, left).
__global__ void crop_kernel(float* out, const float* in, std::size_t n, std::int64_t H, std::int64_t W, std::int64_t Hp, std::int64_t Wp,
                            std::int64_t top, std::int64_t left) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t x = i % W, y = (i / W) % H, plane = i / (H * W);
    out[i] = in[(plane * Hp + y + top) * Wp + x + left];
  }
}

// The input cuDNN sees: `in` itself, or (explicit padding) `in` copied into the zero-padded scratch `padded`.
const float* padded_input(cudaStream_t stream, const Scratch& padded, const float* in, const nn::Conv2dDims& d, const Geometry& g) {
  if (!g.explicit_padding) return in;
  const auto count = static_cast<std::size_t>(d.batch * d.in_channels * g.padded_h * g.padded_w);
  pad_kernel<<<blocks_for(count), kThreads, 0, stream>>>(padded.get<float>(), in, count, d.height, d.width, g.padded_h, g.padded_w, d.pad_h, d.pad_w);
  check_launch("conv2d pad");
  return padded.get<float>();
}

__global__ void add_nchw_bias_kernel(float* out, const float* bias, std::size_t n, std::int64_t channels, std::int64_t spatial) {
  DB_GRID_STRIDE(i, n) out[i] += bias[(i / spatial) % channels];
}

cudnnDataType_t data_type(CudaPrecision precision) {
  switch (precision) {
    case CudaPrecision::bf16: return CUDNN_DATA_BFLOAT16;
    case CudaPrecision::fp16: return CUDNN_DATA_HALF;
    default: return CUDNN_DATA_FLOAT;
  }
}
cudnnMathType_t math_type(CudaPrecision precision) {
  switch (precision) {
    case CudaPrecision::fp32: return CUDNN_FMA_MATH;
    case CudaPrecision::tf32: return CUDNN_DEFAULT_MATH;
    default: return CUDNN_TENSOR_OP_MATH;
  }
}
bool is_half(CudaPrecision precision) { return precision == CudaPrecision::bf16 || precision == CudaPrecision::fp16; }
std::size_t element_bytes(CudaPrecision precision) { return is_half(precision) ? 2 : 4; }

// Algorithms allowed in fp32: the GEMM family, whose rounding matches a direct sum (FFT and Winograd
// transform the operands and lose a few bits, enough to miss a 1e-5 parity).
bool exact_algorithm(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}
bool exact_algorithm(cudnnConvolutionBwdDataAlgo_t a) { return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1; }
bool exact_algorithm(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
}

// Picks from cudnnFind's results (sorted fastest first): succeeded, deterministic, within the workspace limit,
// with an allowed math type and (fp32) a GEMM-family algorithm. Without a deterministic candidate, the fastest
// allowed one.
template <class Perf>
const Perf* choose(const Perf* results, int count, CudaPrecision precision, std::size_t workspace_limit) {
  const Perf* fallback = nullptr;
  for (int i = 0; i < count; ++i) {
    const Perf& r = results[i];
    if (r.status != CUDNN_STATUS_SUCCESS || r.memory > workspace_limit) continue;
    if (precision == CudaPrecision::fp32 && (r.mathType == CUDNN_TENSOR_OP_MATH || !exact_algorithm(r.algo))) continue;
    if (!fallback) fallback = &r;
    if (r.determinism == CUDNN_DETERMINISTIC) return &r;
  }
  return fallback;
}

// Converts fp32 operands to the 16-bit compute type into scratch (for bf16 / fp16 precision).
class HalfCopy {
 public:
  HalfCopy(CudaBackend& backend, cudaStream_t stream, CudaPrecision precision, const float* x, std::size_t n) : scratch_(backend, n * 2) {
    if (precision == CudaPrecision::bf16)
      convert_to_bf16(stream, scratch_.get<__nv_bfloat16>(), x, n);
    else
      convert_to_fp16(stream, scratch_.get<__half>(), x, n);
  }
  void* get() const { return scratch_.get(); }

 private:
  Scratch scratch_;
};
void widen(cudaStream_t stream, CudaPrecision precision, float* out, const void* in, std::size_t n, float beta) {
  if (precision == CudaPrecision::bf16)
    convert_from_bf16(stream, out, static_cast<const __nv_bfloat16*>(in), n, beta);
  else
    convert_from_fp16(stream, out, static_cast<const __half*>(in), n, beta);
}

}  // namespace

// The descriptors of one convolution problem at the current precision (algorithms are found lazily per pass).
static ConvPlan& conv_plan(CudaBackend::Impl& s, const nn::Conv2dDims& d, const Geometry& g) {
  const CudaPrecision precision = s.options.precision;
  const ConvKey key{d.batch,    d.in_channels, g.padded_h, g.padded_w, d.out_channels, d.kernel_h,
                    d.kernel_w, d.stride_h,    d.stride_w, g.pad_h,    g.pad_w,        static_cast<std::int64_t>(precision)};
  auto [it, inserted] = s.conv_plans.try_emplace(key);
  ConvPlan& plan = it->second;
  if (!inserted) return plan;
  try {
    const cudnnDataType_t type = data_type(precision);
    auto i32 = [](std::int64_t v) {
      DB_CHECK(v <= 0x7fffffff, "CUDA conv2d: dimension ", v, " exceeds cuDNN's int range");
      return static_cast<int>(v);
    };
    check_cudnn(cudnnCreateTensorDescriptor(&plan.x), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateTensorDescriptor(&plan.y), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateFilterDescriptor(&plan.w), "cudnnCreateFilterDescriptor");
    check_cudnn(cudnnCreateConvolutionDescriptor(&plan.conv), "cudnnCreateConvolutionDescriptor");
    check_cudnn(cudnnSetTensor4dDescriptor(plan.x, CUDNN_TENSOR_NCHW, type, i32(d.batch), i32(d.in_channels), i32(g.padded_h), i32(g.padded_w)),
                "input descriptor");
    check_cudnn(
        cudnnSetFilter4dDescriptor(plan.w, type, CUDNN_TENSOR_NCHW, i32(d.out_channels), i32(d.in_channels), i32(d.kernel_h), i32(d.kernel_w)),
        "filter descriptor");
    check_cudnn(cudnnSetConvolution2dDescriptor(plan.conv, i32(g.pad_h), i32(g.pad_w), i32(d.stride_h), i32(d.stride_w), 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                "convolution descriptor");
    check_cudnn(cudnnSetConvolutionMathType(plan.conv, math_type(precision)), "cudnnSetConvolutionMathType");
    int n = 0, c = 0, h = 0, w = 0;
    check_cudnn(cudnnGetConvolution2dForwardOutputDim(plan.conv, plan.x, plan.w, &n, &c, &h, &w), "cudnnGetConvolution2dForwardOutputDim");
    DB_CHECK(h == d.out_height() && w == d.out_width(), "CUDA conv2d: cuDNN's output ", h, "x", w, " differs from the expected ", d.out_height(), "x",
             d.out_width());
    check_cudnn(cudnnSetTensor4dDescriptor(plan.y, CUDNN_TENSOR_NCHW, type, n, c, h, w), "output descriptor");
  } catch (...) {
    s.conv_plans.erase(it);  // the destructor of Impl frees only cached plans; this one leaks its few descriptors
    throw;
  }
  return plan;
}

// cudnnFind allocates its own trial buffers with cudaMalloc: give the pool's idle memory back first. The search
// runs under the precision's math type (an earlier pass may have left the descriptor on its own choice).
static void prepare_find(CudaBackend::Impl& s, ConvPlan& plan) {
  check_cuda(cudaStreamSynchronize(s.stream), "synchronize");
  check_cuda(cudaMemPoolTrimTo(s.pool, 0), "cudaMemPoolTrimTo");
  check_cudnn(cudnnSetConvolutionMathType(plan.conv, math_type(s.options.precision)), "cudnnSetConvolutionMathType");
}

// Searches once (cudnnFind* through `find(results, capacity, &count)`) and keeps the choice in `chosen`.
template <class Perf, int Capacity, class Algo, class Find>
static void find_algorithm(CudaBackend::Impl& s, ConvPlan& plan, ConvAlgorithm<Algo>& chosen, Find find, const char* pass, const nn::Conv2dDims& d) {
  if (chosen.found) return;
  prepare_find(s, plan);
  Perf results[Capacity];
  int count = 0;
  check_cudnn(find(results, Capacity, &count), pass);
  const CudaPrecision precision = s.options.precision;
  const Perf* best = choose(results, count, precision, s.options.conv_workspace_limit);
  DB_CHECK(best, "CUDA conv2d: cuDNN has no algorithm (", pass, ") for ", d.batch, "x", d.in_channels, "x", d.height, "x", d.width, " -> ",
           d.out_channels, " (", d.kernel_h, "x", d.kernel_w, ")");
  chosen = {true, best->algo, best->memory, precision == CudaPrecision::fp32 ? CUDNN_FMA_MATH : best->mathType};
}

void CudaBackend::conv2d_forward(T* out, const T* in, const T* weight, const T* bias, const nn::Conv2dDims& d) {
  auto& s = *impl_;
  const Geometry g = geometry_of(d);
  const CudaPrecision precision = s.options.precision;
  ConvPlan& plan = conv_plan(s, d, g);
  find_algorithm<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT>(
      s, plan, plan.forward,
      [&](auto* results, int capacity, int* count) {
        return cudnnFindConvolutionForwardAlgorithm(s.cudnn, plan.x, plan.w, plan.conv, plan.y, capacity, count, results);
      },
      "cudnnFindConvolutionForwardAlgorithm", d);
  const auto in_count = static_cast<std::size_t>(d.batch * d.in_channels * g.padded_h * g.padded_w);
  const auto out_count = static_cast<std::size_t>(d.batch * d.out_channels * d.out_height() * d.out_width());
  const auto weight_count = static_cast<std::size_t>(d.out_channels * d.in_channels * d.kernel_h * d.kernel_w);
  Scratch padded(*this, g.explicit_padding ? in_count * sizeof(float) : 0);
  const float* x = padded_input(s.stream, padded, in, d, g);
  Scratch workspace(*this, plan.forward.workspace);
  check_cudnn(cudnnSetConvolutionMathType(plan.conv, plan.forward.math), "cudnnSetConvolutionMathType");
  const float one = 1.0f, zero = 0.0f;
  if (!is_half(precision)) {
    check_cudnn(cudnnConvolutionForward(s.cudnn, &one, plan.x, x, plan.w, weight, plan.conv, plan.forward.algo, workspace.get(), workspace.bytes(),
                                        &zero, plan.y, out),
                "cudnnConvolutionForward");
  } else {
    HalfCopy x16(*this, s.stream, precision, x, in_count), w16(*this, s.stream, precision, weight, weight_count);
    Scratch y16(*this, out_count * element_bytes(precision));
    check_cudnn(cudnnConvolutionForward(s.cudnn, &one, plan.x, x16.get(), plan.w, w16.get(), plan.conv, plan.forward.algo, workspace.get(),
                                        workspace.bytes(), &zero, plan.y, y16.get()),
                "cudnnConvolutionForward");
    widen(s.stream, precision, out, y16.get(), out_count, 0.0f);
  }
  if (bias && out_count) {
    add_nchw_bias_kernel<<<blocks_for(out_count), kThreads, 0, s.stream>>>(out, bias, out_count, d.out_channels, d.out_height() * d.out_width());
    check_launch("conv2d bias");
  }
}

void CudaBackend::conv2d_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, const nn::Conv2dDims& d) {
  auto& s = *impl_;
  const Geometry g = geometry_of(d);
  const CudaPrecision precision = s.options.precision;
  const auto spatial_out = d.out_height() * d.out_width();
  if (dbias) channel_sums_accumulate(s.stream, dbias, dout, d.batch, d.out_channels, spatial_out);
  if (!din && !dweight) return;
  ConvPlan& plan = conv_plan(s, d, g);
  const auto in_count = static_cast<std::size_t>(d.batch * d.in_channels * g.padded_h * g.padded_w);
  const auto out_count = static_cast<std::size_t>(d.batch * d.out_channels * spatial_out);
  const auto weight_count = static_cast<std::size_t>(d.out_channels * d.in_channels * d.kernel_h * d.kernel_w);
  const float one = 1.0f, zero = 0.0f;
  // dout in the compute type, shared by both passes.
  std::unique_ptr<HalfCopy> dy16;
  if (is_half(precision)) dy16 = std::make_unique<HalfCopy>(*this, s.stream, precision, dout, out_count);

  if (din) {
    find_algorithm<cudnnConvolutionBwdDataAlgoPerf_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT>(
        s, plan, plan.backward_data,
        [&](auto* results, int capacity, int* count) {
          return cudnnFindConvolutionBackwardDataAlgorithm(s.cudnn, plan.w, plan.y, plan.conv, plan.x, capacity, count, results);
        },
        "cudnnFindConvolutionBackwardDataAlgorithm", d);
    Scratch padded_grad(*this, g.explicit_padding ? in_count * sizeof(float) : 0);
    float* dx = g.explicit_padding ? padded_grad.get<float>() : din;
    Scratch workspace(*this, plan.backward_data.workspace);
    check_cudnn(cudnnSetConvolutionMathType(plan.conv, plan.backward_data.math), "cudnnSetConvolutionMathType");
    if (!is_half(precision)) {
      check_cudnn(cudnnConvolutionBackwardData(s.cudnn, &one, plan.w, weight, plan.y, dout, plan.conv, plan.backward_data.algo, workspace.get(),
                                               workspace.bytes(), &zero, plan.x, dx),
                  "cudnnConvolutionBackwardData");
    } else {
      HalfCopy w16(*this, s.stream, precision, weight, weight_count);
      Scratch dx16(*this, in_count * element_bytes(precision));
      check_cudnn(cudnnConvolutionBackwardData(s.cudnn, &one, plan.w, w16.get(), plan.y, dy16->get(), plan.conv, plan.backward_data.algo,
                                               workspace.get(), workspace.bytes(), &zero, plan.x, dx16.get()),
                  "cudnnConvolutionBackwardData");
      widen(s.stream, precision, dx, dx16.get(), in_count, 0.0f);
    }
    if (g.explicit_padding) {
      const auto count = static_cast<std::size_t>(d.batch * d.in_channels * d.height * d.width);
      crop_kernel<<<blocks_for(count), kThreads, 0, s.stream>>>(din, dx, count, d.height, d.width, g.padded_h, g.padded_w, d.pad_h, d.pad_w);
      check_launch("conv2d crop");
    }
  }

  if (dweight) {
    find_algorithm<cudnnConvolutionBwdFilterAlgoPerf_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT>(
        s, plan, plan.backward_filter,
        [&](auto* results, int capacity, int* count) {
          return cudnnFindConvolutionBackwardFilterAlgorithm(s.cudnn, plan.x, plan.y, plan.conv, plan.w, capacity, count, results);
        },
        "cudnnFindConvolutionBackwardFilterAlgorithm", d);
    Scratch padded(*this, g.explicit_padding ? in_count * sizeof(float) : 0);
    const float* x = padded_input(s.stream, padded, in, d, g);
    Scratch workspace(*this, plan.backward_filter.workspace);
    check_cudnn(cudnnSetConvolutionMathType(plan.conv, plan.backward_filter.math), "cudnnSetConvolutionMathType");
    if (!is_half(precision)) {
      check_cudnn(cudnnConvolutionBackwardFilter(s.cudnn, &one, plan.x, x, plan.y, dout, plan.conv, plan.backward_filter.algo, workspace.get(),
                                                 workspace.bytes(), &one, plan.w, dweight),
                  "cudnnConvolutionBackwardFilter");
    } else {
      HalfCopy x16(*this, s.stream, precision, x, in_count);
      Scratch dw16(*this, weight_count * element_bytes(precision));
      check_cudnn(cudnnConvolutionBackwardFilter(s.cudnn, &one, plan.x, x16.get(), plan.y, dy16->get(), plan.conv, plan.backward_filter.algo,
                                                 workspace.get(), workspace.bytes(), &zero, plan.w, dw16.get()),
                  "cudnnConvolutionBackwardFilter");
      widen(s.stream, precision, dweight, dw16.get(), weight_count, 1.0f);
    }
  }
}

}  // namespace dreambooth
