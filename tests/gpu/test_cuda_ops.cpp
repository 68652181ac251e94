// Every op of the Backend concept (and gemm_strided_batched) on the CUDA backend against the CPU reference backend, from
// identical host inputs (label gpu: runs only where a GPU is present).
//
// Tolerances, relative L2 per output and gradient:
// - fp32 compute (the default): 1e-5. The two backends differ only in summation order and in the last bit of
//   exp / erf / sin, ~1e-7; a missing term, a wrong index or TF32 (~5e-4) fails by orders of magnitude;
// - ops that round once per element (copies, transpose, concat / split, upsample forward, add, mul, scale, accumulate,
//   mul_backward, add_channel_bias, embedding forward): bit for bit;
// - GEMM-based ops at a reduced compute precision (set_precision: tf32, bf16, fp16; tensor cores on 16-bit inputs with
//   fp32 accumulation): 1e-2. With the CPU backend rounding exactly those operands to bf16 (and attention's P and dS),
//   these cases measure up to 2.5e-3 for GEMMs, linear layers and convolutions, and 6.2e-3 for attention (the explicit
//   scale 0.3 case, whose sharper softmax amplifies the score rounding).
// Outputs and input gradients start as NaN on both backends, so an op that reads or accumulates into what it must
// overwrite fails; parameter gradients start as random non-zero values, so one that overwrites what it must accumulate
// fails too.
#include <catch2/catch.hpp>
#include <cmath>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/backends/cuda.hpp"
#include "dreambooth/core/tensor.hpp"
#include "gpu_compare.hpp"

using namespace dreambooth;
using namespace dreambooth::gpu_testing;
using Gpu = CudaBackend;

namespace {

constexpr double kFp32 = 1e-5;
constexpr double kReduced = 1e-2;

std::int64_t i64(std::size_t n) { return static_cast<std::int64_t>(n); }
std::size_t sz(std::int64_t n) { return static_cast<std::size_t>(n); }

template <class Map>
auto& lookup(Map& map, const std::string& name) {
  const auto it = map.find(name);
  if (it == map.end()) throw std::logic_error("test error: no buffer named " + name);
  return it->second;
}

// The buffers of one op call, on the CPU (host vectors) and on the GPU (device tensors), from the same initial values.
// run(op) calls op(backend, p) once per backend, p("name") giving that backend's float* and p.ids("name") its int32 ids.
class Case {
 public:
  Case(Gpu& gpu, std::string op) : gpu_(&gpu), op_(std::move(op)) {}

  // A buffer with these values on both backends: an input, or a gradient that the op accumulates into.
  Case& set(const std::string& name, Host values) {
    REQUIRE(!values.empty());
    gpu_values_.insert_or_assign(name, Tensor<Gpu>::from_host(*gpu_, {i64(values.size())}, values));
    cpu_values_.insert_or_assign(name, std::move(values));
    return *this;
  }
  // A buffer the op must overwrite: NaN on both backends.
  Case& out(const std::string& name, std::size_t n) { return set(name, Host(n, kNaN)); }
  // Token ids: host memory for the CPU, device memory (allocate + copy_to_device) for the GPU.
  Case& ids(const std::string& name, const std::vector<std::int32_t>& ids) {
    REQUIRE(!ids.empty());
    auto t = Tensor<Gpu>::empty(*gpu_, {i64(ids.size())}, DType::I32);
    gpu_->copy_to_device(t.raw(), ids.data(), ids.size() * sizeof(std::int32_t));
    gpu_ids_.insert_or_assign(name, std::move(t));
    cpu_ids_.insert_or_assign(name, ids);
    return *this;
  }

  template <class F>
  void run(F&& op) {
    run(op, op);
  }
  // Different calls on the two backends (where the CPU reference does not offer what the GPU is tested for).
  template <class F, class G>
  void run(F&& cpu_op, G&& gpu_op) {
    cpu_op(cpu_, CpuPointers{this});
    gpu_op(*gpu_, GpuPointers{this});
    gpu_->synchronize();
  }

  Host cpu(const std::string& name) { return lookup(cpu_values_, name); }
  Host gpu(const std::string& name) { return lookup(gpu_values_, name).to_host(); }

  // Relative L2 of the GPU's buffer against the CPU's.
  void check(const std::string& name, double tolerance) {
    const auto c = compare(gpu(name), cpu(name));
    INFO(op_ << ": " << name << ": " << c << " (tolerance " << tolerance << ")");
    CHECK(c.within(tolerance));
  }
  void check_bitwise(const std::string& name) {
    const auto c = compare(gpu(name), cpu(name));
    INFO(op_ << ": " << name << " must equal the CPU's bit for bit: " << c);
    CHECK(c.bitwise_equal());
  }

 private:
  struct CpuPointers {
    Case* c;
    float* operator()(const std::string& name) const { return lookup(c->cpu_values_, name).data(); }
    const std::int32_t* ids(const std::string& name) const { return lookup(c->cpu_ids_, name).data(); }
  };
  struct GpuPointers {
    Case* c;
    float* operator()(const std::string& name) const { return lookup(c->gpu_values_, name).template data<float>(); }
    const std::int32_t* ids(const std::string& name) const { return lookup(c->gpu_ids_, name).template data<std::int32_t>(); }
  };

