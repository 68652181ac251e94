// Op benchmark: every op of include/dreambooth/backend_ops.hpp at Stable Diffusion 1.5 shapes (batch 2, 64x64 latents,
// 77 text tokens), on the CPU backend or, when built with it, the CUDA backend. Prints one JSON object: GFLOP/s for
// the ops a FLOP count describes (GEMM, linear, convolution, attention; also as a fraction of this machine's fp32 GEMM
// rate measured in the same run), GB/s of compulsory traffic (each tensor read or written once) for the memory-bound
// rest. Ops the list declares without an entry here are named in "not_benchmarked".
//   op_bench [--quick | --full] [--device cpu|cuda] [--ops name,name,...]
//   --quick: fewer repetitions and shapes; --full (default): every shape, best of 5 (attention: of 3).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/backend_ops.hpp"
#include "dreambooth/backends/cpu.hpp"
#ifdef DREAMBOOTH_WITH_CUDA
#include "dreambooth/backends/cuda.hpp"
#endif

using namespace dreambooth;
using Clock = std::chrono::steady_clock;

namespace {

struct Result {
  std::string op, shape;
  double flops = 0, bytes = 0, seconds = 0;
};

std::string dims(std::initializer_list<std::int64_t> d) {
  std::ostringstream s;
  s << '[';
  for (auto it = d.begin(); it != d.end(); ++it) s << (it == d.begin() ? "" : ",") << *it;
  s << ']';
  return s.str();
}

template <class B>
class Bench {
 public:
  using T = typename B::value_type;
  Bench(B& b, bool quick, std::set<std::string> only) : b_(b), quick_(quick), only_(std::move(only)) {}
  ~Bench() {
    for (auto& [p, n] : buffers_) b_.deallocate(p, n);
  }

  // n values of N(0, scale) in device memory.
  T* buffer(std::size_t n, double scale = 1.0, double mean = 0.0) {
    auto* p = static_cast<T*>(b_.allocate(n * sizeof(T)));
    buffers_.emplace_back(p, n * sizeof(T));
    b_.fill_normal(p, n, seed_++, 0, T(mean), T(scale));
    return p;
  }
  std::int32_t* ids(const std::vector<std::int32_t>& values) {
    auto* p = static_cast<std::int32_t*>(b_.allocate(values.size() * sizeof(std::int32_t)));
    buffers_.emplace_back(p, values.size() * sizeof(std::int32_t));
    b_.copy_to_device(p, values.data(), values.size() * sizeof(std::int32_t));
    return p;
  }

  bool wanted(const std::string& op) const { return only_.empty() || only_.count(op); }
  // Best wall time of `reps` runs after one warm-up run (synchronised: device time for CUDA).
  void time(const std::string& op, const std::string& shape, double flops, double bytes, const std::function<void()>& run, int reps = 0) {
    covered_.insert(op);
    if (!wanted(op)) return;
    if (reps == 0) reps = quick_ ? 2 : 5;
    run();
    b_.synchronize();
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
      const auto start = Clock::now();
      run();
      b_.synchronize();
      best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
    }
    results_.push_back({op, shape, flops, bytes, best});
  }

  void run_all();
  const std::vector<Result>& results() const { return results_; }
  const std::set<std::string>& covered() const { return covered_; }

 private:
  B& b_;
  bool quick_;
  std::set<std::string> only_, covered_;
  std::vector<Result> results_;
  std::vector<std::pair<void*, std::size_t>> buffers_;
  std::uint64_t seed_ = 1;
};

