// The tensor_ops family on the GPU: fills, elementwise arithmetic, transpose, channel bias / sums, nearest upsampling,
// channel concat / split, token + position embeddings, mean-squared error, sinusoidal timestep embedding, clamping and
// the VAE's diagonal Gaussian sampling (the CPU's: cpu/tensor_ops.hpp); and the deterministic reductions internal.cuh
// declares.
#include "dreambooth/core/rng.hpp"
#include "dreambooth/nn/scalar_math.hpp"
#include "internal.cuh"

namespace dreambooth {

using namespace cuda_detail;

namespace {

__global__ void fill_kernel(float* x, float value, std::size_t n) { DB_GRID_STRIDE(i, n) x[i] = value; }
__global__ void fill_normal_kernel(float* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, float mean, float stddev) {
  DB_GRID_STRIDE(i, n) x[i] = mean + stddev * rng::normal(seed, offset, i);
}
__global__ void fill_uniform_kernel(float* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, float low, float high) {
  DB_GRID_STRIDE(i, n) x[i] = low + (high - low) * rng::uniform(seed, offset, i);
}
__global__ void add_kernel(float* out, const float* a, const float* b, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = a[i] + b[i]; }
__global__ void mul_kernel(float* out, const float* a, const float* b, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = a[i] * b[i]; }
__global__ void scale_kernel(float* out, const float* a, float s, std::size_t n) { DB_GRID_STRIDE(i, n) out[i] = a[i] * s; }
__global__ void accumulate_kernel(float* y, const float* x, std::size_t n) { DB_GRID_STRIDE(i, n) y[i] += x[i]; }
__global__ void mul_backward_kernel(float* da, float* db, const float* dout, const float* a, const float* b, std::size_t n) {
  DB_GRID_STRIDE(i, n) {
    if (da) da[i] = dout[i] * b[i];
    if (db) db[i] = dout[i] * a[i];
  }
}

// out[n, c, r] = in[n, r, c] through 32 x 32 shared-memory tiles (coalesced reads and writes).
__global__ void transpose_kernel(float* out, const float* in, std::int64_t rows, std::int64_t cols) {
  __shared__ float tile[32][33];
  const std::int64_t n = blockIdx.z, r0 = static_cast<std::int64_t>(blockIdx.y) * 32, c0 = static_cast<std::int64_t>(blockIdx.x) * 32;
  const float* src = in + n * rows * cols;
  float* dst = out + n * rows * cols;
  for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
    const auto r = r0 + dy, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[dy][threadIdx.x] = src[r * cols + c];
  }
  __syncthreads();
  for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
    const auto c = c0 + dy, r = r0 + threadIdx.x;
    if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][dy];
  }
}

__global__ void add_channel_bias_kernel(float* out, const float* in, const float* bias, std::size_t n, std::int64_t spatial) {
  DB_GRID_STRIDE(i, n) out[i] = in[i] + bias[i / spatial];
}
// One block per (n, c) row: sums[row] = sum of in[row, :] (double accumulation, fixed order).
__global__ void row_sum_kernel(float* sums, const float* in, std::int64_t len) {
  const float* x = in + static_cast<std::int64_t>(blockIdx.x) * len;
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < len; i += blockDim.x) sum += x[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) sums[blockIdx.x] = static_cast<float>(sum);
}

__global__ void upsample_forward_kernel(float* out, const float* in, std::size_t n, std::int64_t H, std::int64_t W) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t x = i % (2 * W), y = (i / (2 * W)) % (2 * H), p = i / (4 * H * W);
    out[i] = in[(p * H + y / 2) * W + x / 2];
  }
}
__global__ void upsample_backward_kernel(float* din, const float* dout, std::size_t n, std::int64_t H, std::int64_t W) {
  DB_GRID_STRIDE(i, n) {
    const std::int64_t x = i % W, y = (i / W) % H, p = i / (H * W);
    const float* g = dout + (p * 2 * H + 2 * y) * 2 * W + 2 * x;
    din[i] = g[0] + g[1] + g[2 * W] + g[2 * W + 1];
  }
}