  Gpu* gpu_;
  CpuBackend cpu_;
  std::string op_;
  std::map<std::string, Host> cpu_values_;
  std::map<std::string, Tensor<Gpu>> gpu_values_;
  std::map<std::string, std::vector<std::int32_t>> cpu_ids_;
  std::map<std::string, Tensor<Gpu>> gpu_ids_;
};

// A precision name for messages.
const char* name_of(CudaPrecision p) { return to_string(p); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------------
// The comparison itself

TEST_CASE("the comparison helper catches a perturbed element, a NaN, an inf and a size mismatch", "[gpu][selftest]") {
  // A comparison that cannot fail proves nothing: the helpers every test below relies on must reject these.
  const Host x = normal(1000, 5);
  REQUIRE(compare(x, x).error == 0.0);
  REQUIRE(compare(x, x).bitwise_equal());
  Host y = x;
  y[123] += 0.01f;  // relative L2 ~ 0.01 / sqrt(1000) = 3e-4
  const auto perturbed = compare(y, x);
  INFO(perturbed);
  REQUIRE_FALSE(perturbed.within(kFp32));
  REQUIRE(perturbed.within(kReduced));
  REQUIRE_FALSE(perturbed.bitwise_equal());
  REQUIRE(perturbed.worst == 123);
  y = x;
  y[7] = std::nextafter(y[7], 10.0f);  // one ulp: within any tolerance, but not bit for bit
  REQUIRE(compare(y, x).within(kFp32));
  REQUIRE_FALSE(compare(y, x).bitwise_equal());
  y = x;
  y[999] = kNaN;
  REQUIRE_FALSE(compare(y, x).within(1e30));
  REQUIRE_FALSE(compare(x, y).within(1e30));  // NaN in the reference fails too
  y[999] = INFINITY;
  REQUIRE_FALSE(compare(y, x).within(1e30));
  REQUIRE_FALSE(compare(Host(x.begin(), x.end() - 1), x).within(1e30));
  REQUIRE_FALSE(compare(Host(x.begin(), x.end() - 1), x).bitwise_equal());
  REQUIRE(compare(Host(10, 0.0f), Host(10, 0.0f)).within(0.0));
  REQUIRE_FALSE(compare(Host(10, 1e-30f), Host(10, 0.0f)).within(1e30));  // anything against an all-zero reference
}

TEST_CASE("CUDA precision names parse and print", "[gpu][precision]") {
  REQUIRE(parse_cuda_precision("32") == CudaPrecision::fp32);
  REQUIRE(parse_cuda_precision("fp32") == CudaPrecision::fp32);
  REQUIRE(parse_cuda_precision("32-true") == CudaPrecision::fp32);
  REQUIRE(parse_cuda_precision("tf32") == CudaPrecision::tf32);
  REQUIRE(parse_cuda_precision("bf16") == CudaPrecision::bf16);
  REQUIRE(parse_cuda_precision("bf16-mixed") == CudaPrecision::bf16);
  REQUIRE(parse_cuda_precision("16") == CudaPrecision::fp16);
  REQUIRE(parse_cuda_precision("fp16") == CudaPrecision::fp16);
  REQUIRE(parse_cuda_precision("16-mixed") == CudaPrecision::fp16);
  REQUIRE_THROWS_WITH(parse_cuda_precision("fp8"), Catch::Contains("fp8"));
  for (const auto p : {CudaPrecision::fp32, CudaPrecision::tf32, CudaPrecision::bf16, CudaPrecision::fp16})
    REQUIRE(parse_cuda_precision(to_string(p)) == p);
  Gpu gpu;
  INFO(gpu.device_description());
  REQUIRE(gpu.precision() == CudaPrecision::fp32);  // the default: exact parity with the CPU
  gpu.set_precision(CudaPrecision::bf16);
  REQUIRE(gpu.precision() == CudaPrecision::bf16);
  Gpu fp16(CudaOptions{.precision = CudaPrecision::fp16});
  REQUIRE(fp16.precision() == CudaPrecision::fp16);
}

// ---------------------------------------------------------------------------------------------------------------------
// Memory and elementwise ops

TEST_CASE("CUDA memory: copies, fill, and the CPU's random streams at unaligned starts and odd counts", "[gpu][memory]") {
  Gpu gpu;
  const std::size_t n = 10007;
  const Host x = normal(n, 1);
  auto t = Tensor<Gpu>::from_host(gpu, {i64(n)}, x);
  REQUIRE(compare(t.to_host(), x).bitwise_equal());

  // copy_device between offsets, fill of a sub-range
  auto u = Tensor<Gpu>::zeros(gpu, {i64(n)});
  gpu.copy_device(u.data<float>() + 3, t.data<float>() + 5, (n - 8) * sizeof(float));
  gpu.fill(u.data<float>() + 1, 2.5f, 100);
  Host expected(n, 0.0f);
  std::copy(x.begin() + 5, x.end() - 3, expected.begin() + 3);
  std::fill_n(expected.begin() + 1, 100, 2.5f);
  {
    const auto c = compare(u.to_host(), expected);
    INFO("copy_device + fill: " << c);
    REQUIRE(c.bitwise_equal());
  }

  // raw allocate / copy_to_device / copy_to_host / deallocate
  void* raw = gpu.allocate(777);
  std::vector<unsigned char> bytes(777), back(777);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 37 + 11);
  gpu.copy_to_device(raw, bytes.data(), bytes.size());
  gpu.copy_to_host(back.data(), raw, back.size());
  gpu.deallocate(raw, 777);
  REQUIRE(back == bytes);

  // Element i of stream (seed, offset) is the same wherever a fill starts: an odd count into an unaligned pointer.
  Host cpu_values(n, 0.0f);
  gpu.fill(u.data<float>(), 0.0f, n);
  gpu.fill_normal(u.data<float>() + 1, n - 2, 77, 3, -1.0f, 0.5f);
  CpuBackend().fill_normal(cpu_values.data() + 1, n - 2, 77, 3, -1.0f, 0.5f);
  {
    const auto c = compare(u.to_host(), cpu_values);
    INFO("fill_normal at an unaligned start: " << c);
    REQUIRE(c.within(1e-7));  // Box-Muller in double rounded once: at most a last-bit difference
  }
  gpu.fill_uniform(u.data<float>() + 3, 5, 12, 1, 2.0f, 3.0f);
  CpuBackend().fill_uniform(cpu_values.data() + 3, 5, 12, 1, 2.0f, 3.0f);
  {
    const auto c = compare(u.to_host(), cpu_values);
    INFO("fill_uniform of 5 values at an unaligned start: " << c);
    REQUIRE(c.within(1e-7));
    const Host got = u.to_host();
    REQUIRE(compare(Host(got.begin() + 3, got.begin() + 8), Host(cpu_values.begin() + 3, cpu_values.begin() + 8)).bitwise_equal());
  }
}

TEST_CASE("CUDA elementwise ops equal the CPU's bit for bit, in place and with null gradients", "[gpu][elementwise]") {
  Gpu gpu;
  for (const std::size_t n : {std::size_t(1), std::size_t(4099), (std::size_t(1) << 20) + 3}) {
    INFO("n = " << n);
    Case c(gpu, "elementwise");
    c.set("a", normal(n, 1)).set("b", normal(n, 2)).set("g", normal(n, 3)).set("acc", normal(n, 4)).set("inplace", normal(n, 5));
    c.out("add", n).out("mul", n).out("scale", n).out("da", n).out("db", n).out("da_only", n).out("db_only", n);
    c.run([&](auto& b, auto p) {
      b.add(p("add"), p("a"), p("b"), n);
      b.mul(p("mul"), p("a"), p("b"), n);
      b.scale(p("scale"), p("a"), -0.3f, n);
      b.accumulate(p("acc"), p("b"), n);
      b.scale(p("inplace"), p("inplace"), 1.7f, n);  // in place, as the training step scales its gradients
      b.add(p("inplace"), p("inplace"), p("a"), n);
      b.mul(p("inplace"), p("inplace"), p("b"), n);
      b.mul_backward(p("da"), p("db"), p("g"), p("a"), p("b"), n);
      b.mul_backward(p("da_only"), nullptr, p("g"), p("a"), p("b"), n);
      b.mul_backward(nullptr, p("db_only"), p("g"), p("a"), p("b"), n);
    });
    for (const auto* name : {"add", "mul", "scale", "acc", "inplace", "da", "db", "da_only", "db_only"}) c.check_bitwise(name);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// GEMM

namespace {

// A [rows, cols] matrix with leading dimension ld >= cols, `batch` of them `stride` apart; gap elements (columns
// >= cols, and between matrices) are `gap`.
Host matrices(std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t stride, std::int64_t batch, std::uint64_t seed, float gap) {
  Host m(sz((batch - 1) * stride + rows * ld), gap);
  const Host values = normal(sz(batch * rows * cols), seed);
  for (std::int64_t i = 0; i < batch; ++i)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) m[sz(i * stride + r * ld + c)] = values[sz((i * rows + r) * cols + c)];
  return m;
}
// The [rows, cols] parts of `batch` matrices, packed.
Host packed(const Host& m, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t stride, std::int64_t batch) {
  Host out;
  for (std::int64_t i = 0; i < batch; ++i)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) out.push_back(m[sz(i * stride + r * ld + c)]);
  return out;
}
// The gap elements of `batch` [rows, cols] matrices, which no GEMM may write.
Host gaps(const Host& m, std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t stride, std::int64_t batch) {
  std::vector<bool> inside(m.size(), false);
  for (std::int64_t i = 0; i < batch; ++i)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) inside[sz(i * stride + r * ld + c)] = true;
  Host out;
  for (std::size_t i = 0; i < m.size(); ++i)
    if (!inside[i]) out.push_back(m[i]);
  return out;
}

struct GemmShape {
  std::int64_t m, n, k;
};

// C = alpha op(A) op(B) + beta C (batched when batch > 1, through gemm_strided_batched; the CPU loops over the batch).
// A and B carry NaN in their gaps (never to be read), C a sentinel (never to be written); with beta == 0, C starts as NaN
// (BLAS semantics: C is not read).
void check_gemm(Gpu& gpu, bool ta, bool tb, GemmShape s, float alpha, float beta, std::int64_t pad, std::int64_t batch, double tolerance,
                bool broadcast_b = false) {
  const auto [m, n, k] = s;
  INFO("gemm trans_a " << ta << " trans_b " << tb << " m " << m << " n " << n << " k " << k << " alpha " << alpha << " beta " << beta << " pad "
                       << pad << " batch " << batch << (broadcast_b ? " (B shared: stride 0)" : "") << " precision " << name_of(gpu.precision()));
  const auto rows_a = ta ? k : m, cols_a = ta ? m : k, rows_b = tb ? n : k, cols_b = tb ? k : n;
  const auto lda = cols_a + pad, ldb = cols_b + pad, ldc = n + pad;
  const auto stride_a = rows_a * lda + 3 * pad, stride_b = broadcast_b ? 0 : rows_b * ldb + pad, stride_c = m * ldc + 2 * pad;
  const Host A = matrices(rows_a, cols_a, lda, stride_a, batch, 10 + 4 * ta + 2 * tb, kNaN);
  const Host B = matrices(rows_b, cols_b, ldb, stride_b, broadcast_b ? 1 : batch, 20 + 4 * ta + 2 * tb, kNaN);
  Host C0 = matrices(m, n, ldc, stride_c, batch, 30 + 4 * ta + 2 * tb, 7.0f);
  if (beta == 0.0f)
    for (std::int64_t i = 0; i < batch; ++i)
      for (std::int64_t r = 0; r < m; ++r) std::fill_n(C0.begin() + i * stride_c + r * ldc, n, kNaN);

  Host expected = C0;
  CpuBackend cpu;
  for (std::int64_t i = 0; i < batch; ++i)
    cpu.gemm(ta, tb, m, n, k, alpha, A.data() + i * stride_a, lda, B.data() + i * stride_b, ldb, beta, expected.data() + i * stride_c, ldc);

  auto dA = Tensor<Gpu>::from_host(gpu, {i64(A.size())}, A), dB = Tensor<Gpu>::from_host(gpu, {i64(B.size())}, B);
  auto dC = Tensor<Gpu>::from_host(gpu, {i64(C0.size())}, C0);
  if (batch == 1 && !broadcast_b)
    gpu.gemm(ta, tb, m, n, k, alpha, dA.data<float>(), lda, dB.data<float>(), ldb, beta, dC.data<float>(), ldc);
  else
    gpu.gemm_strided_batched(ta, tb, m, n, k, alpha, dA.data<float>(), lda, stride_a, dB.data<float>(), ldb, stride_b, beta, dC.data<float>(), ldc,
                             stride_c, batch);
  const Host got = dC.to_host();
  const auto c = compare(packed(got, m, n, ldc, stride_c, batch), packed(expected, m, n, ldc, stride_c, batch));
  INFO("C: " << c << " (tolerance " << tolerance << ")");
  CHECK(c.within(tolerance));
  const auto g = compare(gaps(got, m, n, ldc, stride_c, batch), gaps(C0, m, n, ldc, stride_c, batch));
  INFO("elements of C outside the [m, n] matrices (ldc / stride_c gaps) must be left alone: " << g);
  CHECK(g.bitwise_equal());
}

const std::vector<GemmShape> kGemmShapes = {{67, 45, 129}, {256, 200, 1024}, {1, 77, 300}, {300, 1, 64}};

}  // namespace