template <class B>
void Bench<B>::run_all() {
  constexpr double f = sizeof(T);
  const std::int64_t N = 2;
  // fp32 GEMM first: the machine's reference rate.
  {
    const std::int64_t g = quick_ ? 1024 : 2048;
    T *A = buffer(static_cast<std::size_t>(g * g)), *Bm = buffer(static_cast<std::size_t>(g * g)), *C = buffer(static_cast<std::size_t>(g * g));
    time("gemm", dims({g, g}) + " x " + dims({g, g}), 2.0 * g * g * g, 3 * f * g * g,
         [&] { b_.gemm(false, false, g, g, g, T(1), A, g, Bm, g, T(0), C, g); });
  }

  // Elementwise and fills over the UNet's first-level activation [2, 320, 64, 64].
  {
    const std::size_t n = std::size_t(N) * 320 * 64 * 64;
    const std::string shape = dims({N, 320, 64, 64});
    T *a = buffer(n), *x = buffer(n), *y = buffer(n), *out = buffer(n), *da = buffer(n), *db = buffer(n);
    time("fill", shape, 0, f * n, [&] { b_.fill(out, T(0.5), n); });
    time("fill_normal", shape, 0, f * n, [&] { b_.fill_normal(out, n, 7, 0, T(0), T(1)); });
    time("fill_uniform", shape, 0, f * n, [&] { b_.fill_uniform(out, n, 7, 0, T(0), T(1)); });
    time("add", shape, 0, 3 * f * n, [&] { b_.add(out, a, x, n); });
    time("mul", shape, 0, 3 * f * n, [&] { b_.mul(out, a, x, n); });
    time("scale", shape, 0, 2 * f * n, [&] { b_.scale(out, a, T(0.5), n); });
    time("accumulate", shape, 0, 3 * f * n, [&] { b_.accumulate(y, x, n); });
    time("mul_backward", shape, 0, 5 * f * n, [&] { b_.mul_backward(da, db, y, a, x, n); });
    time("silu_forward", shape, 0, 2 * f * n, [&] { b_.silu_forward(out, a, n); });
    time("silu_backward", shape, 0, 3 * f * n, [&] { b_.silu_backward(da, y, a, n); });
    time("gelu_forward", shape, 0, 2 * f * n, [&] { b_.gelu_forward(out, a, n); });
    time("gelu_backward", shape, 0, 3 * f * n, [&] { b_.gelu_backward(da, y, a, n); });
    time("quick_gelu_forward", shape, 0, 2 * f * n, [&] { b_.quick_gelu_forward(out, a, n); });
    time("quick_gelu_backward", shape, 0, 3 * f * n, [&] { b_.quick_gelu_backward(da, y, a, n); });

    // Norms over the same activation: group norm, 32 groups; the statistics [2, 32].
    const nn::GroupNormDims gd{N, 320, 64 * 64, 32, 1e-5};
    T *gamma = buffer(320, 0.1, 1.0), *beta = buffer(320), *mean = buffer(64), *rstd = buffer(64), *dgamma = buffer(320), *dbeta = buffer(320);
    time("group_norm_forward", shape, 0, 2 * f * n, [&] { b_.group_norm_forward(out, mean, rstd, a, gamma, beta, gd); });
    time("group_norm_backward", shape, 0, 3 * f * n, [&] { b_.group_norm_backward(da, dgamma, dbeta, y, a, mean, rstd, gamma, gd); });
    time("group_norm_silu_forward", shape, 0, 2 * f * n, [&] { b_.group_norm_silu_forward(out, mean, rstd, a, gamma, beta, gd); });
    time("group_norm_silu_backward", shape, 0, 3 * f * n, [&] { b_.group_norm_silu_backward(da, dgamma, dbeta, y, a, mean, rstd, gamma, beta, gd); });

    // Data movement: [2, 320, 4096] <-> [2, 4096, 320] (into and out of the transformer), the time-embedding bias, its sum.
    time("transpose", dims({N, 320, 4096}), 0, 2 * f * n, [&] { b_.transpose(out, a, N, 320, 64 * 64); });
    T* bias = buffer(std::size_t(N) * 320);
    time("add_channel_bias", shape, 0, 2 * f * n, [&] { b_.add_channel_bias(out, a, bias, N, 320, 64 * 64); });
    time("channel_sum", shape, 0, f * n, [&] { b_.channel_sum(bias, a, N, 320, 64 * 64); });
  }

  // Transformer blocks at the first level: 8192 tokens of width 320; layer norm, projections, GEGLU feed-forward.
  {
    const std::int64_t rows = N * 4096, width = 320, ff = 1280;
    const auto n = static_cast<std::size_t>(rows * width);
    T *x = buffer(n), *y = buffer(n), *out = buffer(n), *dx = buffer(n);
    T *gamma = buffer(320, 0.1, 1.0), *beta = buffer(320), *mean = buffer(std::size_t(rows)), *rstd = buffer(std::size_t(rows));
    T *dgamma = buffer(320), *dbeta = buffer(320);
    const nn::LayerNormDims nd{rows, width, 1e-5};
    time("layer_norm_forward", dims({rows, width}), 0, 2 * f * n, [&] { b_.layer_norm_forward(out, mean, rstd, x, gamma, beta, nd); });
    time("layer_norm_backward", dims({rows, width}), 0, 3 * f * n, [&] { b_.layer_norm_backward(dx, dgamma, dbeta, y, x, mean, rstd, gamma, nd); });

    const nn::LinearDims ld{rows, width, 2 * ff};  // the GEGLU projection 320 -> 2560
    T *w = buffer(static_cast<std::size_t>(2 * ff * width), 0.05), *wb = buffer(static_cast<std::size_t>(2 * ff));
    T *hidden = buffer(static_cast<std::size_t>(rows * 2 * ff)), *dhidden = buffer(static_cast<std::size_t>(rows * 2 * ff));
    T *dw = buffer(static_cast<std::size_t>(2 * ff * width)), *dwb = buffer(static_cast<std::size_t>(2 * ff));
    const std::string lshape = dims({rows, width}) + " -> " + std::to_string(2 * ff);
    const double lflops = 2.0 * rows * width * 2 * ff;
    time("linear_forward", lshape, lflops, 0, [&] { b_.linear_forward(hidden, x, w, wb, ld); });
    time("linear_backward", lshape, 2 * lflops, 0, [&] { b_.linear_backward(dx, dw, dwb, dhidden, x, w, ld); });
    T *gated = buffer(static_cast<std::size_t>(rows * ff)), *dgated = buffer(static_cast<std::size_t>(rows * ff));
    const double gn = static_cast<double>(rows * ff);
    time("geglu_forward", dims({rows, 2 * ff}), 0, 3 * f * gn, [&] { b_.geglu_forward(gated, hidden, rows, ff); });
    time("geglu_backward", dims({rows, 2 * ff}), 0, 5 * f * gn, [&] { b_.geglu_backward(dhidden, dgated, hidden, rows, ff); });

    // Softmax over cross-attention scores: [2 * 8 * 4096, 77].
    const std::int64_t srows = N * 8 * 4096, sdim = 77;
    const auto sn = static_cast<std::size_t>(srows * sdim);
    T *s = buffer(sn), *p = buffer(sn), *dp = buffer(sn), *ds = buffer(sn);
    time("softmax_forward", dims({srows, sdim}), 0, 2 * f * sn, [&] { b_.softmax_forward(p, s, srows, sdim); });
    time("softmax_backward", dims({srows, sdim}), 0, 3 * f * sn, [&] { b_.softmax_backward(ds, dp, p, srows, sdim); });
  }

  // 3x3 convolutions at the UNet's levels.
  {
    struct Level {
      std::int64_t c, hw;
    };
    std::vector<Level> levels = {{320, 64}, {640, 32}, {1280, 16}, {1280, 8}};
    if (quick_) levels.resize(1);
    for (const auto& [c, hw] : levels) {
      const nn::Conv2dDims d{N, c, hw, hw, c, 3, 3, 1, 1, 1, 1};
      const auto n = static_cast<std::size_t>(N * c * hw * hw), nw = static_cast<std::size_t>(c * c * 9);
      T *in = buffer(n), *w = buffer(nw, 0.02), *bias = buffer(std::size_t(c)), *out = buffer(n), *din = buffer(n), *dw = buffer(nw);
      T* dbias = buffer(std::size_t(c));
      const std::string shape = dims({N, c, hw, hw}) + " -> " + std::to_string(c);
      time("conv2d_forward", shape, d.flops(), 0, [&] { b_.conv2d_forward(out, in, w, bias, d); });
      time("conv2d_backward", shape, 2 * d.flops(), 0, [&] { b_.conv2d_backward(din, dw, dbias, out, in, w, d); });
    }
  }

  // Attention at the first level: 4096 tokens, 8 heads of 40; self and cross (77 text tokens).
  for (const std::int64_t kv : {std::int64_t{4096}, std::int64_t{77}}) {
    const nn::AttentionDims d{N, 8, 4096, kv, 40, false, 0.0};
    const auto nq = static_cast<std::size_t>(N * 4096 * 320), nk = static_cast<std::size_t>(N * kv * 320);
    T *q = buffer(nq), *k = buffer(nk), *v = buffer(nk), *out = buffer(nq), *lse = buffer(static_cast<std::size_t>(N * 8 * 4096));
    T *dq = buffer(nq), *dk = buffer(nk), *dv = buffer(nk);
    const std::string shape = "N=2 heads=8 Tq=4096 Tk=" + std::to_string(kv) + " head_dim=40";
    const int reps = quick_ ? 1 : 3;
    time(
        "attention_forward", shape, d.flops(), 0, [&] { b_.attention_forward(out, lse, q, k, v, d); }, reps);
    if (!quick_ || kv == 77)
      time(
          "attention_backward", shape, 2.5 * d.flops(), 0, [&] { b_.attention_backward(dq, dk, dv, out, q, k, v, out, lse, d); }, reps);
  }

  // The up-sampler ([2, 1280, 16, 16] -> 32x32) and the skip connection concat at the second level.
  {
    const std::int64_t planes = N * 1280, H = 16;
    const auto n = static_cast<std::size_t>(planes * H * H);
    T *in = buffer(n), *out = buffer(4 * n), *din = buffer(n);
    time("upsample_nearest2x_forward", dims({N, 1280, H, H}), 0, 5 * f * n, [&] { b_.upsample_nearest2x_forward(out, in, planes, H, H); });
    time("upsample_nearest2x_backward", dims({N, 1280, H, H}), 0, 5 * f * n, [&] { b_.upsample_nearest2x_backward(din, out, planes, H, H); });
    const std::int64_t ca = 640, cb = 640, inner = 32 * 32;
    const auto na = static_cast<std::size_t>(N * ca * inner), nb = static_cast<std::size_t>(N * cb * inner);
    T *a = buffer(na), *bb = buffer(nb), *joined = buffer(na + nb);
    const std::string shape = dims({N, ca, 32, 32}) + " + " + dims({N, cb, 32, 32});
    time("concat_channels", shape, 0, 2 * f * double(na + nb), [&] { b_.concat_channels(joined, a, bb, N, ca, cb, inner); });
    time("split_channels", shape, 0, 2 * f * double(na + nb), [&] { b_.split_channels(a, bb, joined, N, ca, cb, inner); });
  }

  // CLIP's embeddings (vocab 49408, 77 positions of 768), the loss over the latents, the timestep embedding.
  {
    const std::int64_t seq = 77, vocab = 49408, dim = 768;
    std::vector<std::int32_t> id_values(static_cast<std::size_t>(N * seq));
    for (std::size_t i = 0; i < id_values.size(); ++i) id_values[i] = static_cast<std::int32_t>((i * 7919) % vocab);
    std::int32_t* ids_device = ids(id_values);
    const auto no = static_cast<std::size_t>(N * seq * dim);
    T *table = buffer(static_cast<std::size_t>(vocab * dim)), *positions = buffer(static_cast<std::size_t>(seq * dim)), *out = buffer(no);
    T *dtable = buffer(static_cast<std::size_t>(vocab * dim)), *dpositions = buffer(static_cast<std::size_t>(seq * dim));
    const std::string eshape = dims({N, seq}) + " of " + dims({vocab, dim});
    time("embedding_forward", eshape, 0, 3 * f * no, [&] { b_.embedding_forward(out, ids_device, table, positions, N, seq, vocab, dim); });
    time("embedding_backward", eshape, 0, 3 * f * no, [&] { b_.embedding_backward(dtable, dpositions, out, ids_device, N, seq, vocab, dim); });

    const auto n = std::size_t(N) * 4 * 64 * 64;
    T *pred = buffer(n), *target = buffer(n), *loss = buffer(1), *dloss = buffer(1), *dpred = buffer(n), *dtarget = buffer(n);
    time("mse_forward", dims({N, 4, 64, 64}), 0, 2 * f * n, [&] { b_.mse_forward(loss, pred, target, n); });
    time("mse_backward", dims({N, 4, 64, 64}), 0, 4 * f * n, [&] { b_.mse_backward(dpred, dtarget, dloss, pred, target, n); });

    const nn::TimestepEmbeddingDims td{N, 320, true, 0.0, 1.0, 10000.0};
    T *t = buffer(std::size_t(N), 100.0, 500.0), *emb = buffer(std::size_t(N) * 320);
    time("timestep_embedding_forward", dims({N}) + " -> 320", 0, f * (N + N * 320), [&] { b_.timestep_embedding_forward(emb, t, td); });

    // The VAE encoder's last steps: logvar clamped in place (half of moments[N, 8, 64, 64]), then a latent sampled.
    const auto nl = std::size_t(N) * 4 * 64 * 64;
    T *moments = buffer(2 * nl), *noise = buffer(nl), *latents = buffer(nl);
    time("clamp", dims({N, 4, 64, 64}), 0, 2 * f * nl, [&] { b_.clamp(moments + nl, moments + nl, T(-30), T(20), nl); });
    // LoRA dropout on an attention projection's input (64x64 latents: [N, 4096, 320]).
    const auto nd = std::size_t(N) * 4096 * 320;
    T *dropout_in = buffer(nd), *dropout_out = buffer(nd);
    time("dropout", dims({N, 4096, 320}), 0, 2 * f * nd, [&] { b_.dropout(dropout_out, dropout_in, nd, 7, 0, T(0.1)); });
    time("diagonal_gaussian_sample", dims({N, 8, 64, 64}) + " -> " + dims({N, 4, 64, 64}), 0, 4 * f * nl,
         [&] { b_.diagonal_gaussian_sample(latents, moments, noise, N, 4, 64 * 64); });
  }

  // The optimizer over 16M parameters (a LoRA-sized or text-encoder-sized update) and its gradient norm.
  {
    const std::size_t n = quick_ ? (std::size_t(1) << 22) : (std::size_t(1) << 24);
    T *param = buffer(n), *grad = buffer(n, 1e-3), *m = buffer(n, 0.0), *v = buffer(n, 0.0);
    b_.fill(m, T(0), n);
    b_.fill(v, T(0), n);
    const std::string shape = dims({static_cast<std::int64_t>(n)});
    time("adamw_step", shape, 0, 7 * f * n,
         [&] { b_.adamw_step(param, grad, m, v, n, T(1e-4), T(0.9), T(0.999), T(1e-8), T(1e-2), T(0.1), T(0.001)); });
    T* shadow = buffer(n);
    time("ema_update", shape, 0, 3 * f * n, [&] { b_.ema_update(shadow, param, n, T(1e-4)); });
    double sink = 0;
    time("squared_norm", shape, 0, f * n, [&] { sink += b_.squared_norm(grad, n); });
    if (sink < 0) std::printf("impossible\n");
  }
}