__global__ void embedding_forward_kernel(float* out, const std::int32_t* ids, const float* token_table, const float* position_table, std::size_t n,
                                         std::int64_t seq, std::int64_t vocab, std::int64_t dim, int* error_flag) {
  DB_GRID_STRIDE(idx, n) {
    const std::int64_t i = idx / dim, c = idx % dim;
    const std::int32_t id = ids[i];
    if (id < 0 || id >= vocab) {
      out[idx] = 0.0f;
      if (c == 0) atomicExch(error_flag, 1);
      continue;
    }
    out[idx] = token_table[static_cast<std::int64_t>(id) * dim + c] + (position_table ? position_table[(i % seq) * dim + c] : 0.0f);
  }
}
// One thread per column: scatter-adds every position in order (deterministic where ids repeat).
__global__ void embedding_backward_kernel(float* dtoken_table, float* dposition_table, const float* dout, const std::int32_t* ids,
                                          std::int64_t positions, std::int64_t seq, std::int64_t vocab, std::int64_t dim) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= dim) return;
  for (std::int64_t i = 0; i < positions; ++i) {
    const float g = dout[i * dim + c];
    const std::int32_t id = ids[i];
    if (dtoken_table && id >= 0 && id < vocab) dtoken_table[static_cast<std::int64_t>(id) * dim + c] += g;
    if (dposition_table) dposition_table[(i % seq) * dim + c] += g;
  }
}

// Two-stage deterministic reductions: kReduceBlocks partial sums, then one block adds them in order.
__global__ void squared_difference_partials_kernel(double* partials, const float* a, const float* b, std::size_t n) {
  double sum = 0;
  DB_GRID_STRIDE(i, n) {
    const double d = b ? static_cast<double>(a[i]) - b[i] : static_cast<double>(a[i]);
    sum += d * d;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}
__global__ void finish_sum_kernel(double* total, float* mean_out, const double* partials, int count, std::size_t n) {
  double sum = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    if (total) *total = sum;
    if (mean_out) *mean_out = static_cast<float>(n ? sum / static_cast<double>(n) : 0.0);
  }
}
__global__ void mse_backward_kernel(float* da, float* db, const float* dloss, const float* a, const float* b, std::size_t n) {
  const float factor = dloss[0] * 2.0f / static_cast<float>(n);
  DB_GRID_STRIDE(i, n) {
    const float g = factor * (a[i] - b[i]);
    if (da) da[i] = g;
    if (db) db[i] = -g;
  }
}

// Frequencies come from the host, math::timestep_frequency as the CPU backend computes it (CUDA's expf may differ
// by an ulp, and t up to 1000 magnifies that past 1e-5); sin / cos are evaluated in double and rounded, as glibc's
// correctly rounded sinf / cosf give.
constexpr int kMaxFrequencies = 512;
struct Frequencies {
  float value[kMaxFrequencies];
};
__global__ void timestep_embedding_kernel(float* out, const float* timesteps, std::int64_t batch, std::int64_t dim, bool flip_sin_to_cos,
                                          Frequencies frequencies, float scale) {
  const std::int64_t half = dim / 2;
  DB_GRID_STRIDE(idx, static_cast<std::size_t>(batch * half)) {
    const std::int64_t n = idx / half, i = idx % half;
    const float angle = math::timestep_angle(timesteps[n], frequencies.value[i], scale);
    const float s = static_cast<float>(sin(static_cast<double>(angle))), c = static_cast<float>(cos(static_cast<double>(angle)));
    out[n * dim + i] = flip_sin_to_cos ? c : s;
    out[n * dim + half + i] = flip_sin_to_cos ? s : c;
    if (i == 0 && dim % 2) out[n * dim + dim - 1] = 0.0f;
  }
}