TEST_CASE("CUDA GEMM equals the CPU's: four transpose combinations, padded leading dimensions, alpha and beta", "[gpu][gemm]") {
  Gpu gpu;
  for (const auto& s : kGemmShapes)
    for (int variant = 0; variant < 4; ++variant) {
      const bool ta = variant & 1, tb = variant & 2;
      check_gemm(gpu, ta, tb, s, 0.7f, -0.3f, 5, 1, kFp32);
      check_gemm(gpu, ta, tb, s, 1.0f, 1.0f, 0, 1, kFp32);
      check_gemm(gpu, ta, tb, s, -1.3f, 0.0f, 3, 1, kFp32);  // beta 0: C is NaN and must not be read
    }
}

TEST_CASE("CUDA strided batched GEMM equals a loop of CPU GEMMs", "[gpu][gemm]") {
  Gpu gpu;
  for (int variant = 0; variant < 4; ++variant) {
    const bool ta = variant & 1, tb = variant & 2;
    check_gemm(gpu, ta, tb, {40, 77, 64}, 0.125f, 0.0f, 0, 5, kFp32);
    check_gemm(gpu, ta, tb, {33, 50, 70}, 0.6f, 0.4f, 4, 3, kFp32);
    check_gemm(gpu, ta, tb, {33, 50, 70}, 1.0f, 0.0f, 2, 4, kFp32, /*broadcast_b=*/true);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Linear

namespace {

struct LinearCase {
  nn::LinearDims d;
  bool bias;
};

// Forward, then backward three ways: every gradient; parameter gradients only (din null); din only (dweight / dbias null).
void check_linear(Gpu& gpu, const LinearCase& lc, double tolerance) {
  const auto& d = lc.d;
  INFO("linear rows " << d.rows << " in " << d.in_features << " out " << d.out_features << (lc.bias ? " with bias" : " without bias")
                      << ", precision " << name_of(gpu.precision()));
  const auto nin = sz(d.rows * d.in_features), nout = sz(d.rows * d.out_features), nw = sz(d.out_features * d.in_features);
  Case c(gpu, "linear");
  c.set("in", normal(nin, 100)).set("weight", normal(nw, 101, 0.05f)).set("bias", normal(sz(d.out_features), 102)).set("dout", normal(nout, 103));
  c.out("out", nout).out("din", nin).out("din_only", nin);
  c.set("dweight", normal(nw, 104)).set("dbias", normal(sz(d.out_features), 105));  // accumulated onto
  c.set("dweight_only", normal(nw, 106)).set("dbias_only", normal(sz(d.out_features), 107));
  const bool bias = lc.bias;
  c.run([&](auto& b, auto p) {
    b.linear_forward(p("out"), p("in"), p("weight"), bias ? p("bias") : nullptr, d);
    b.linear_backward(p("din"), p("dweight"), bias ? p("dbias") : nullptr, p("dout"), p("in"), p("weight"), d);
    b.linear_backward(nullptr, p("dweight_only"), p("dbias_only"), p("dout"), p("in"), p("weight"), d);
    b.linear_backward(p("din_only"), nullptr, nullptr, p("dout"), p("in"), p("weight"), d);
  });
  for (const auto* name : {"out", "din", "dweight", "dweight_only", "dbias_only", "din_only"}) c.check(name, tolerance);
  if (bias)
    c.check("dbias", tolerance);
  else
    c.check_bitwise("dbias");  // never passed: still its initial value
}

const std::vector<LinearCase> kLinearCases = {{{154, 320, 640}, true}, {{1000, 96, 130}, false}, {{1, 768, 320}, true}, {{4096, 40, 40}, true}};

}  // namespace

TEST_CASE("CUDA linear forward / backward equal the CPU's (null bias, null gradients, accumulation)", "[gpu][linear]") {
  Gpu gpu;
  for (const auto& lc : kLinearCases) check_linear(gpu, lc, kFp32);
}

// ---------------------------------------------------------------------------------------------------------------------
// Convolution

namespace {

struct ConvCase {
  const char* what;
  nn::Conv2dDims d;
  bool bias;
};

void check_conv(Gpu& gpu, const ConvCase& cc, double tolerance) {
  const auto& d = cc.d;
  INFO("conv2d " << cc.what << ": N " << d.batch << " C " << d.in_channels << " H " << d.height << " W " << d.width << " K " << d.out_channels
                 << " kernel " << d.kernel_h << "x" << d.kernel_w << " stride " << d.stride_h << "x" << d.stride_w << " pad " << d.pad_h << ","
                 << d.pad_w << "," << d.padding_bottom() << "," << d.padding_right() << (cc.bias ? " with bias" : " without bias") << ", precision "
                 << name_of(gpu.precision()));
  const auto nin = sz(d.batch * d.in_channels * d.height * d.width), nout = sz(d.batch * d.out_channels * d.out_height() * d.out_width());
  const auto nw = sz(d.out_channels * d.in_channels * d.kernel_h * d.kernel_w), nb = sz(d.out_channels);
  const float w_scale = 1.0f / std::sqrt(static_cast<float>(d.in_channels * d.kernel_h * d.kernel_w));
  Case c(gpu, "conv2d");
  c.set("in", normal(nin, 200)).set("weight", normal(nw, 201, w_scale)).set("bias", normal(nb, 202)).set("dout", normal(nout, 203));
  c.out("out", nout).out("din", nin).out("din_only", nin);
  c.set("dweight", normal(nw, 204)).set("dbias", normal(nb, 205)).set("dweight_only", normal(nw, 206)).set("dbias_only", normal(nb, 207));
  const bool bias = cc.bias;
  c.run([&](auto& b, auto p) {
    b.conv2d_forward(p("out"), p("in"), p("weight"), bias ? p("bias") : nullptr, d);
    b.conv2d_backward(p("din"), p("dweight"), bias ? p("dbias") : nullptr, p("dout"), p("in"), p("weight"), d);
    b.conv2d_backward(nullptr, p("dweight_only"), p("dbias_only"), p("dout"), p("in"), p("weight"), d);  // an input that needs no gradient
    b.conv2d_backward(p("din_only"), nullptr, nullptr, p("dout"), p("in"), p("weight"), d);              // frozen weights
  });
  for (const auto* name : {"out", "din", "dweight", "dweight_only", "dbias_only", "din_only"}) c.check(name, tolerance);
  if (bias)
    c.check("dbias", tolerance);
  else
    c.check_bitwise("dbias");  // never passed: still its initial value
}

nn::Conv2dDims conv(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t K, std::int64_t R, std::int64_t stride,
                    std::int64_t pad, std::int64_t pad_bottom = -1) {
  return {N, C, H, W, K, R, R, stride, stride, pad, pad, pad_bottom, pad_bottom};
}

const std::vector<ConvCase> kConvCases = {
    {"1x1", conv(2, 64, 32, 32, 32, 1, 1, 0), true},
    {"1x1 non-square, no bias", conv(2, 48, 12, 20, 96, 1, 1, 0), false},
    {"3x3 padding 1", conv(2, 64, 32, 32, 64, 3, 1, 1), true},
    {"3x3 padding 1, non-square, no bias", conv(2, 32, 24, 40, 48, 3, 1, 1), false},
    {"3x3 padding 1, UNet conv_in (4 channels in)", conv(2, 4, 16, 24, 32, 3, 1, 1), true},
    {"3x3 padding 1, conv_out (3 channels out)", conv(2, 32, 32, 32, 3, 3, 1, 1), true},
    {"3x3 padding 1, small image, many channels", conv(2, 128, 4, 4, 128, 3, 1, 1), true},
    {"3x3 stride 2 padding 1 (UNet downsampler)", conv(2, 32, 16, 16, 32, 3, 2, 1), true},
    {"3x3 stride 2, padding (0, 0, 1, 1) (VAE downsampler)", conv(2, 64, 32, 32, 64, 3, 2, 0, 1), true},
    {"3x3 stride 2, padding (0, 0, 1, 1), non-square odd", conv(2, 16, 17, 26, 24, 3, 2, 0, 1), true},
    {"3x3 no padding, non-square", conv(1, 8, 9, 14, 12, 3, 1, 0), false},
};

}  // namespace

TEST_CASE("CUDA conv2d forward / backward equal the CPU's", "[gpu][conv2d]") {
  Gpu gpu;
  for (const auto& cc : kConvCases) check_conv(gpu, cc, kFp32);
}

// ---------------------------------------------------------------------------------------------------------------------
// Normalisation

namespace {
// One normalization op checked against the CPU: in[n] (normal, `mean`, `stddev`), gamma / beta[affine], dout[n] from
// `seed`; forward writes out, mean / rstd[stats]; backward(b, p, din, dgamma, dbeta) runs three times: every gradient,
// the input's alone, the parameters' alone (into gradients pre-filled, as they accumulate).
template <class Forward, class Backward>
void check_norm(Gpu& gpu, const char* op, std::size_t n, std::size_t affine, std::size_t stats, std::uint64_t seed, float mean, float stddev,
                Forward forward, Backward backward) {
  Case c(gpu, op);
  c.set("in", normal(n, seed, stddev, mean)).set("gamma", normal(affine, seed + 1, 0.5f, 1.0f)).set("beta", normal(affine, seed + 2));
  c.set("dout", normal(n, seed + 3));
  c.out("out", n).out("mean", stats).out("rstd", stats).out("din", n).out("din_only", n);
  c.set("dgamma", normal(affine, seed + 4)).set("dbeta", normal(affine, seed + 5));
  c.set("dgamma_only", normal(affine, seed + 6)).set("dbeta_only", normal(affine, seed + 7));
  c.run([&](auto& b, auto p) {
    forward(b, p);
    backward(b, p, p("din"), p("dgamma"), p("dbeta"));
    backward(b, p, p("din_only"), nullptr, nullptr);
    backward(b, p, nullptr, p("dgamma_only"), p("dbeta_only"));
  });
  for (const auto* name : {"out", "mean", "rstd", "din", "dgamma", "dbeta", "din_only", "dgamma_only", "dbeta_only"}) c.check(name, kFp32);
}
}  // namespace

TEST_CASE("CUDA group norm forward / backward equal the CPU's (mean, rstd, accumulated affine gradients)", "[gpu][norm]") {
  Gpu gpu;
  struct GroupCase {
    nn::GroupNormDims d;
    float mean, stddev;
  };
  for (const auto& [d, mean, stddev] : {GroupCase{{2, 64, 32 * 32, 32, 1e-5}, 0.0f, 1.0f}, GroupCase{{2, 320, 8 * 8, 32, 1e-6}, 5.0f, 2.0f},
                                        GroupCase{{1, 32, 16 * 24, 32, 1e-5}, -1.0f, 0.5f}, GroupCase{{3, 12, 7, 4, 1e-5}, 0.0f, 3.0f},
                                        GroupCase{{2, 8, 4096, 1, 1e-6}, 1.0f, 1.0f}}) {
    INFO("group norm N " << d.batch << " C " << d.channels << " S " << d.spatial << " G " << d.groups << " eps " << d.eps << ", input mean " << mean
                         << " stddev " << stddev);
    check_norm(
        gpu, "group_norm", sz(d.batch * d.channels * d.spatial), sz(d.channels), sz(d.batch * d.groups), 300, mean, stddev,
        [&](auto& b, auto p) { b.group_norm_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d); },
        [&](auto& b, auto p, auto din, auto dgamma, auto dbeta) {
          b.group_norm_backward(din, dgamma, dbeta, p("dout"), p("in"), p("mean"), p("rstd"), p("gamma"), d);
        });
  }
}

TEST_CASE("CUDA fused group norm + SiLU forward / backward equal the CPU's", "[gpu][norm]") {
  Gpu gpu;
  for (const nn::GroupNormDims d :
       {nn::GroupNormDims{2, 64, 32 * 32, 32, 1e-5}, nn::GroupNormDims{2, 320, 8 * 8, 32, 1e-6}, nn::GroupNormDims{3, 12, 7, 4, 1e-5}}) {
    INFO("group norm + SiLU N " << d.batch << " C " << d.channels << " S " << d.spatial << " G " << d.groups);
    check_norm(
        gpu, "group_norm_silu", sz(d.batch * d.channels * d.spatial), sz(d.channels), sz(d.batch * d.groups), 310, 0.5f, 2.0f,
        [&](auto& b, auto p) { b.group_norm_silu_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d); },
        [&](auto& b, auto p, auto din, auto dgamma, auto dbeta) {
          b.group_norm_silu_backward(din, dgamma, dbeta, p("dout"), p("in"), p("mean"), p("rstd"), p("gamma"), p("beta"), d);
        });
  }
}