template <class B>
int run(B& backend, bool quick, const std::set<std::string>& only, const std::string& description) {
  Bench<B> bench(backend, quick, only);
  bench.run_all();
  double gemm_rate = 0;
  for (const auto& r : bench.results())
    if (r.op == "gemm") gemm_rate = r.flops / r.seconds;
  std::vector<std::string> missing;
  for (const auto& op : kBackendOps)
    if (!bench.covered().count(std::string(op.name))) missing.emplace_back(op.name);

  std::printf("{\n  \"backend\": \"%s\",\n  \"device\": \"%s\",\n  \"threads\": %d,\n  \"mode\": \"%s\",\n", backend.name(), description.c_str(),
              omp_get_max_threads(), quick ? "quick" : "full");
  if (gemm_rate > 0) std::printf("  \"gemm_f32_gflops\": %.1f,\n", gemm_rate / 1e9);
  std::printf("  \"not_benchmarked\": [");
  for (std::size_t i = 0; i < missing.size(); ++i) std::printf("%s\"%s\"", i ? ", " : "", missing[i].c_str());
  std::printf("],\n  \"ops\": [\n");
  const auto& results = bench.results();
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::printf("    {\"op\": \"%s\", \"shape\": \"%s\", \"seconds\": %.6f", r.op.c_str(), r.shape.c_str(), r.seconds);
    if (r.flops > 0) {
      std::printf(", \"gflop\": %.3f, \"gflops\": %.1f", r.flops / 1e9, r.flops / r.seconds / 1e9);
      if (gemm_rate > 0) std::printf(", \"fraction_of_gemm\": %.3f", r.flops / r.seconds / gemm_rate);
    } else {
      std::printf(", \"gbytes\": %.4f, \"gbps\": %.1f", r.bytes / 1e9, r.bytes / r.seconds / 1e9);
    }
    std::printf("}%s\n", i + 1 < results.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
  return missing.empty() ? 0 : 1;
}

int usage() {
  std::fprintf(stderr, "usage: op_bench [--quick | --full] [--device cpu|cuda] [--ops name,name,...]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string device = "cpu";
  std::set<std::string> only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--full") {
      quick = false;
    } else if (arg == "--device" && i + 1 < argc) {
      device = argv[++i];
    } else if (arg == "--ops" && i + 1 < argc) {
      std::stringstream list(argv[++i]);
      for (std::string name; std::getline(list, name, ',');) {
        if (!find_backend_op(name)) {
          std::fprintf(stderr, "op_bench: no op named '%s' in backend_ops.hpp\n", name.c_str());
          return 2;
        }
        only.insert(name);
      }
    } else {
      return usage();
    }
  }
  if (device == "cpu") {
    CpuBackend backend;
    return run(backend, quick, only, "host");
  }
  if (device == "cuda") {
#ifdef DREAMBOOTH_WITH_CUDA
    CudaBackend backend;
    return run(backend, quick, only, std::string(backend.device_description()));
#else
    std::fprintf(stderr, "op_bench: built without the CUDA backend (configure with -DDREAMBOOTH_CUDA=ON)\n");
    return 1;
#endif
  }
  return usage();
}