__global__ void dropout_kernel(float* out, const float* in, std::size_t n, std::uint64_t seed, std::uint64_t offset, float p, float keep_scale) {
  DB_GRID_STRIDE(i, n) out[i] = math::dropout(in[i], rng::uniform(seed, offset, i), p, keep_scale);
}
__global__ void clamp_kernel(float* out, const float* in, float low, float high, std::size_t n) {
  DB_GRID_STRIDE(i, n) out[i] = math::clamp(in[i], low, high);
}
// latents[n, c, s] from moments[n, c, s] (mean) and moments[n, C + c, s] (logvar); latents may be eps.
__global__ void diagonal_gaussian_sample_kernel(float* latents, const float* moments, const float* eps, std::size_t total, std::int64_t channels,
                                                std::int64_t spatial) {
  DB_GRID_STRIDE(i, total) {
    const std::int64_t n = i / (channels * spatial), rest = i % (channels * spatial);
    const float* mean = moments + n * 2 * channels * spatial;
    latents[i] = math::diagonal_gaussian_sample(mean[rest], mean[channels * spatial + rest], eps[i]);
  }
}

__global__ void column_finish_kernel(float* out, const double* partials, std::int64_t chunks, std::int64_t cols, bool accumulate) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  double total = accumulate ? static_cast<double>(out[c]) : 0.0;
  for (std::int64_t k = 0; k < chunks; ++k) total += partials[k * cols + c];
  out[c] = static_cast<float>(total);
}

}  // namespace

namespace cuda_detail {
void column_finish(cudaStream_t stream, float* out, const double* partials, std::int64_t chunks, std::int64_t cols, bool accumulate) {
  column_finish_kernel<<<as_blocks((cols + 255) / 256), 256, 0, stream>>>(out, partials, chunks, cols, accumulate);
  check_launch("column reduction");
}
void column_sums(CudaBackend& backend, cudaStream_t stream, float* out, const float* in, std::int64_t rows, std::int64_t cols, bool accumulate) {
  column_reduce(backend, stream, out, MatrixEntry{in, cols}, rows, cols, accumulate);
}
void channel_sums_accumulate(cudaStream_t stream, float* out, const float* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  if (channels == 0) return;
  channel_reduce_kernel<<<as_blocks(channels), kThreads, 0, stream>>>(out, Plain{in}, batch, channels, spatial, true);
  check_launch("channel sums");
}
void squared_difference_partials(cudaStream_t stream, double* partials, const float* a, const float* b, std::size_t n) {
  squared_difference_partials_kernel<<<kReduceBlocks, kThreads, 0, stream>>>(partials, a, b, n);
  check_launch("sum of squares");
}
void finish_sum(cudaStream_t stream, double* total, float* mean_out, const double* partials, int count, std::size_t n, int threads) {
  finish_sum_kernel<<<1, threads, 0, stream>>>(total, mean_out, partials, count, n);
  check_launch("sum of squares");
}
}  // namespace cuda_detail

// --- fills and elementwise ---
void CudaBackend::fill(T* x, T value, std::size_t n) {
  if (n) fill_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, value, n);
  check_launch("fill");
}
void CudaBackend::fill_normal(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T mean, T stddev) {
  if (n) fill_normal_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, n, seed, offset, mean, stddev);
  check_launch("fill_normal");
}
void CudaBackend::fill_uniform(T* x, std::size_t n, std::uint64_t seed, std::uint64_t offset, T low, T high) {
  if (n) fill_uniform_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(x, n, seed, offset, low, high);
  check_launch("fill_uniform");
}
void CudaBackend::add(T* out, const T* a, const T* b, std::size_t n) {
  if (n) add_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, b, n);
  check_launch("add");
}
void CudaBackend::mul(T* out, const T* a, const T* b, std::size_t n) {
  if (n) mul_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, b, n);
  check_launch("mul");
}
void CudaBackend::scale(T* out, const T* a, T s, std::size_t n) {
  if (n) scale_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, a, s, n);
  check_launch("scale");
}
void CudaBackend::accumulate(T* y, const T* x, std::size_t n) {
  if (n) accumulate_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(y, x, n);
  check_launch("accumulate");
}
void CudaBackend::mul_backward(T* da, T* db, const T* dout, const T* a, const T* b, std::size_t n) {
  if (n && (da || db)) mul_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(da, db, dout, a, b, n);
  check_launch("mul_backward");
}