TEST_CASE("CUDA layer norm forward / backward equal the CPU's (mean, rstd, accumulated affine gradients)", "[gpu][norm]") {
  Gpu gpu;
  struct LayerCase {
    nn::LayerNormDims d;
    float mean, stddev;
  };
  for (const auto& [d, mean, stddev] : {LayerCase{{154, 768, 1e-5}, 0.0f, 1.0f}, LayerCase{{2048, 320, 1e-5}, 3.0f, 2.0f},
                                        LayerCase{{5, 37, 1e-6}, -0.5f, 0.1f}, LayerCase{{1, 4096, 1e-5}, 0.0f, 1.0f}}) {
    INFO("layer norm rows " << d.rows << " dim " << d.dim << " eps " << d.eps << ", input mean " << mean << " stddev " << stddev);
    check_norm(
        gpu, "layer_norm", sz(d.rows * d.dim), sz(d.dim), sz(d.rows), 400, mean, stddev,
        [&](auto& b, auto p) { b.layer_norm_forward(p("out"), p("mean"), p("rstd"), p("in"), p("gamma"), p("beta"), d); },
        [&](auto& b, auto p, auto din, auto dgamma, auto dbeta) {
          b.layer_norm_backward(din, dgamma, dbeta, p("dout"), p("in"), p("mean"), p("rstd"), p("gamma"), d);
        });
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Activations and softmax

TEST_CASE("CUDA silu / gelu / quick_gelu forward / backward equal the CPU's, tails included", "[gpu][activation]") {
  Gpu gpu;
  const std::size_t n = 100003;
  Host in = normal(n, 500, 3.0f);
  const float tails[] = {-90.0f, -30.0f, -10.0f, -5.0f, -1e-3f, 0.0f, 1e-3f, 5.0f, 10.0f, 30.0f, 90.0f};
  for (std::size_t i = 0; i < std::size(tails); ++i) in[i * 997] = tails[i];
  Case c(gpu, "activations");
  c.set("in", in).set("dout", normal(n, 501));
  for (const auto* name : {"silu", "dsilu", "gelu", "dgelu", "quick_gelu", "dquick_gelu"}) c.out(name, n);
  c.run([&](auto& b, auto p) {
    b.silu_forward(p("silu"), p("in"), n);
    b.silu_backward(p("dsilu"), p("dout"), p("in"), n);
    b.gelu_forward(p("gelu"), p("in"), n);
    b.gelu_backward(p("dgelu"), p("dout"), p("in"), n);
    b.quick_gelu_forward(p("quick_gelu"), p("in"), n);
    b.quick_gelu_backward(p("dquick_gelu"), p("dout"), p("in"), n);
  });
  for (const auto* name : {"silu", "dsilu", "gelu", "dgelu", "quick_gelu", "dquick_gelu"}) c.check(name, kFp32);
}

TEST_CASE("CUDA GEGLU and softmax forward / backward equal the CPU's", "[gpu][activation]") {
  Gpu gpu;
  for (const auto& [rows, dim] : std::vector<std::pair<std::int64_t, std::int64_t>>{{154, 640}, {7, 33}, {4096, 40}}) {
    INFO("geglu rows " << rows << " dim " << dim);
    const auto nin = sz(rows * 2 * dim), nout = sz(rows * dim);
    Case c(gpu, "geglu");
    c.set("in", normal(nin, 600, 2.0f)).set("dout", normal(nout, 601)).out("out", nout).out("din", nin);
    c.run([&](auto& b, auto p) {
      b.geglu_forward(p("out"), p("in"), rows, dim);
      b.geglu_backward(p("din"), p("dout"), p("in"), rows, dim);
    });
    c.check("out", kFp32);
    c.check("din", kFp32);
  }
  for (const auto& [rows, dim, scale] : std::vector<std::tuple<std::int64_t, std::int64_t, float>>{
           {300, 77, 5.0f}, {64, 1100, 3.0f}, {3, 4096, 1.0f}, {1000, 2, 1.0f}, {10, 8, 30.0f}}) {
    INFO("softmax rows " << rows << " dim " << dim << ", inputs of stddev " << scale);
    const auto n = sz(rows * dim);
    Case c(gpu, "softmax");
    c.set("in", normal(n, 610, scale)).set("dout", normal(n, 611)).out("out", n).out("din", n);
    c.run([&](auto& b, auto p) {
      b.softmax_forward(p("out"), p("in"), rows, dim);
      b.softmax_backward(p("din"), p("dout"), p("out"), rows, dim);
    });
    c.check("out", kFp32);
    // Inputs of stddev 30 make rows nearly one-hot: din = y (g - sum y g) cancels to ~e^-30 of |g| while the float dot
    // keeps an ulp of |g|, so even the CPU is ~7e-5 from float64 there; the other cases are ~1e-6.
    c.check("din", scale > 10.0f ? 1e-3 : kFp32);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Attention

namespace {

struct AttentionCase {
  const char* what;
  nn::AttentionDims d;
};

nn::AttentionDims attn(std::int64_t N, std::int64_t heads, std::int64_t tq, std::int64_t tk, std::int64_t head_dim, bool causal = false,
                       double scale = 0.0) {
  return {N, heads, tq, tk, head_dim, causal, scale};
}

const std::vector<AttentionCase> kAttentionCases = {
    {"self, 1100 tokens (several query and key tiles), head_dim 64", attn(1, 2, 1100, 1100, 64)},
    {"cross, 1100 queries over 77 keys, 8 heads, batch 2, head_dim 40", attn(2, 8, 1100, 77, 40)},
    {"cross, 257 queries over 77 keys, head_dim 80", attn(2, 2, 257, 77, 80)},
    {"self, 8 heads, batch 2, head_dim 64", attn(2, 8, 256, 256, 64)},
    {"causal (CLIP), 77 tokens, head_dim 64", attn(2, 4, 77, 77, 64, true)},
    {"causal, 300 tokens, head_dim 40", attn(1, 2, 300, 300, 40, true)},
    {"explicit scale 0.3, head_dim 80", attn(1, 5, 300, 130, 80, false, 0.3)},
    {"one query over 77 keys", attn(2, 3, 1, 77, 64)},
    {"two keys", attn(1, 2, 70, 2, 40)},
    {"VAE mid-block: one head of dimension 512", attn(1, 1, 1024, 1024, 512)},
    {"odd head_dim 4 (the tiny models)", attn(2, 2, 256, 7, 4)},
};

// Forward (out and the log-sum-exp), then backward: every gradient, then on the GPU dq only, then dk / dv only (null
// gradients skipped, as backend.hpp has it; the CPU's attention_backward writes all three, so the references for those
// are its full backward).
void check_attention(Gpu& gpu, const AttentionCase& ac, double tolerance, bool partial_gradients = true) {
  const auto& d = ac.d;
  INFO("attention " << ac.what << ": N " << d.batch << " heads " << d.heads << " q_len " << d.q_len << " kv_len " << d.kv_len << " head_dim "
                    << d.head_dim << (d.causal ? " causal" : "") << " scale " << d.effective_scale() << ", precision " << name_of(gpu.precision()));
  const auto width = d.heads * d.head_dim;
  const auto nq = sz(d.batch * d.q_len * width), nk = sz(d.batch * d.kv_len * width), nl = sz(d.batch * d.heads * d.q_len);
  Case c(gpu, "attention");
  c.set("q", normal(nq, 700)).set("k", normal(nk, 701)).set("v", normal(nk, 702)).set("dout", normal(nq, 703));
  c.out("out", nq).out("lse", nl).out("dq", nq).out("dk", nk).out("dv", nk);
  c.out("dq_only", nq).out("dk_only", nk).out("dv_only", nk);
  c.run(
      [&](CpuBackend& b, auto p) {
        b.attention_forward(p("out"), p("lse"), p("q"), p("k"), p("v"), d);
        b.attention_backward(p("dq"), p("dk"), p("dv"), p("dout"), p("q"), p("k"), p("v"), p("out"), p("lse"), d);
        b.attention_backward(p("dq_only"), p("dk_only"), p("dv_only"), p("dout"), p("q"), p("k"), p("v"), p("out"), p("lse"), d);
      },
      [&](Gpu& b, auto p) {
        b.attention_forward(p("out"), p("lse"), p("q"), p("k"), p("v"), d);
        b.attention_backward(p("dq"), p("dk"), p("dv"), p("dout"), p("q"), p("k"), p("v"), p("out"), p("lse"), d);
        if (partial_gradients) {
          b.attention_backward(p("dq_only"), nullptr, nullptr, p("dout"), p("q"), p("k"), p("v"), p("out"), p("lse"), d);
          b.attention_backward(nullptr, p("dk_only"), p("dv_only"), p("dout"), p("q"), p("k"), p("v"), p("out"), p("lse"), d);
        }
      });
  for (const auto* name : {"out", "lse", "dq", "dk", "dv"}) c.check(name, tolerance);
  if (partial_gradients)
    for (const auto* name : {"dq_only", "dk_only", "dv_only"}) c.check(name, tolerance);
}

}  // namespace

TEST_CASE("CUDA attention forward / backward equal the CPU's (self, cross, causal, scale, head dims, lse)", "[gpu][attention]") {
  Gpu gpu;
  for (const auto& ac : kAttentionCases) check_attention(gpu, ac, kFp32);
}

TEST_CASE("CUDA attention in small score tiles (many chunks per head) equals the CPU's", "[gpu][attention]") {
  // 300,000 bytes of scores per chunk: 68 query rows at 1100 keys, 73 at 1024; a chunk boundary inside every head.
  Gpu gpu(CudaOptions{.attention_tile_bytes = 300000});
  for (const auto& ac : kAttentionCases) check_attention(gpu, ac, kFp32, /*partial_gradients=*/false);
}

// ---------------------------------------------------------------------------------------------------------------------
// Data movement, embeddings, loss, timestep embedding

TEST_CASE("CUDA transpose, channel bias / sum, upsample, concat / split equal the CPU's", "[gpu][tensor_ops]") {
  Gpu gpu;
  for (const auto& [batch, rows, cols] :
       std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{{3, 77, 130}, {2, 1024, 320}, {1, 1, 5}, {4, 33, 1}}) {
    INFO("transpose batch " << batch << " rows " << rows << " cols " << cols);
    const auto n = sz(batch * rows * cols);
    Case c(gpu, "transpose");
    c.set("in", normal(n, 800)).out("out", n).out("back", n);
    c.run([&](auto& b, auto p) {
      b.transpose(p("out"), p("in"), batch, rows, cols);
      b.transpose(p("back"), p("out"), batch, cols, rows);
    });
    c.check_bitwise("out");
    c.check_bitwise("back");
    CHECK(compare(c.gpu("back"), c.cpu("in")).bitwise_equal());
  }
  for (const auto& [N, C, S] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{{2, 64, 1000}, {2, 320, 4096}, {3, 5, 1}}) {
    INFO("channel ops N " << N << " C " << C << " spatial " << S);
    const auto n = sz(N * C * S), nc = sz(N * C);
    Case c(gpu, "channel ops");
    c.set("in", normal(n, 810)).set("bias", normal(nc, 811)).set("inplace", normal(n, 812)).out("out", n).out("sums", nc);
    c.run([&](auto& b, auto p) {
      b.add_channel_bias(p("out"), p("in"), p("bias"), N, C, S);
      b.add_channel_bias(p("inplace"), p("inplace"), p("bias"), N, C, S);
      b.channel_sum(p("sums"), p("in"), N, C, S);
    });
    c.check_bitwise("out");
    c.check_bitwise("inplace");
    c.check("sums", kFp32);
  }
  for (const auto& [planes, H, W] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{{128, 16, 24}, {3, 1, 1}, {640, 8, 8}}) {
    INFO("upsample planes " << planes << " H " << H << " W " << W);
    const auto n = sz(planes * H * W);
    Case c(gpu, "upsample_nearest2x");
    c.set("in", normal(n, 820)).set("dout", normal(4 * n, 821)).out("out", 4 * n).out("din", n);
    c.run([&](auto& b, auto p) {
      b.upsample_nearest2x_forward(p("out"), p("in"), planes, H, W);
      b.upsample_nearest2x_backward(p("din"), p("dout"), planes, H, W);
    });
    c.check_bitwise("out");
    c.check("din", kFp32);
  }
  for (const auto& [outer, ca, cb, inner] :
       std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>>{{2, 64, 32, 384}, {2, 1, 3, 1}, {154, 320, 320, 1}}) {
    INFO("concat / split outer " << outer << " ca " << ca << " cb " << cb << " inner " << inner);
    const auto na = sz(outer * ca * inner), nb = sz(outer * cb * inner);
    Case c(gpu, "concat / split");
    c.set("a", normal(na, 830)).set("b", normal(nb, 831)).set("in", normal(na + nb, 832)).out("out", na + nb);
    c.out("sa", na).out("sb", nb).out("sa_only", na).out("sb_only", nb);
    c.run([&](auto& b, auto p) {
      b.concat_channels(p("out"), p("a"), p("b"), outer, ca, cb, inner);
      b.split_channels(p("sa"), p("sb"), p("in"), outer, ca, cb, inner);
      b.split_channels(p("sa_only"), nullptr, p("in"), outer, ca, cb, inner);
      b.split_channels(nullptr, p("sb_only"), p("in"), outer, ca, cb, inner);
    });
    for (const auto* name : {"out", "sa", "sb", "sa_only", "sb_only"}) c.check_bitwise(name);
  }
}

TEST_CASE("CUDA embedding forward / backward equal the CPU's (device ids, repeated ids, null tables)", "[gpu][embedding]") {
  Gpu gpu;
  const std::int64_t batch = 2, seq = 77, vocab = 1000, dim = 80, max_positions = 80;
  // a prompt, then end-of-text repeated as padding (the same id 60+ times per row), the first and last ids included
  std::vector<std::int32_t> ids;
  for (std::int64_t n = 0; n < batch; ++n)
    for (std::int64_t t = 0; t < seq; ++t)
      ids.push_back(t == 0    ? 0
                    : t < 12  ? static_cast<std::int32_t>((n * 131 + t * 37) % vocab)
                    : t == 12 ? 998
                              : static_cast<std::int32_t>(vocab - 1));
  const auto nout = sz(batch * seq * dim), ntable = sz(vocab * dim), npos = sz(max_positions * dim);
  Case c(gpu, "embedding");
  c.ids("ids", ids).set("tokens", normal(ntable, 900)).set("positions", normal(npos, 901)).set("dout", normal(nout, 902));
  c.out("out", nout).out("out_tokens_only", nout);
  c.set("dtokens", normal(ntable, 903)).set("dpositions", normal(npos, 904)).set("dtokens_only", normal(ntable, 905));
  c.set("dpositions_only", normal(npos, 906));
  c.run([&](auto& b, auto p) {
    b.embedding_forward(p("out"), p.ids("ids"), p("tokens"), p("positions"), batch, seq, vocab, dim);
    b.embedding_forward(p("out_tokens_only"), p.ids("ids"), p("tokens"), nullptr, batch, seq, vocab, dim);
    b.embedding_backward(p("dtokens"), p("dpositions"), p("dout"), p.ids("ids"), batch, seq, vocab, dim);
    b.embedding_backward(p("dtokens_only"), nullptr, p("dout"), p.ids("ids"), batch, seq, vocab, dim);
    b.embedding_backward(nullptr, p("dpositions_only"), p("dout"), p.ids("ids"), batch, seq, vocab, dim);
  });
  c.check_bitwise("out");
  c.check_bitwise("out_tokens_only");
  for (const auto* name : {"dtokens", "dpositions", "dtokens_only", "dpositions_only"}) c.check(name, kFp32);
}

TEST_CASE("CUDA embedding: an id outside the vocabulary gives zeros and is reported by the next synchronize", "[gpu][embedding]") {
  Gpu gpu;
  const std::int64_t seq = 4, vocab = 10, dim = 8;
  const std::vector<std::int32_t> ids = {1, 10, 3, -1};  // 10 and -1 are outside [0, 10)
  const Host table = normal(sz(vocab * dim), 910);
  auto device_ids = Tensor<Gpu>::empty(gpu, {seq}, DType::I32);
  gpu.copy_to_device(device_ids.raw(), ids.data(), ids.size() * sizeof(std::int32_t));
  auto t = Tensor<Gpu>::from_host(gpu, {vocab * dim}, table);
  auto out = Tensor<Gpu>::from_host(gpu, {seq * dim}, Host(sz(seq * dim), kNaN));
  gpu.embedding_forward(out.data<float>(), device_ids.data<std::int32_t>(), t.data<float>(), nullptr, 1, seq, vocab, dim);
  REQUIRE_THROWS(gpu.synchronize());
  REQUIRE_NOTHROW(gpu.synchronize());  // reported once: the error raised since the last call
  const auto got = out.to_host();
  for (std::int64_t i = 0; i < seq; ++i)
    for (std::int64_t c = 0; c < dim; ++c) {
      const bool valid = ids[sz(i)] >= 0 && ids[sz(i)] < vocab;
      const float expected = valid ? table[sz(ids[sz(i)] * dim + c)] : 0.0f;
      INFO("position " << i << " (id " << ids[sz(i)] << ") element " << c << ": got " << got[sz(i * dim + c)] << ", expected " << expected);
      REQUIRE(got[sz(i * dim + c)] == expected);
    }
}

TEST_CASE("CUDA mean-squared error forward / backward equal the CPU's (dloss in device memory)", "[gpu][loss]") {
  Gpu gpu;
  for (const std::size_t n : {std::size_t(1), std::size_t(2 * 4 * 64 * 64 + 5), std::size_t(1) << 20}) {
    INFO("mse over " << n << " values");
    Case c(gpu, "mse");
    c.set("a", normal(n, 1000)).set("b", normal(n, 1001, 0.5f, 0.2f)).set("dloss", {0.37f});
    c.out("loss", 1).out("da", n).out("db", n).out("da_only", n).out("db_only", n);
    c.run([&](auto& b, auto p) {
      b.mse_forward(p("loss"), p("a"), p("b"), n);
      b.mse_backward(p("da"), p("db"), p("dloss"), p("a"), p("b"), n);
      b.mse_backward(p("da_only"), nullptr, p("dloss"), p("a"), p("b"), n);
      b.mse_backward(nullptr, p("db_only"), p("dloss"), p("a"), p("b"), n);
    });
    for (const auto* name : {"loss", "da", "db", "da_only", "db_only"}) c.check(name, kFp32);
  }
}

TEST_CASE("CUDA timestep embedding equals the CPU's (diffusers' float32 angles)", "[gpu][timestep]") {
  Gpu gpu;
  const Host timesteps = {0.0f, 1.0f, 261.5f, 500.0f, 999.0f, 37.0f};
  for (const auto& d : {nn::TimestepEmbeddingDims{6, 320, true, 0.0, 1.0, 10000.0}, nn::TimestepEmbeddingDims{6, 33, false, 1.0, 2.0, 10000.0},
                        nn::TimestepEmbeddingDims{6, 8, true, 1.0, 1.0, 1000.0}, nn::TimestepEmbeddingDims{6, 1280, false, 0.0, 1.0, 10000.0}}) {
    INFO("timestep embedding dim " << d.dim << " flip_sin_to_cos " << d.flip_sin_to_cos << " shift " << d.downscale_freq_shift << " scale " << d.scale
                                   << " max_period " << d.max_period);
    Case c(gpu, "timestep_embedding");
    c.set("t", timesteps).out("out", sz(d.batch * d.dim));
    c.run([&](auto& b, auto p) { b.timestep_embedding_forward(p("out"), p("t"), d); });
    c.check("out", kFp32);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Optimisation

TEST_CASE("CUDA AdamW steps and squared norms equal the CPU's", "[gpu][optimizer]") {
  Gpu gpu;
  const std::size_t n = 100003;
  Case c(gpu, "adamw_step");
  c.set("param", normal(n, 1100)).set("m", Host(n, 0.0f)).set("v", Host(n, 0.0f));
  const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 1e-2f;
  for (int step = 1; step <= 5; ++step) {
    INFO("step " << step);
    c.set("grad", normal(n, 1100 + sz(step), 0.1f * static_cast<float>(step)));
    const auto bc1 = static_cast<float>(1.0 - std::pow(double(beta1), step)), bc2 = static_cast<float>(1.0 - std::pow(double(beta2), step));
    c.run([&](auto& b, auto p) { b.adamw_step(p("param"), p("grad"), p("m"), p("v"), n, lr, beta1, beta2, eps, weight_decay, bc1, bc2); });
    for (const auto* name : {"param", "m", "v"}) c.check(name, kFp32);
  }

  for (const std::size_t count : {std::size_t(1), std::size_t(1000), (std::size_t(1) << 20) + 7}) {
    INFO("squared_norm over " << count << " values");
    const Host x = normal(count, 1200, 3.0f);
    auto t = Tensor<Gpu>::from_host(gpu, {i64(count)}, x);
    const double expected = CpuBackend().squared_norm(x.data(), count);
    const double got = gpu.squared_norm(t.data<float>(), count);
    INFO("got " << got << ", expected " << expected);
    CHECK(std::abs(got - expected) <= 1e-9 * expected);  // float squares are exact in double: only the summation order differs
    CHECK(std::bit_cast<std::uint64_t>(gpu.squared_norm(t.data<float>(), count)) == std::bit_cast<std::uint64_t>(got));  // deterministic
  }
  auto one = Tensor<Gpu>::from_host(gpu, {1}, Host{1.5f});
  CHECK(gpu.squared_norm(one.data<float>(), 0) == 0.0);

  // squared_norm_sum: several tensors (as the global gradient norm), one synchronisation.
  std::vector<Tensor<Gpu>> tensors;
  std::vector<const float*> pointers;
  std::vector<std::size_t> sizes;
  double expected_sum = 0;
  for (const std::size_t count : {std::size_t(320), std::size_t(1), std::size_t(3 * 3 * 320 * 320), std::size_t(0), std::size_t(77777)}) {
    const Host x = normal(count, 1300 + count, 2.0f);
    expected_sum += CpuBackend().squared_norm(x.data(), count);
    tensors.push_back(Tensor<Gpu>::from_host(gpu, {i64(std::max<std::size_t>(count, 1))}, count ? x : Host{9.0f}));
    pointers.push_back(tensors.back().data<float>());
    sizes.push_back(count);
  }
  const double got_sum = gpu.squared_norm_sum(pointers, sizes);
  INFO("squared_norm_sum got " << got_sum << ", expected " << expected_sum);
  CHECK(std::abs(got_sum - expected_sum) <= 1e-9 * expected_sum);
  CHECK(gpu.squared_norm_sum({}, {}) == 0.0);
}

// ---------------------------------------------------------------------------------------------------------------------
// Determinism: "reductions are deterministic (fixed order, no float atomics), so two runs give the same bits"

TEST_CASE("CUDA backward passes and reductions give the same bits twice", "[gpu][determinism]") {
  Gpu gpu;
  const auto cd = conv(2, 64, 32, 32, 64, 3, 2, 0, 1);
  const auto ad = attn(2, 8, 1100, 77, 40);
  const nn::GroupNormDims gd{2, 64, 32 * 32, 32, 1e-5};
  const nn::LinearDims ld{1000, 96, 130};
  const std::int64_t vocab = 50, dim = 64, seq = 77;
  std::vector<std::int32_t> ids(2 * seq, 7);  // every position the same id: the scatter-add's worst case
  ids[3] = 0;
  const auto run = [&] {
    Case c(gpu, "determinism");
    const auto nin = sz(cd.batch * cd.in_channels * cd.height * cd.width), nout = sz(cd.batch * cd.out_channels * cd.out_height() * cd.out_width());
    const auto nw = sz(cd.out_channels * cd.in_channels * 9);
    c.set("in", normal(nin, 1300)).set("w", normal(nw, 1301, 0.05f)).set("dout", normal(nout, 1302)).out("din", nin);
    c.set("dw", Host(nw, 0.0f)).set("db", Host(sz(cd.out_channels), 0.0f));
    const auto nq = sz(ad.batch * ad.q_len * ad.heads * ad.head_dim), nk = sz(ad.batch * ad.kv_len * ad.heads * ad.head_dim);
    c.set("q", normal(nq, 1303)).set("k", normal(nk, 1304)).set("v", normal(nk, 1305)).set("do", normal(nq, 1306));
    c.out("o", nq).out("lse", sz(ad.batch * ad.heads * ad.q_len)).out("dq", nq).out("dk", nk).out("dv", nk);
    const auto ng = sz(gd.batch * gd.channels * gd.spatial);
    c.set("gx", normal(ng, 1307)).set("gamma", normal(64, 1308)).set("beta", normal(64, 1309)).set("gdo", normal(ng, 1310));
    c.out("gy", ng).out("gmean", 64).out("grstd", 64).out("gdx", ng).set("dgamma", Host(64, 0.0f)).set("dbeta", Host(64, 0.0f));
    c.set("lx", normal(sz(ld.rows * ld.in_features), 1311)).set("lw", normal(sz(ld.out_features * ld.in_features), 1312));
    c.set("ldo", normal(sz(ld.rows * ld.out_features), 1313)).out("ldx", sz(ld.rows * ld.in_features));
    c.set("ldw", Host(sz(ld.out_features * ld.in_features), 0.0f)).set("ldb", Host(sz(ld.out_features), 0.0f));
    c.ids("ids", ids).set("edo", normal(sz(2 * seq * dim), 1314)).set("dtable", Host(sz(vocab * dim), 0.0f)).set("dpos", Host(sz(seq * dim), 0.0f));
    c.out("sums", sz(gd.batch * gd.channels)).out("loss", 1);
    c.run([&](auto& b, auto p) {
      b.conv2d_backward(p("din"), p("dw"), p("db"), p("dout"), p("in"), p("w"), cd);
      b.attention_forward(p("o"), p("lse"), p("q"), p("k"), p("v"), ad);
      b.attention_backward(p("dq"), p("dk"), p("dv"), p("do"), p("q"), p("k"), p("v"), p("o"), p("lse"), ad);
      b.group_norm_forward(p("gy"), p("gmean"), p("grstd"), p("gx"), p("gamma"), p("beta"), gd);
      b.group_norm_backward(p("gdx"), p("dgamma"), p("dbeta"), p("gdo"), p("gx"), p("gmean"), p("grstd"), p("gamma"), gd);
      b.linear_backward(p("ldx"), p("ldw"), p("ldb"), p("ldo"), p("lx"), p("lw"), ld);
      b.embedding_backward(p("dtable"), p("dpos"), p("edo"), p.ids("ids"), 2, seq, vocab, dim);
      b.channel_sum(p("sums"), p("gx"), gd.batch, gd.channels, gd.spatial);
      b.mse_forward(p("loss"), p("gx"), p("gdo"), ng);
    });
    std::map<std::string, Host> results;
    for (const auto* name :
         {"din", "dw", "db", "o", "lse", "dq", "dk", "dv", "gy", "gdx", "dgamma", "dbeta", "ldx", "ldw", "ldb", "dtable", "dpos", "sums", "loss"}) {
      c.check(name, kFp32);  // and equal to the CPU's
      results[name] = c.gpu(name);
    }
    return results;
  };
  const auto first = run(), second = run();
  for (const auto& [name, values] : first) {
    const auto c = compare(second.at(name), values);
    INFO(name << ": second run against the first: " << c);
    CHECK(c.bitwise_equal());
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Reduced compute precision: GEMMs, linear layers, convolutions and attention on tensor cores

TEST_CASE("CUDA GEMMs at tf32 / bf16 / fp16 stay within 1e-2 of the CPU's fp32, and fp32 is exact again after", "[gpu][precision][gemm]") {
  Gpu gpu;
  const GemmShape s{256, 200, 1024};
  for (const auto precision : {CudaPrecision::tf32, CudaPrecision::bf16, CudaPrecision::fp16}) {
    gpu.set_precision(precision);
    REQUIRE(gpu.precision() == precision);
    for (int variant = 0; variant < 4; ++variant) {
      const bool ta = variant & 1, tb = variant & 2;
      check_gemm(gpu, ta, tb, s, 0.7f, -0.3f, 5, 1, kReduced);
      check_gemm(gpu, ta, tb, {40, 77, 64}, 0.125f, 0.0f, 0, 5, kReduced);
    }
    // The precision must take effect: 16-bit (or 10-bit mantissa) inputs cannot give fp32's ~1e-7.
    const Host A = normal(sz(s.m * s.k), 1400), B = normal(sz(s.k * s.n), 1401);
    Host expected(sz(s.m * s.n));
    CpuBackend().gemm(false, false, s.m, s.n, s.k, 1.0f, A.data(), s.k, B.data(), s.n, 0.0f, expected.data(), s.n);
    auto dA = Tensor<Gpu>::from_host(gpu, {s.m * s.k}, A), dB = Tensor<Gpu>::from_host(gpu, {s.k * s.n}, B),
         dC = Tensor<Gpu>::empty(gpu, {s.m * s.n});
    gpu.gemm(false, false, s.m, s.n, s.k, 1.0f, dA.data<float>(), s.k, dB.data<float>(), s.n, 0.0f, dC.data<float>(), s.n);
    const auto c = compare(dC.to_host(), expected);
    // cuBLAS's reduced-precision compute types allow tensor cores rather than force them: a plain fp32 kernel is
    // correct too, so this is reported, not required.
    if (c.error < 1e-5) WARN("precision " << name_of(precision) << ": " << c << "; cuBLAS kept fp32 accuracy for this shape");
    INFO("precision " << name_of(precision) << ": " << c);
    CHECK(c.within(kReduced));
  }
  gpu.set_precision(CudaPrecision::fp32);
  for (int variant = 0; variant < 4; ++variant) check_gemm(gpu, variant & 1, variant & 2, s, 0.7f, -0.3f, 5, 1, kFp32);
}

TEST_CASE("CUDA linear layers at tf32 / bf16 / fp16 stay within 1e-2 of the CPU's fp32", "[gpu][precision][linear]") {
  Gpu gpu;
  for (const auto precision : {CudaPrecision::tf32, CudaPrecision::bf16, CudaPrecision::fp16}) {
    gpu.set_precision(precision);
    for (const auto& lc : kLinearCases) check_linear(gpu, lc, kReduced);
  }
}

TEST_CASE("CUDA conv2d at bf16 / fp16 stays within 1e-2 of the CPU's fp32", "[gpu][precision][conv2d]") {
  Gpu gpu;
  gpu.set_precision(CudaPrecision::bf16);
  for (const auto& cc : kConvCases) check_conv(gpu, cc, kReduced);
  gpu.set_precision(CudaPrecision::fp16);
  for (const auto& cc : {kConvCases[0], kConvCases[2], kConvCases[8]}) check_conv(gpu, cc, kReduced);
}

TEST_CASE("CUDA attention at bf16 / fp16 stays within 1e-2 of the CPU's fp32", "[gpu][precision][attention]") {
  Gpu gpu;
  gpu.set_precision(CudaPrecision::bf16);
  for (const auto& ac : kAttentionCases) check_attention(gpu, ac, kReduced, /*partial_gradients=*/false);
  gpu.set_precision(CudaPrecision::fp16);
  for (const auto& ac : {kAttentionCases[1], kAttentionCases[4], kAttentionCases[9]}) check_attention(gpu, ac, kReduced, /*partial_gradients=*/false);
}