// --- data movement ---
void CudaBackend::transpose(T* out, const T* in, std::int64_t batch, std::int64_t rows, std::int64_t cols) {
  if (batch == 0 || rows == 0 || cols == 0) return;
  DB_CHECK(batch <= 65535 && (rows + 31) / 32 <= 65535, "CUDA transpose: ", batch, " x ", rows, " rows exceed the grid limit");
  const dim3 grid(as_blocks((cols + 31) / 32), as_blocks((rows + 31) / 32), as_blocks(batch)), block(32, 8);
  transpose_kernel<<<grid, block, 0, impl_->stream>>>(out, in, rows, cols);
  check_launch("transpose");
}
void CudaBackend::add_channel_bias(T* out, const T* in, const T* bias, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  const auto n = static_cast<std::size_t>(batch * channels * spatial);
  if (n) add_channel_bias_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, bias, n, spatial);
  check_launch("add_channel_bias");
}
void CudaBackend::channel_sum(T* sums, const T* in, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  if (batch * channels == 0) return;
  row_sum_kernel<<<as_blocks(batch * channels), kThreads, 0, impl_->stream>>>(sums, in, spatial);
  check_launch("channel_sum");
}
void CudaBackend::upsample_nearest2x_forward(T* out, const T* in, std::int64_t planes, std::int64_t H, std::int64_t W) {
  const auto n = static_cast<std::size_t>(planes * 4 * H * W);
  if (n) upsample_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, n, H, W);
  check_launch("upsample_nearest2x_forward");
}
void CudaBackend::upsample_nearest2x_backward(T* din, const T* dout, std::int64_t planes, std::int64_t H, std::int64_t W) {
  const auto n = static_cast<std::size_t>(planes * H * W);
  if (n) upsample_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(din, dout, n, H, W);
  check_launch("upsample_nearest2x_backward");
}
// Both are strided 2-D copies: `outer` rows of (channels * inner) floats with different pitches.
void CudaBackend::concat_channels(T* out, const T* a, const T* b, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
  if (outer == 0) return;
  const std::size_t row_out = static_cast<std::size_t>((ca + cb) * inner) * sizeof(T);
  const std::size_t row_a = static_cast<std::size_t>(ca * inner) * sizeof(T), row_b = static_cast<std::size_t>(cb * inner) * sizeof(T);
  if (row_a)
    check_cuda(cudaMemcpy2DAsync(out, row_out, a, row_a, row_a, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
               "concat_channels");
  if (row_b)
    check_cuda(
        cudaMemcpy2DAsync(out + ca * inner, row_out, b, row_b, row_b, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
        "concat_channels");
}
void CudaBackend::split_channels(T* a, T* b, const T* in, std::int64_t outer, std::int64_t ca, std::int64_t cb, std::int64_t inner) {
  if (outer == 0) return;
  const std::size_t row_in = static_cast<std::size_t>((ca + cb) * inner) * sizeof(T);
  const std::size_t row_a = static_cast<std::size_t>(ca * inner) * sizeof(T), row_b = static_cast<std::size_t>(cb * inner) * sizeof(T);
  if (a && row_a)
    check_cuda(cudaMemcpy2DAsync(a, row_a, in, row_in, row_a, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
               "split_channels");
  if (b && row_b)
    check_cuda(cudaMemcpy2DAsync(b, row_b, in + ca * inner, row_in, row_b, static_cast<std::size_t>(outer), cudaMemcpyDeviceToDevice, impl_->stream),
               "split_channels");
}

// --- embeddings, loss, timesteps ---
void CudaBackend::embedding_forward(T* out, const std::int32_t* ids, const T* token_table, const T* position_table, std::int64_t batch,
                                    std::int64_t seq, std::int64_t vocab, std::int64_t dim) {
  const auto n = static_cast<std::size_t>(batch * seq * dim);
  if (n)
    embedding_forward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, ids, token_table, position_table, n, seq, vocab, dim,
                                                                            impl_->error_flag);
  check_launch("embedding_forward");
}
void CudaBackend::embedding_backward(T* dtoken_table, T* dposition_table, const T* dout, const std::int32_t* ids, std::int64_t batch,
                                     std::int64_t seq, std::int64_t vocab, std::int64_t dim) {
  if (dim == 0 || batch * seq == 0 || (!dtoken_table && !dposition_table)) return;
  embedding_backward_kernel<<<as_blocks((dim + 127) / 128), 128, 0, impl_->stream>>>(dtoken_table, dposition_table, dout, ids, batch * seq, seq,
                                                                                     vocab, dim);
  check_launch("embedding_backward");
}
void CudaBackend::mse_forward(T* loss, const T* a, const T* b, std::size_t n) {
  Scratch partials(*this, kReduceBlocks * sizeof(double));
  squared_difference_partials(impl_->stream, partials.get<double>(), a, b, n);
  finish_sum(impl_->stream, nullptr, loss, partials.get<double>(), kReduceBlocks, n);
  check_launch("mse_forward");
}
void CudaBackend::mse_backward(T* da, T* db, const T* dloss, const T* a, const T* b, std::size_t n) {
  if (n && (da || db)) mse_backward_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(da, db, dloss, a, b, n);
  check_launch("mse_backward");
}
void CudaBackend::clamp(T* out, const T* in, T low, T high, std::size_t n) {
  if (n) clamp_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, low, high, n);
  check_launch("clamp");
}
void CudaBackend::dropout(T* out, const T* in, std::size_t n, std::uint64_t seed, std::uint64_t offset, T p) {
  if (n) dropout_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(out, in, n, seed, offset, p, 1.0f / (1.0f - p));
  check_launch("dropout");
}
void CudaBackend::diagonal_gaussian_sample(T* latents, const T* moments, const T* eps, std::int64_t batch, std::int64_t channels,
                                           std::int64_t spatial) {
  const auto n = static_cast<std::size_t>(batch * channels * spatial);
  if (n) diagonal_gaussian_sample_kernel<<<blocks_for(n), kThreads, 0, impl_->stream>>>(latents, moments, eps, n, channels, spatial);
  check_launch("diagonal_gaussian_sample");
}
void CudaBackend::timestep_embedding_forward(T* out, const T* timesteps, const nn::TimestepEmbeddingDims& d) {
  const std::int64_t half = d.dim / 2;
  if (d.batch == 0) return;
  if (half == 0) {
    fill(out, 0.0f, static_cast<std::size_t>(d.batch * d.dim));
    return;
  }
  DB_CHECK(half <= kMaxFrequencies, "CUDA timestep embedding: dim ", d.dim, " exceeds ", 2 * kMaxFrequencies);
  // The same float32 arithmetic as diffusers (and the CPU backend).
  Frequencies frequencies{};
  for (std::int64_t i = 0; i < half; ++i) frequencies.value[i] = math::timestep_frequency(i, half, d.max_period, d.downscale_freq_shift);
  timestep_embedding_kernel<<<blocks_for(static_cast<std::size_t>(d.batch * half)), kThreads, 0, impl_->stream>>>(
      out, timesteps, d.batch, d.dim, d.flip_sin_to_cos, frequencies, static_cast<float>(d.scale));
  check_launch("timestep_embedding_forward");
}

}  // namespace dreambooth
